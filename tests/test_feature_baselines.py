"""SASRecF_MM and FDSA_MM: RecBole's feature-aware baselines on the dense modality vectors."""
import os
import sys

import numpy as np
import pytest
import torch
from recbole.model.sequential_recommender.fdsa import FDSA
from recbole.model.sequential_recommender.sasrecf import SASRecF

from conftest import DIMS, item_vector
from prism_recbole.config import Config
from prism_recbole.model.sequential_recommender.fdsa_mm import FDSA_MM
from prism_recbole.model.sequential_recommender.sasrecf_mm import SASRecF_MM
from prism_recbole.quick_start import build_model, load_data, load_model, run
from prism_recbole.trainer import load_checkpoint
from prism_recbole.utils import get_model, get_trainer, list_prism_models

MODELS = ["SASRecF_MM", "FDSA_MM"]
METRICS = {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (5, 10)}


def model_and_data(tiny, model, **overrides):
    config = Config(model=model, dataset="tiny", config_dict=dict(tiny, **overrides))
    _, train_data, _, test_data = load_data(config)
    return build_model(config, train_data), train_data, test_data


def test_registry_and_recbole_defaults(tiny):
    assert get_model("SASRecF_MM") is SASRecF_MM and issubclass(SASRecF_MM, SASRecF)
    assert get_model("FDSA_MM") is FDSA_MM and issubclass(FDSA_MM, FDSA)
    assert {"SASRecF_MM", "FDSA_MM"} <= set(list_prism_models())
    for model in MODELS:
        config = Config(model=model, dataset="tiny", config_dict=tiny)
        # from RecBole's SASRecF.yaml / FDSA.yaml (tiny does not set them)
        assert config["hidden_act"] == "gelu" and config["attn_dropout_prob"] == 0.5
        assert config["initializer_range"] == 0.02 and config["loss_type"] == "CE"
        # ours override RecBole's ['class'] and FDSA's 'mean'
        assert config["selected_features"] is None and config["pooling_mode"] == "sum"
        assert config["inner_size"] == 32  # the user's value wins
        assert config["train_neg_sample_args"] is None or \
            config["train_neg_sample_args"]["distribution"] == "none"
        assert not any(k.startswith("prism_") and k != "prism_expert_hidden"
                       for k in config.final_config_dict)  # PRISM options are not loaded


