"""atomic_data.s3rec: S3-Rec's files (a slice written here, and the real Toys when present)."""
import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from atomic_data import s3rec

REAL_SRC = s3rec.default_source()
HAS_REAL_TOYS = all(os.path.isfile(p) for p in s3rec.source_files(REAL_SRC, "toys"))

# A slice in S3-Rec's own format: 40 users, items 1..30; attribute 1 is on every item but
# item 30 (so it is frequent, not constant), 2..4 are frequent (on >= 10 % of the items = 3),
# 50+ are rare (one item each).
SHARE = 0.1


def slice_attributes():
    attrs = {}
    for i in range(1, 31):
        a = [1, 2 + i % 3]
        if i % 4 == 0:
            a.append(50 + i)  # a rare, brand-like attribute (one item each)
        attrs[str(i)] = a
    attrs["30"] = []  # an item without attributes: both views and attrs empty
    attrs["29"] = [1, 77]  # only the constant and a rare attribute: freq view missing
    return attrs


def write_slice(folder, n_users=40, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(5, 9))
        items = rng.choice(np.arange(1, 31), size=n, replace=True)  # repeats allowed (Yelp)
        if u <= 30:
            items[0] = u  # every item appears at least once
        lines.append(" ".join(map(str, [u, *items])))
    with open(os.path.join(folder, "Toys_and_Games.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "Toys_and_Games_item2attributes.json"), "w") as f:
        json.dump(slice_attributes(), f)
    return folder, lines


def read_atomic(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    return header, rows


def convert_slice(tmp_path, **kw):
    src, lines = write_slice(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    summary = s3rec.convert("toys", src=src, out=out, dim=kw.pop("dim", 8), freq_share=SHARE,
                            check_counts=False, quiet=True, **kw)
    return src, out, lines, summary


def test_inter_keeps_s3rec_order_with_positions_as_timestamps(tmp_path):
    _, out, lines, summary = convert_slice(tmp_path)
    header, rows = read_atomic(os.path.join(out, "toys", "toys.inter"))
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    expected = []
    for line in lines:
        user, *items = line.split()
        expected += [[user, item, str(pos)] for pos, item in enumerate(items, start=1)]
    assert rows == expected
    assert summary["users"] == 40 and summary["items"] == 30 and summary["interactions"] == len(rows)


def test_item_file_attrs_and_two_views(tmp_path):
    _, out, _, summary = convert_slice(tmp_path)
    header, rows = read_atomic(os.path.join(out, "toys", "toys.item"))
    assert header == ["item_id:token", "attrs:token_seq", "freq_emb:float_seq", "rare_emb:float_seq"]
    assert [r[0] for r in rows] == [str(i) for i in range(1, 31)]
    attrs = slice_attributes()
    table = s3rec.attribute_vectors(max(a for v in attrs.values() for a in v), 8, 0)
    for item, cell_attrs, freq, rare in rows:
        a = attrs[item]
        assert cell_attrs == " ".join(map(str, a))
        frequent = sorted(x for x in set(a) if x <= 4)
        rare_ids = sorted(x for x in set(a) if x >= 50)
        for cell, ids in ((freq, frequent), (rare, rare_ids)):
            if not ids:
                assert cell == ""  # missing view: an empty cell
                continue
            vec = np.array(cell.split(), dtype=float)
            assert vec.shape == (8,)
            assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
            want = table[ids].sum(axis=0)
            np.testing.assert_allclose(vec, want / np.linalg.norm(want), atol=1e-5)
    # view B (rare) is missing exactly for the items without a rare attribute
    no_rare = {item for item, a in attrs.items() if not any(x >= 50 for x in a)}
    assert {r[0] for r in rows if r[3] == ""} == no_rare
    assert {r[0] for r in rows if r[2] == ""} == {"30"}
    assert summary["items missing rare_emb"] == len(no_rare)
    assert summary["items missing freq_emb"] == 1
    assert summary["attributes on every item (dropped from the views)"] == []  # item 30 has none
    assert summary["items without attributes"] == 1


def test_attribute_on_every_item_is_dropped_from_the_views(tmp_path):
    src, _ = write_slice(str(tmp_path / "src"))
    attrs = slice_attributes()
    attrs["30"] = [1, 3]
    with open(os.path.join(src, "Toys_and_Games_item2attributes.json"), "w") as f:
        json.dump(attrs, f)
    summary = s3rec.convert("toys", src=src, out=str(tmp_path / "out"), dim=8, freq_share=SHARE,
                            check_counts=False, quiet=True)
    assert summary["attributes on every item (dropped from the views)"] == [1]
    _, rows = read_atomic(os.path.join(str(tmp_path / "out"), "toys", "toys.item"))
    freq = dict((r[0], r[2]) for r in rows)
    assert freq["29"] == ""  # only the constant and a rare attribute
    assert freq["30"] != ""  # attribute 3


def test_rerun_is_idempotent_and_leaves_files_untouched(tmp_path, capsys):
    src, out, _, _ = convert_slice(tmp_path)
    folder = os.path.join(out, "toys")
    paths = [os.path.join(folder, f) for f in ("toys.inter", "toys.item", "toys.summary.json")]
    before = [(open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in paths]
    stale = os.path.join(folder, ".toys.item.tmp-99999")
    open(stale, "w").close()
    assert s3rec.main(["--name", "toys", "--src", src, "--out", out, "--dim", "8",
                       "--freq-share", str(SHARE), "--skip-count-check"]) == 0
    assert "nothing (files already up to date)" in capsys.readouterr().out
    after = [(open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in paths]
    assert after[0] == before[0] and after[1] == before[1]  # same bytes, not rewritten
    assert after[2][0] == before[2][0]
    assert not os.path.exists(stale)
    assert sorted(os.listdir(folder)) == ["toys.inter", "toys.item", "toys.summary.json"]
    # another seed changes the vectors (and rewrites the item file), not the interactions
    s3rec.convert("toys", src=src, out=out, dim=8, seed=1, freq_share=SHARE, check_counts=False, quiet=True)
    assert open(paths[0], "rb").read() == before[0][0]
    assert open(paths[1], "rb").read() != before[1][0]


def test_missing_source_file_is_one_clear_error(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert s3rec.main(["--name", "sports", "--src", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Sports_and_Outdoors.txt: no such file" in err
    assert "Traceback" not in err
    # the attributes file alone missing, found through $PRISM_S3REC_DIR
    src, _ = write_slice(str(tmp_path / "src"))
    os.remove(os.path.join(src, "Toys_and_Games_item2attributes.json"))
    monkeypatch.setenv(s3rec.ENV_SRC, src)
    assert s3rec.main(["--name", "toys", "--out", str(tmp_path / "o"), "--skip-count-check"]) == 2
    err = capsys.readouterr().err
    assert "Toys_and_Games_item2attributes.json: no such file" in err and "PRISM_S3REC_DIR" in err
    assert not os.path.exists(tmp_path / "o" / "toys" / "toys.inter")


def test_counts_that_differ_from_the_published_ones_are_an_error(tmp_path, capsys):
    src, _ = write_slice(str(tmp_path / "src"))
    assert s3rec.main(["--name", "toys", "--src", src, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "40 users, 30 items" in err and "19412, 11924, 167597" in err


def test_bad_sequence_line_names_file_and_line(tmp_path, capsys):
    src, _ = write_slice(str(tmp_path / "src"))
    with open(os.path.join(src, "Toys_and_Games.txt"), "a") as f:
        f.write("41 3 x7\n")
    assert s3rec.main(["--name", "toys", "--src", src, "--out", str(tmp_path / "o"),
                       "--skip-count-check"]) == 2
    assert "Toys_and_Games.txt, line 41: 'x7' is not an integer id" in capsys.readouterr().err


def test_prism_dataset_reads_the_views_and_attrs(tmp_path):
    """RecBole + the package load the output: empty cells are missing modalities."""
    from prism_recbole.config import Config
    from prism_recbole.data import create_dataset

    _, out, _, _ = convert_slice(tmp_path)
    config = Config(model="PRISM_SASRec", dataset="toys", config_dict=tiny_config(
        out, str(tmp_path / "saved"), modalities=["freq_emb", "rare_emb"],
        load_col={"inter": ["user_id", "item_id", "timestamp"],
                  "item": ["item_id", "attrs", "freq_emb", "rare_emb"]}))
    dataset = create_dataset(config)
    assert dataset.modality_dims == {"freq_emb": 8, "rare_emb": 8}
    token2id = dataset.field2token_id["item_id"]
    _, missing_rare = dataset.modality_table("rare_emb")
    _, missing_freq = dataset.modality_table("freq_emb")
    no_rare = {item for item, a in slice_attributes().items() if not any(x >= 50 for x in a)}
    assert {t for t, i in token2id.items() if t != "[PAD]" and missing_rare[i]} == no_rare
    assert {t for t, i in token2id.items() if t != "[PAD]" and missing_freq[i]} == {"30"}
    assert "attrs" in dataset.item_feat.columns


@pytest.mark.skipif(not HAS_REAL_TOYS, reason=f"S3-Rec's Toys files are not in {REAL_SRC}")
def test_real_toys_reproduces_the_published_counts(tmp_path):
    summary = s3rec.convert("toys", out=str(tmp_path), quiet=True)  # ~2 s
    assert (summary["users"], summary["items"], summary["interactions"]) == (19412, 11924, 167597)
    assert summary["counts match the published ones"]
    header, rows = read_atomic(os.path.join(str(tmp_path), "toys", "toys.item"))
    assert len(rows) == 11924
    assert sum(r[3] == "" for r in rows) == summary["items missing rare_emb"] > 0
    assert sum(r[2] == "" for r in rows) == summary["items missing freq_emb"]
