"""The modality cache next to the data: written once, read instead of parsing, invalidated."""
import glob
import logging
import os

import numpy as np
import pandas as pd
import pytest
from conftest import item_vector, tiny_config, write_dataset

import prism_recbole.data.dataset as dataset_module
from prism_recbole.config import Config
from prism_recbole.data import AtomicFileError, create_dataset


def build(data_path, tmp_path, **overrides):
    config = Config(model="PRISM_SASRec", dataset="tiny",
                    config_dict=tiny_config(data_path, str(tmp_path / "saved"), **overrides))
    return create_dataset(config)


def item_path(data):
    return os.path.join(data, "tiny", "tiny.item")


def cache_file(data):
    return item_path(data) + dataset_module.CACHE_SUFFIX


def leftovers(data):
    return glob.glob(os.path.join(data, "tiny", "*.tmp-*"))


def assert_same_tables(a, b):
    assert list(a.modality_features) == list(b.modality_features)
    for field in a.modality_features:
        ta, tb = a.modality_features[field].numpy(), b.modality_features[field].numpy()
        assert ta.dtype == tb.dtype == np.float32 and ta.shape == tb.shape
        assert np.array_equal(ta.view(np.int32), tb.view(np.int32))  # bitwise
        assert np.array_equal(a.modality_missing[field].numpy(), b.modality_missing[field].numpy())
    assert list(a.item_feat.columns) == list(b.item_feat.columns)
    assert a.field2type == b.field2type


@pytest.fixture
def item_reads(monkeypatch):
    """Records the ``usecols`` of every pandas read of a ``.item`` file."""
    calls = []
    real = pd.read_csv

    def spy(path, *args, **kwargs):
        if str(path).endswith(".item"):
            calls.append(list(kwargs.get("usecols") or []))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)
    return calls


def test_first_run_writes_second_run_reads_without_parsing(tmp_path, item_reads, caplog, monkeypatch):
    data = write_dataset(str(tmp_path / "d"), item_rows={"3": None, "4": {"img_emb": ""}})
    with caplog.at_level(logging.INFO):
        cold = build(data, tmp_path, state="INFO")
    cold_log = [r.getMessage() for r in caplog.records if "modality '" in r.getMessage()]
    assert cold.modality_cache_status == "written" and os.path.isfile(cache_file(data))
    assert not leftovers(data)

    # the second run must not parse the modality columns: no line-by-line parse ...
    def no_parse(*args, **kwargs):
        raise AssertionError("the .item file was parsed although the cache is valid")

    monkeypatch.setattr(dataset_module, "parse_item_vectors", no_parse)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cached = build(data, tmp_path, state="INFO")
    cached_log = [r.getMessage() for r in caplog.records if "modality '" in r.getMessage()]
    assert cached.modality_cache_status == "read"
    # ... and no pandas read of the modality columns by RecBole (item id only: no read at all)
    assert all("img_emb:float_seq" not in cols and "txt_emb:float_seq" not in cols for cols in item_reads)
    assert_same_tables(cold, cached)
    assert cold_log == cached_log and "1 item(s) with no row" in cached_log[0]
    i3 = cached.token2id("item_id", "3")
    assert cached.modality_missing["img_emb"][i3] and (cached.inter_feat["item_id"] == i3).sum() > 0
    # the same tables as without any cache
    monkeypatch.undo()
    uncached = build(data, tmp_path, modality_cache=False)
    assert_same_tables(cold, uncached)


def test_other_item_columns_are_parsed_by_recbole_without_the_vectors(tmp_path, item_reads):
    data = write_dataset(str(tmp_path / "d"))
    path = item_path(data)
    with open(path) as f:
        header, *rows = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join([header + "\tcat:token"] + [r + f"\tc{i % 3}" for i, r in enumerate(rows)]) + "\n")
    load_col = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "cat"]}
    cold = build(data, tmp_path, load_col=load_col)
    cached = build(data, tmp_path, load_col=load_col)
    assert (cold.modality_cache_status, cached.modality_cache_status) == ("written", "read")
    assert item_reads and all(sorted(cols) == ["cat:token", "item_id:token"] for cols in item_reads)
    assert_same_tables(cold, cached)
    assert "cat" in cached.item_feat.columns and "img_emb" not in cached.field2type


