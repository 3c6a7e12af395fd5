"""benchmarks/bench_time_to_quality.py: time-to-reach on hand-made curves, the comparison
columns, and tiny runs (table, CSV, per-epoch curves, plot, --resume, a failing mode)."""
import csv
import math
import os
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_time_to_quality as bench  # noqa: E402


# --------------------------------------------------------------------------- pure functions


def test_time_to_reach_first_time_at_or_above_target():
    curve = [(10.0, 0.1), (20.0, 0.3), (30.0, 0.25)]
    assert bench.time_to_reach(curve, 0.28) == 20.0
    assert bench.time_to_reach(curve, 0.5) is None
    assert bench.time_to_reach(curve, 0.3) == 20.0  # reaching = equal counts
    assert bench.time_to_reach(curve, 0.05) == 10.0
    assert bench.time_to_reach(curve, 0.25) == 20.0  # the first time, not the last
    assert bench.time_to_reach([], 0.1) is None
    assert bench.time_to_reach([(1.0, math.nan), (2.0, 0.2)], 0.1) == 2.0
    assert bench.time_to_reach(curve, 0.2, bigger=False) == 10.0


def _row(mode, best, wall, best_at=None, status="ok", model="SASRec", settings="{}"):
    return {"dataset": "d", "model": model, "mode": mode, "status": status, "settings": settings,
            "best_valid_ndcg@10": best, "wall_s": wall, "best_at_s": best_at}


def _curve(points):
    return [{"epoch": i, "wall_s": t, "valid_ndcg@10": v} for i, (t, v) in enumerate(points)]


def test_compare_to_reference():
    rows = [_row("last", 0.28, 100.0, best_at=60.0), _row("all-ss", 0.3, 30.0),
            _row("all-ce", 0.25, 30.0), _row("all-ss", 0.9, 5.0, model="Other"),
            _row("all-x", 0.5, 80.0), _row("all-bad", None, None, status="failed: x")]
    curves = {bench.run_key(rows[1]): _curve([(10.0, 0.1), (20.0, 0.3), (30.0, 0.25)]),
              bench.run_key(rows[2]): _curve([(10.0, 0.1), (20.0, 0.2), (30.0, 0.25)]),
              bench.run_key(rows[4]): _curve([(10.0, 0.1), (40.0, 0.28), (80.0, 0.5)])}
    bench.compare_to_reference(rows, curves, target_ratio=0.25)
    last, ss, ce, other, slow, bad = rows
    assert last["reach_last_best_s"] is None and last["reach_ratio"] is None
    assert ss["reach_last_best_s"] == 20.0 and ss["reach_last_best_epoch"] == 1
    assert ss["reach_ratio"] == pytest.approx(0.2) and ss["reach_ratio_target_met"] is True
    assert ss["best_valid_ge_last"] is True
    assert (ss["last_best_valid_ndcg@10"], ss["last_wall_s"], ss["last_best_at_s"]) == (0.28, 100.0, 60.0)
    assert ce["reach_last_best_s"] == "never" and ce["reach_ratio"] is None
    assert ce["reach_ratio_target_met"] is False and ce["best_valid_ge_last"] is False
    assert slow["reach_last_best_s"] == 40.0 and slow["reach_ratio"] == pytest.approx(0.4)
    assert slow["reach_ratio_target_met"] is False and slow["best_valid_ge_last"] is True
    assert other["reach_last_best_s"] is None  # no last run of that model
    assert bad["reach_last_best_s"] is None


