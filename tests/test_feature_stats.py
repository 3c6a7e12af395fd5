"""python -m prism_recbole.feature_stats: how alike a .item file's item vectors look."""
import os

import numpy as np
import pytest
import torch
from conftest import fmt, write_dataset

from prism_recbole import feature_stats
from prism_recbole.data.dataset import AtomicFileError


def test_mean_pairwise_cosine_is_exact():
    rows = torch.randn(40, 5) + 2.0
    unit = rows / rows.norm(dim=1, keepdim=True)
    brute = [float(unit[i] @ unit[j]) for i in range(40) for j in range(40) if i != j]
    assert feature_stats.mean_pairwise_cosine(rows) == pytest.approx(np.mean(brute), abs=1e-6)
    assert np.isnan(feature_stats.mean_pairwise_cosine(rows[:1]))


def write_anisotropic(root, n_items=60):
    """A .item file whose img_emb vectors share one strong direction; item 4 has no txt_emb."""
    rng = np.random.default_rng(1)
    rows = {}
    for i in range(1, n_items + 1):
        img = rng.normal(size=8) * 0.3 + 2.0
        rows[str(i)] = {"img_emb": fmt(img), "txt_emb": "" if i == 4 else fmt(rng.normal(size=6))}
    return write_dataset(root, n_items=n_items, item_rows=rows)


def test_report_counts_items_and_reads_the_shared_direction(tmp_path):
    root = write_anisotropic(str(tmp_path))
    path = os.path.join(root, "tiny", "tiny.item")
    stats = {f: feature_stats.modality_stats(v, p) for f, (v, p) in feature_stats.read_item_file(path).items()}
    assert stats["img_emb"]["items"] == 60 and stats["txt_emb"]["items"] == 59
    assert stats["img_emb"]["dim"] == 8 and stats["txt_emb"]["dim"] == 6
    assert stats["img_emb"]["none"] > 0.9  # every item looks alike as is
    assert abs(stats["img_emb"]["center"]) < 0.05 and abs(stats["img_emb"]["whiten"]) < 0.05
    assert abs(stats["txt_emb"]["none"]) < 0.1
    text = feature_stats.report(path, ["img_emb"])
    assert "| img_emb | 60 | 8 |" in text and "txt_emb" not in text


def test_command_line_prints_a_table_and_bad_input_names_file_and_line(tmp_path, capsys):
    root = write_anisotropic(str(tmp_path))
    path = os.path.join(root, "tiny", "tiny.item")
    assert feature_stats.main([path]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["| modality", "| img_emb", "| txt_emb"]

    with pytest.raises(AtomicFileError, match="no float_seq column sound_emb"):
        feature_stats.read_item_file(path, ["sound_emb"])
    bad = write_dataset(str(tmp_path / "bad"), item_rows={"5": {"img_emb": "0.1 0.2"}})
    bad_path = os.path.join(bad, "tiny", "tiny.item")
    assert feature_stats.main([bad_path]) == 2
    err = capsys.readouterr().err
    assert "tiny.item" in err and "line 6" in err and "img_emb" in err