@pytest.mark.parametrize("model", MODELS)
def test_one_epoch_trains_and_gives_test_metrics(tiny, model):
    out = run(model=model, dataset="tiny", config_dict=dict(tiny, epochs=1))
    assert set(out["test_result"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in out["test_result"].values())
    assert os.path.isfile(out["checkpoint"]) and len(out["epoch_times"]) == 1
    state = load_checkpoint(out["checkpoint"])
    # no pickled feature layer (RecBole's parent would store it with the whole dataset)
    assert not state["other_parameter"]
    assert any(k.startswith("feature_embed_layer.projections.") for k in state["state_dict"])
    assert not any(".table_" in k or k.endswith(".present") for k in state["state_dict"])


@pytest.mark.parametrize("model", MODELS)
def test_layer_holds_the_items_own_vectors(tiny, model):
    net, train_data, _ = model_and_data(tiny, model)
    dataset = train_data._dataset
    layer = net.feature_embed_layer
    assert layer.field_names == ["img_emb", "txt_emb"]
    tokens = dataset.field2id_token["item_id"]
    for m, field in enumerate(layer.field_names):
        table = layer.table(m)
        assert table.shape == (net.n_items, DIMS[field])
        assert torch.all(table[0] == 0)
        for i in range(1, net.n_items):  # internal id i holds the vector of its token
            expected = torch.tensor(item_vector(tokens[i], field), dtype=torch.float32)
            torch.testing.assert_close(table[i], expected, rtol=0, atol=1e-5)
    ids = torch.tensor([[0, 1, 2], [3, 0, 0]])
    with torch.no_grad():
        emb = layer.embed(ids)
        assert emb.shape == (2, 3, 2, net.hidden_size)
        assert torch.all(emb[ids == 0] == 0)  # padding: zeros, as RecBole's empty feature row
        for m, proj in enumerate(layer.projections):
            torch.testing.assert_close(emb[0, 1, m], proj(layer.table(m)[1]))
    sparse, dense = layer(None, ids)
    assert sparse["item"] is None and dense["item"].shape == (2, 3, 2, net.hidden_size)


@pytest.mark.parametrize("model", MODELS)
def test_changing_an_items_vector_changes_exactly_the_sequences_that_hold_it(tiny, model):
    net, _, test_data = model_and_data(tiny, model)
    net.eval()
    batch = next(iter(test_data))[0]
    seq, seq_len = batch["item_id_list"], batch["item_length"]
    positions = torch.arange(seq.size(1)).unsqueeze(0) < seq_len.unsqueeze(1)
    item = int(seq[0, seq_len[0] - 1])
    holds = ((seq == item) & positions).any(1)
    assert holds.any() and (~holds).any()
    with torch.no_grad():
        before = net(seq, seq_len)
        scores = net.full_sort_predict(batch)
        for m in range(2):  # each modality on its own reaches the output
            table = net.feature_embed_layer.table(m)
            saved = table[item].clone()
            table[item] += 1.0
            after = net(seq, seq_len)
            table[item] = saved
            assert not torch.allclose(after[holds], before[holds]), m
            torch.testing.assert_close(after[~holds], before[~holds])
    assert scores.shape == (len(batch), net.n_items)
    assert net.predict(batch).shape == (len(batch),)


@pytest.mark.parametrize("model", MODELS)
def test_projections_get_gradients(tiny, model):
    net, train_data, _ = model_and_data(tiny, model)
    net.train()
    assert net.other_parameter() == {}  # RecBole's parent lists its feature layer (and dataset)
    net.calculate_loss(next(iter(train_data))).backward()
    for m, proj in enumerate(net.feature_embed_layer.projections):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0, m
    # the feature tables are data, not parameters
    names = {n for n, _ in net.named_parameters()}
    assert not any(".table_" in n for n in names)
    buffers = {n for n, _ in net.named_buffers()}
    assert set(net._ddp_params_and_buffers_to_ignore) <= buffers
    assert "feature_embed_layer.table_0" in net._ddp_params_and_buffers_to_ignore


def test_selected_features_and_pooling_mode(tiny):
    net, train_data, _ = model_and_data(tiny, "SASRecF_MM", selected_features=["txt_emb"])
    assert net.feature_embed_layer.field_names == ["txt_emb"]
    assert net.feature_embed_layer.projections[0].in_features == DIMS["txt_emb"]
    assert net.concat_layer.in_features == 2 * net.hidden_size
    net.calculate_loss(next(iter(train_data))).backward()

    sum_net, _, _ = model_and_data(tiny, "FDSA_MM")
    mean_net, _, _ = model_and_data(tiny, "FDSA_MM", pooling_mode="mean")
    mean_net.load_state_dict(sum_net.state_dict())
    ids = torch.tensor([[1, 2]])
    with torch.no_grad():
        for m, field in enumerate(["img_emb", "txt_emb"]):
            proj = sum_net.feature_embed_layer.projections[m]
            table = sum_net.feature_embed_layer.table(m)
            torch.testing.assert_close(mean_net.feature_embed_layer.embed(ids)[..., m, :],
                                       proj(table[ids] / DIMS[field]))

    with pytest.raises(ValueError, match="selected_features names class"):
        model_and_data(tiny, "SASRecF_MM", selected_features=["class"])
    with pytest.raises(ValueError, match="pooling_mode must be one of sum, mean"):
        model_and_data(tiny, "FDSA_MM", pooling_mode="max")


@pytest.mark.parametrize("model", MODELS)
def test_missing_modalities_is_a_clear_error(tiny, model):
    with pytest.raises(ValueError, match=f"{model} needs item modality vectors: set the option 'modalities'"):
        run(model=model, dataset="tiny", config_dict=dict(tiny, modalities=None))


@pytest.mark.parametrize("model", MODELS)
def test_load_model_round_trip(tiny, model, monkeypatch):
    out = run(model=model, dataset="tiny", config_dict=dict(tiny, epochs=1))
    monkeypatch.setattr(sys, "argv", ["recommend", "--model=SASRec"])
    loaded = load_model(out["checkpoint"])
    assert loaded.config["model"] == model and isinstance(loaded.model, get_model(model))
    state = load_checkpoint(out["checkpoint"])["state_dict"]
    assert set(loaded.model.state_dict()) == set(state)
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    # the tables are rebuilt from the data
    dataset = loaded.train_data._dataset
    torch.testing.assert_close(loaded.model.feature_embed_layer.table(1),
                               dataset.modality_features["txt_emb"].float())
    trainer = get_trainer(loaded.config["MODEL_TYPE"], loaded.config["model"])(loaded.config, loaded.model)
    result = trainer.evaluate(loaded.test_data, load_best_model=False)
    assert result == pytest.approx(out["test_result"])
    assert np.isfinite(list(result.values())).all()
