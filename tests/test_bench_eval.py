"""benchmarks/bench_eval.py: the memory tracker, the synthetic dataset, one tiny run."""
import csv
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_eval  # noqa: E402
from bench_eval import LiveTensorTracker  # noqa: E402

MIB = 1024 ** 2
FLOATS_PER_MIB = MIB // 4


# --------------------------------------------------------------------------- memory tracker


def test_tracker_freed_memory_is_not_in_the_peak():
    with LiveTensorTracker() as tracker:
        a = torch.empty(FLOATS_PER_MIB)
        assert tracker.live_bytes == MIB
        del a
        assert tracker.live_bytes == 0
        b = torch.empty(2 * FLOATS_PER_MIB)
    assert tracker.peak_bytes == 2 * MIB
    assert tracker.live_bytes == 2 * MIB
    del b
    assert tracker.live_bytes == 0


def test_tracker_live_tensors_add_up():
    with LiveTensorTracker() as tracker:
        a = torch.empty(FLOATS_PER_MIB)
        b = torch.empty(2 * FLOATS_PER_MIB)
        del a, b
        c = torch.zeros(FLOATS_PER_MIB // 2)
    assert tracker.peak_bytes == 3 * MIB
    assert tracker.live_bytes == MIB // 2
    assert tracker.allocations == 3
    del c


def test_tracker_counts_a_storage_once_and_frees_it_with_its_last_view():
    with LiveTensorTracker() as tracker:
        a = torch.ones(FLOATS_PER_MIB)
        view = a[10:].view(-1, 2)
        a.mul_(2)  # in place: no new storage
        del a
        assert tracker.live_bytes == MIB  # the view keeps the storage alive
        del view
        assert tracker.live_bytes == 0
    assert tracker.peak_bytes == MIB


def test_tracker_ignores_tensors_that_existed_before():
    weight = torch.ones(FLOATS_PER_MIB)  # like a parameter or a batch
    with torch.no_grad(), LiveTensorTracker() as tracker:
        weight.add_(1)
        part = weight[::2]
        flat = weight.view(-1)
        assert tracker.live_bytes == 0
        doubled = weight * 2  # a new tensor: counted
    assert tracker.peak_bytes == MIB
    assert part.numel() and flat.numel() and doubled.numel()


def test_tracker_counts_every_output_of_an_op():
    scores = torch.randn(64, 1000)
    with LiveTensorTracker() as tracker:
        values, indices = torch.topk(scores, 20, dim=-1)
    assert tracker.peak_bytes == values.numel() * 4 + indices.numel() * 8


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_dataset_is_deterministic_and_reused(tmp_path):
    name, info = bench_eval.ensure_synthetic(str(tmp_path / "a"), 300, 50, 8)
    assert name == "bench-synthetic-300-50-8" and info["generated"]
    assert info["missing"] == {"img_emb": 2, "txt_emb": 2}
    assert bench_eval.ensure_synthetic(str(tmp_path / "a"), 300, 50, 8)[1] == {"generated": False}
    bench_eval.ensure_synthetic(str(tmp_path / "b"), 300, 50, 8)
    for ext in ("inter", "item"):
        first = (tmp_path / "a" / name / f"{name}.{ext}").read_bytes()
        assert first == (tmp_path / "b" / name / f"{name}.{ext}").read_bytes()
    assert not [p for p in os.listdir(tmp_path / "a") if ".tmp-" in p]  # renamed into place
    item_lines = (tmp_path / "a" / name / f"{name}.item").read_text().splitlines()
    assert len(item_lines) == 301
    empty = [line for line in item_lines[1:] if "\t\t" in line or line.endswith("\t")]
    assert len(empty) == 4  # 2 items lack img_emb, 2 lack txt_emb
    inter_lines = (tmp_path / "a" / name / f"{name}.inter").read_text().splitlines()
    users = {line.split("\t")[0] for line in inter_lines[1:]}
    assert len(users) == 50 and len(inter_lines) - 1 >= 3 * 50


# --------------------------------------------------------------------------- the benchmark


def test_tiny_run_prints_the_table(tmp_path, capsys):
    out_csv = tmp_path / "eval.csv"
    argv_before = list(sys.argv)
    rows = bench_eval.main([
        "--datasets", "synthetic", "--synthetic_items", "300", "--synthetic_users", "50",
        "--dim", "8", "--rounds", "1", "--backbones", "SASRec", "--eval_batch_size", "16",
        "--cache_dir", str(tmp_path / "data"), "--device", "cpu", "--csv", str(out_csv),
    ])
    assert sys.argv == argv_before  # restored
    out = capsys.readouterr().out
    name = "bench-synthetic-300-50-8"
    assert len(rows) == 1
    row = rows[0]
    assert (row["dataset"], row["backbone"]) == (name, "SASRec")
    assert row["test_users"] == 50 and row["items"] == 300 and row["batches"] == 4
    assert row["missing_modality"] == {"img_emb": 2, "txt_emb": 2}
    for key in ("eval_s_plain", "eval_s_prism", "time_ratio", "median_round_ratio",
                "peak_mb_plain", "peak_mb_prism", "memory_ratio"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    # scores [16, 301] float32 alone are 18.8 KiB: the peak holds at least one batch's scores
    assert row["peak_mb_plain"] * 1024 ** 2 >= 16 * 301 * 4
    assert row["static_mb_prism"] > row["static_mb_plain"] > 0

    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| dataset | backbone | eval s plain | eval s PRISM | time ratio")
    assert len(table) == 2 and table[1].startswith(f"| {name} | SASRec | ")
    cells = [c.strip() for c in table[1].strip("|").split("|")]
    assert len(cells) == 9
    assert all(float(c) > 0 and math.isfinite(float(c)) for c in cells[2:])
    assert "- device: cpu; threads: 1;" in out
    assert f"- {name}: 50 test users, 300 items, 4 batches" in out
    checks = [line for line in out.splitlines() if line.startswith("target <= 1.1")]
    assert len(checks) == 1 and "time ratio" in checks[0] and "memory ratio" in checks[0]

    with open(out_csv) as f:
        written = list(csv.DictReader(f))
    assert len(written) == 1 and float(written[0]["time_ratio"]) == pytest.approx(row["time_ratio"])
