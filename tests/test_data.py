"""Modality tables from the .item file: alignment with RecBole ids, and every bad input."""
import logging
import os

import numpy as np
import pytest
import torch
from conftest import DIMS, item_vector, tiny_config, write_dataset

from prism_recbole.config import Config
from prism_recbole.data import AtomicFileError, create_dataset


def build(data_path, tmp_path, **overrides):
    config = Config(model="PRISM_SASRec", dataset="tiny",
                    config_dict=tiny_config(data_path, str(tmp_path / "saved"), **overrides))
    return create_dataset(config)


def test_rows_follow_item_tokens_not_file_order(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    # shuffle the .item rows: the table must follow tokens, not line order
    path = os.path.join(data, "tiny", "tiny.item")
    with open(path) as f:
        header, *rows = f.read().splitlines()
    rng = np.random.default_rng(1)
    rng.shuffle(rows)
    with open(path, "w") as f:
        f.write("\n".join([header] + rows) + "\n")
    dataset = build(data, tmp_path)
    assert set(dataset.modality_features) == {"img_emb", "txt_emb"}
    for field, dim in DIMS.items():
        table, missing = dataset.modality_table(field)
        assert table.shape == (dataset.item_num, dim) and table.dtype == torch.float32
        assert (table[0] == 0).all() and missing[0]
        for token in ["1", "5", "17", "24"]:
            internal = dataset.token2id("item_id", token)
            np.testing.assert_allclose(table[internal].numpy(), item_vector(token, field), rtol=1e-5)
            assert not missing[internal]
    # RecBole no longer carries the vectors in item_feat (no copy in every batch)
    assert "img_emb" not in dataset.item_feat.columns and "img_emb" not in dataset.field2type


def test_model_uses_the_row_of_each_token(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=tiny_config(data, str(tmp_path / "s")))
    from prism_recbole.quick_start import build_model, load_data

    dataset, train_data, _, _ = load_data(config)
    model = build_model(config, train_data)
    internal = train_data._dataset.token2id("item_id", "9")
    np.testing.assert_allclose(model.prism.features.table(0)[internal].detach().numpy(),
                               item_vector("9", "img_emb"), rtol=1e-5)


def test_missing_rows_and_empty_cells_get_zero_vectors_and_a_flag(tmp_path, caplog):
    data = write_dataset(str(tmp_path / "d"), item_rows={"3": None, "4": {"img_emb": ""}})
    with caplog.at_level(logging.INFO):
        dataset = build(data, tmp_path, state="INFO")
    img, img_missing = dataset.modality_table("img_emb")
    txt, txt_missing = dataset.modality_table("txt_emb")
    i3, i4 = dataset.token2id("item_id", "3"), dataset.token2id("item_id", "4")
    assert img_missing[i3] and txt_missing[i3] and (img[i3] == 0).all()  # no row at all
    assert img_missing[i4] and not txt_missing[i4] and (img[i4] == 0).all()  # empty image cell
    # item 3 still has its interactions (RecBole would drop them by default)
    assert (dataset.inter_feat["item_id"] == i3).sum() > 0
    text = caplog.text
    assert "1 item(s) with no row" in text and "1 item(s) with an empty cell" in text


@pytest.mark.parametrize(
    "rows, extra, pattern",
    [
        ({"5": {"img_emb": "1 2 3"}}, (), r"line 6: item '5' has a 'img_emb' vector of length 3, but the other 'img_emb' vectors have length 8"),
        ({"7": {"txt_emb": "0 1 nan 2 3 4"}}, (), r"line 8: item '7' has a non-finite value \(nan\) in its 'txt_emb'"),
        ({"7": {"txt_emb": "0 1 inf 2 3 4"}}, (), r"item '7' has a non-finite value \(inf\)"),
        ({"2": {"img_emb": "1 2 x 4 5 6 7 8"}}, (), r"tiny.item, line 3: field 'img_emb' \(float_seq\) holds 'x', which is not a number"),
        ({}, ("3\t" + " ".join(["0"] * 8) + "\t" + " ".join(["0"] * 6),), r"lines 4 and 26: item '3' has more than one row"),
        ({}, ("99\t1 2\t3\textra",), r"line 26: 4 columns, but the header declares 3"),
    ],
    ids=["wrong-length", "nan", "inf", "not-a-number", "duplicate", "extra-column"],
)
def test_bad_item_files_give_one_clear_error(tmp_path, rows, extra, pattern):
    data = write_dataset(str(tmp_path / "d"), item_rows=rows, extra_item_lines=extra)
    with pytest.raises(AtomicFileError, match=pattern) as info:
        build(data, tmp_path)
    assert "tiny.item" in str(info.value)


def test_unknown_modality_field_and_wrong_type(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    with pytest.raises(AtomicFileError, match="modality field 'audio_emb'"):
        build(data, tmp_path, modalities=["img_emb", "audio_emb"])
    data2 = write_dataset(str(tmp_path / "d2"), header="item_id:token\timg_emb:token_seq\ttxt_emb:float_seq")
    with pytest.raises(AtomicFileError, match="must be declared as 'img_emb:float_seq'"):
        build(data2, tmp_path)


def test_modalities_from_the_command_line_form(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    dataset = build(data, tmp_path, modalities="[txt_emb]")
    assert list(dataset.modality_features) == ["txt_emb"]
