"""prism_feature_transform: center / whiten the item vector tables before PRISM reads them."""
import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_config, write_dataset

from prism_recbole.config import Config
from prism_recbole.feature_stats import mean_pairwise_cosine
from prism_recbole.model.prism_layer import transform_table
from prism_recbole.quick_start import build_model, load_data


def anisotropic_table(n=200, d=8, seed=0):
    """Row 0 padding (zero), unit rows sharing one strong direction; rows 5 and 9 missing."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(0.2, 1.0, d) + 3.0 * np.ones(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[0] = 0.0
    missing = np.zeros(n, dtype=bool)
    missing[[5, 9]] = True
    x[missing] = 0.0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(missing)


def test_center_and_whiten_by_hand():
    table, missing = anisotropic_table()
    rows = ~missing.numpy()
    rows[0] = False
    x = table.double().numpy()
    mu = x[rows].mean(axis=0)
    centred = x - mu
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    out = transform_table(table, missing, "center")
    np.testing.assert_allclose(out[rows].numpy(), expected[rows], atol=1e-6)

    cov = np.cov(x[rows].T)
    lam, u = np.linalg.eigh(cov)
    w = u @ np.diag(1.0 / np.sqrt(lam + 1e-5 * lam.mean())) @ u.T
    white = centred @ w.T
    expected = white / np.linalg.norm(white, axis=1, keepdims=True)
    out = transform_table(table, missing, "whiten")
    np.testing.assert_allclose(out[rows].numpy(), expected[rows], atol=1e-5)
    # before re-normalising, the whitened rows have identity covariance (up to the eps shrinkage)
    np.testing.assert_allclose(np.cov(white[rows].T), np.eye(table.shape[1]), atol=1e-3)


@pytest.mark.parametrize("mode", ["center", "whiten"])
def test_rows_unit_norm_items_no_longer_alike_padding_and_missing_untouched(mode):
    table, missing = anisotropic_table()
    rows = ~missing
    rows[0] = False
    assert mean_pairwise_cosine(table[rows]) > 0.8
    out = transform_table(table, missing, mode)
    assert abs(mean_pairwise_cosine(out[rows])) < 0.05
    np.testing.assert_allclose(out[rows].norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert torch.equal(out[~rows], table[~rows])
    assert out.dtype == table.dtype


def test_none_is_the_table_itself_and_bad_values_name_the_option():
    table, missing = anisotropic_table()
    assert transform_table(table, missing, "none") is table
    with pytest.raises(ValueError, match="prism_feature_transform"):
        transform_table(table, missing, "pca")
    few = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="at least two items"):
        transform_table(few, torch.tensor([False, False, True]), "center")


@pytest.fixture
def data(tmp_path):
    # item 3 has no text vector: it stays a zero row with its missing flag
    return write_dataset(str(tmp_path / "data"), n_users=12, item_rows={"3": {"txt_emb": ""}})


def built(data, tmp_path, **extra):
    options = tiny_config(data, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=5, embedding_size=16)
    options.update(extra)
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=options)
    dataset, train_data, _, _ = load_data(config)
    return build_model(config, train_data), dataset


@pytest.mark.parametrize("mode", ["center", "whiten"])
def test_the_model_reads_the_transformed_tables(mode, data, tmp_path):
    model, dataset = built(data, tmp_path, prism_feature_transform=mode)
    plain, _ = built(data, tmp_path)
    for m, name in enumerate(model.prism_modalities):
        source = dataset.modality_features[name]
        expected = transform_table(source, dataset.modality_missing[name], mode)
        got = model.prism.features.table(m)[: source.shape[0]]
        assert torch.allclose(got, expected)
        assert torch.allclose(plain.prism.features.table(m)[: source.shape[0]], source)
        assert not torch.allclose(got, source)
    missing_row = dataset.token2id(dataset.iid_field, "3")
    assert not model.prism.features.present[missing_row, model.prism_modalities.index("txt_emb")]


def test_bad_value_through_the_config_names_the_option(data, tmp_path):
    with pytest.raises(ValueError, match="prism_feature_transform"):
        built(data, tmp_path, prism_feature_transform="pca")


def test_trains_and_evaluates_through_run_recbole(data, tmp_path, monkeypatch):
    options = tiny_config(data, str(tmp_path / "saved"), MAX_ITEM_LIST_LENGTH=5, embedding_size=16)
    result = run_cli(monkeypatch, tmp_path, options, "--model=PRISM_SASRec", "--dataset=tiny",
                     "--epochs=2", "--prism_feature_transform=whiten", "--prism_freeze_features=True")
    assert "ndcg@10" in result["test_result"]