def test_changing_the_item_file_invalidates_the_cache(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    first = build(data, tmp_path)
    path = item_path(data)
    with open(path) as f:
        text = f.read()
    new_vec = " ".join(["0.5"] * 8)
    old_line = next(line for line in text.splitlines() if line.startswith("5\t"))
    cells = old_line.split("\t")
    with open(path, "w") as f:
        f.write(text.replace(old_line, "\t".join([cells[0], new_vec, cells[2]])))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = build(data, tmp_path)
    assert second.modality_cache_status == "written"  # stale: parsed again and rewritten
    i5 = second.token2id("item_id", "5")
    assert np.array_equal(second.modality_features["img_emb"][i5].numpy(), np.full(8, 0.5, np.float32))
    assert not np.array_equal(first.modality_features["img_emb"][i5].numpy(),
                              second.modality_features["img_emb"][i5].numpy())
    assert build(data, tmp_path).modality_cache_status == "read"
    # a bad file behind a cache is still the same clear error (the cache is stale, not used)
    with open(path, "a") as f:
        f.write("99\t1 2\t3\textra\n")
    with pytest.raises(AtomicFileError, match=r"line 26: 4 columns, but the header declares 3"):
        build(data, tmp_path)


def test_option_changes_invalidate_the_cache(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    assert build(data, tmp_path).modality_cache_status == "written"
    one = build(data, tmp_path, modalities=["txt_emb"])
    assert one.modality_cache_status == "written" and list(one.modality_features) == ["txt_emb"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped-byte"])
def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path, caplog, damage):
    data = write_dataset(str(tmp_path / "d"))
    cold = build(data, tmp_path)
    path = cache_file(data)
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    if damage == "garbage":
        blob = bytearray(b"not a zip file at all")
    elif damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:  # a byte inside the float data: the zip CRC no longer matches
        blob[len(blob) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(blob))
    with caplog.at_level(logging.WARNING):
        again = build(data, tmp_path, state="WARNING")
    assert again.modality_cache_status == "written"
    assert "is corrupt" in caplog.text and "rebuilding" in caplog.text
    assert_same_tables(cold, again)
    assert build(data, tmp_path).modality_cache_status == "read"


def test_cache_off_writes_nothing(tmp_path):
    data = write_dataset(str(tmp_path / "d"))
    before = sorted(os.listdir(os.path.join(data, "tiny")))
    dataset = build(data, tmp_path, modality_cache=False)
    assert dataset.modality_cache_status == "off"
    assert sorted(os.listdir(os.path.join(data, "tiny"))) == before


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch, caplog):
    data = write_dataset(str(tmp_path / "d"))
    real = np.lib.format.write_array_header_2_0

    def fail_midway(f, header):
        real(f, header)
        f.write(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array_header_2_0", fail_midway)
    with caplog.at_level(logging.WARNING):
        dataset = build(data, tmp_path, state="WARNING")
    assert dataset.modality_cache_status == "unwritable" and "disk full" in caplog.text
    assert not os.path.exists(cache_file(data)) and not leftovers(data)
    table, _ = dataset.modality_table("img_emb")
    internal = dataset.token2id("item_id", "9")
    np.testing.assert_allclose(table[internal].numpy(), item_vector("9", "img_emb"), rtol=1e-5)
    monkeypatch.undo()
    assert build(data, tmp_path).modality_cache_status == "written"


def test_the_cache_holds_no_pickles(tmp_path):
    import json
    import zipfile

    data = write_dataset(str(tmp_path / "d"))
    build(data, tmp_path)
    with zipfile.ZipFile(cache_file(data)) as zf:
        names = zf.namelist()
        meta = json.loads(zf.read("meta.json"))
        for name in names:
            if name.endswith(".npy"):
                with zf.open(name) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
                assert array.dtype in (np.float32, np.bool_)
    assert meta["signature"]["fields"] == ["img_emb", "txt_emb"] and len(meta["tokens"]) == 24


def test_sparse_leading_modality_loads_and_caches(tmp_path):
    """Items 1-1,500 have an empty img_emb cell, 1,501-2,000 a vector: the first chunks of the
    streaming parse are all empty.  Loading works, the empty items are missing, the filled ones
    have their vectors, and the cache written afterwards gives the same tables on a rerun."""
    n_items = 2000
    rows = {str(i): {"img_emb": ""} for i in range(1, 1501)}
    data = write_dataset(str(tmp_path / "data"), n_users=40, n_items=n_items, item_rows=rows,
                         inter_items=lambda u, n, rng: rng.choice(np.arange(1, n_items + 1), size=n))
    first = build(data, tmp_path)
    assert first.modality_cache_status == "written"
    for ds in (first, build(data, tmp_path)):
        feats, missing = ds.modality_table("img_emb")
        assert feats.shape[1] == 8
        token2id = ds.field2token_id["item_id"]
        for token, id_ in token2id.items():
            if token == "[PAD]":
                continue
            if int(token) <= 1500:
                assert missing[id_] and not feats[id_].any()
            else:
                assert not missing[id_]
                np.testing.assert_allclose(feats[id_].numpy(), item_vector(token, "img_emb"), rtol=1e-5)
        assert not ds.modality_table("txt_emb")[1][1:].any()
    assert build(data, tmp_path).modality_cache_status == "read"