# --------------------------------------------------------------------------- tiny runs


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_runs_table_csv_curves_plot_and_resume(tmp_path, tiny, monkeypatch, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny))
    out_dir = tmp_path / "out"
    out_csv, curves_csv, png = out_dir / "ttq.csv", out_dir / "curves.csv", out_dir / "ttq.png"
    common = ["--datasets", "tiny", "--config_files", f"tiny={config_file}", "--models", "SASRec",
              "--epochs", "2", "--threads", "1", "--csv", str(out_csv), "--curves_csv",
              str(curves_csv), "--work_dir", str(tmp_path / "work")]
    argv_before = list(sys.argv)
    rows = bench.main(common + ["--modes", "last", "all-ss", "--plot", str(png)])
    assert sys.argv == argv_before  # restored

    assert [(r["mode"], r["status"]) for r in rows] == [("last", "ok"), ("all-ss", "ok")]
    last, ss = rows
    for r in rows:
        assert r["epochs_run"] == 2 and r["best_epoch"] in (0, 1) and r["seed"] == 2020
        assert 0 < r["best_valid_ndcg@10"] <= 1 and 0 <= r["test_ndcg@10"] <= r["test_hit@10"] <= 1
        assert r["wall_s"] >= r["train_s"] + r["valid_s"] > 0 and r["valid_s"] > 0
        assert r["max_len"] == 8 and r["hidden_size"] == 16 and r["epochs"] == 2
        assert os.path.isfile(r["log_file"])
    assert ss["train_rows"] < last["train_rows"]  # windows instead of prefixes
    assert not [f for f in os.listdir(tmp_path / "work" / "saved") if f.endswith(".pth")]

    # the per-epoch curves: one row per run and epoch, cumulative times, wall counts both
    curves = _read(curves_csv)
    assert list(curves[0]) == bench.CURVE_COLUMNS
    assert [(c["mode"], int(c["epoch"])) for c in curves] == [("last", 0), ("last", 1),
                                                               ("all-ss", 0), ("all-ss", 1)]
    for mode, row in (("last", last), ("all-ss", ss)):
        points = [c for c in curves if c["mode"] == mode]
        walls = [float(c["wall_s"]) for c in points]
        assert walls[0] < walls[1] <= row["wall_s"]
        for c in points:
            assert float(c["wall_s"]) >= float(c["train_s_cum"]) + float(c["valid_s_cum"])
        assert float(points[1]["train_s_cum"]) == pytest.approx(row["train_s"])
        assert float(points[1]["valid_s_cum"]) == pytest.approx(row["valid_s"])
        values = [float(c["valid_ndcg@10"]) for c in points]
        assert row["best_valid_ndcg@10"] == max(values)
        assert row["best_valid_ndcg@10"] == values[row["best_epoch"]]

    # all-ss against last: time to reach last's best, from its own curve
    goal = last["best_valid_ndcg@10"]
    reach = bench.time_to_reach([(float(c["wall_s"]), float(c["valid_ndcg@10"]))
                                 for c in curves if c["mode"] == "all-ss"], goal)
    assert ss["last_best_valid_ndcg@10"] == goal and ss["last_wall_s"] == last["wall_s"]
    if reach is None:
        assert ss["reach_last_best_s"] == "never" and ss["reach_ratio"] is None
    else:
        assert ss["reach_last_best_s"] == pytest.approx(reach)
        assert ss["reach_ratio"] == pytest.approx(reach / last["wall_s"])
        assert ss["reach_ratio_target_met"] == (reach / last["wall_s"] <= 0.25)
    assert ss["best_valid_ge_last"] == (ss["best_valid_ndcg@10"] >= goal)
    assert last["reach_last_best_s"] is None

    # the printed table and the CSV
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(bench.TABLE_HEADER) + " |"
    assert table[1].startswith("| tiny | SASRec | last | 2 | ")
    assert table[2].startswith("| tiny | SASRec | all-ss | 2 | ")
    assert len(table[2].strip("|").split("|")) == len(bench.TABLE_HEADER)
    assert "tiny SASRec all-ss: last's best" in out
    written = _read(out_csv)
    assert list(written[0])[:len(bench.ROW_COLUMNS)] == bench.ROW_COLUMNS
    assert [w["mode"] for w in written] == ["last", "all-ss"]
    assert float(written[1]["best_valid_ndcg@10"]) == ss["best_valid_ndcg@10"]
    assert written[1]["reach_last_best_s"] == str(ss["reach_last_best_s"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume: finished runs are not trained again; a new mode is, and a failing one is a row
    trained = []
    real_train_run = bench.train_run

    def counting_train_run(model, dataset, mode, *args, **kwargs):
        trained.append(mode)
        return real_train_run(model, dataset, mode, *args, **kwargs)

    monkeypatch.setattr(bench, "train_run", counting_train_run)
    rows2 = bench.main(common + ["--resume", "--modes", "last", "all-ss", "all-ce",
                                 "bad:train_positions=all,position_loss=nope"])
    assert trained == ["all-ce", "bad"]
    assert [(r["mode"], r["status"][:6]) for r in rows2] == [
        ("last", "ok"), ("all-ss", "ok"), ("all-ce", "ok"), ("bad", "failed")]
    assert "position_loss" in rows2[3]["status"]
    for before, after in zip(rows, rows2):  # resumed rows come back from the CSV unchanged
        for key in ("best_valid_ndcg@10", "best_epoch", "test_ndcg@10", "test_hit@10", "wall_s"):
            assert after[key] == pytest.approx(before[key]), key
        assert after["reach_last_best_s"] == before["reach_last_best_s"] or (
            after["reach_last_best_s"] == pytest.approx(before["reach_last_best_s"]))
    assert rows2[2]["last_best_valid_ndcg@10"] == goal  # compared with the resumed last run
    assert [c["mode"] for c in _read(curves_csv)] == ["last"] * 2 + ["all-ss"] * 2 + ["all-ce"] * 2

    # again: everything ok is skipped, the failed run is retried
    trained.clear()
    bench.main(common + ["--resume", "--modes", "last", "all-ss", "all-ce",
                         "bad:train_positions=all,position_loss=nope"])
    assert trained == ["bad"]
    # other options are other runs: not skipped
    trained.clear()
    bench.main(common + ["--resume", "--modes", "last", "--hidden_size", "8"])
    assert trained == ["last"]
    assert len(_read(out_csv)) == 5  # the earlier runs are kept in the CSV


def test_missing_s3rec_dataset_is_built_with_atomic_data(tmp_path, monkeypatch):
    from atomic_data import s3rec

    calls = []

    def fake_main(argv):
        calls.append(list(argv))
        out = argv[argv.index("--out") + 1]
        os.makedirs(os.path.join(out, "toys"))
        open(os.path.join(out, "toys", "toys.inter"), "w").close()
        return 0

    monkeypatch.setattr(s3rec, "main", fake_main)
    root = str(tmp_path / "data")
    assert bench.ensure_dataset("toys", [], {"data_path": root}) == {}
    assert calls == [["--name", "toys", "--out", root]]
    assert bench.ensure_dataset("toys", [], {"data_path": root}) == {}  # there now: not rebuilt
    assert len(calls) == 1
    assert bench.ensure_dataset("tiny", [], {}) == {}  # not an S3-Rec dataset
    # without a data_path: the repository's dataset/ folder, passed on absolute
    monkeypatch.setattr(bench, "REPO", str(tmp_path / "repo"))
    default_root = str(tmp_path / "repo" / "dataset")
    assert bench.ensure_dataset("toys", [], {}) == {"data_path": default_root}
    assert calls[1] == ["--name", "toys", "--out", default_root]
    monkeypatch.setattr(s3rec, "main", lambda argv: 2)
    with pytest.raises(SystemExit, match="atomic_data.s3rec"):
        bench.ensure_dataset("sports", [], {"data_path": root})


def test_bad_options_fail_before_training(tmp_path):
    with pytest.raises(SystemExit, match="unknown mode"):
        bench.main(["--datasets", "tiny", "--modes", "nope", "--csv", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="NoSuchModel"):
        bench.main(["--datasets", "tiny", "--models", "NoSuchModel", "--config_files",
                    __file__, "--csv", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()
