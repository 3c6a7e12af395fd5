"""run_comparison.py on tiny data: one row per model, mean ± std over seeds, a failing model
reported with its error, a PNG chart, and model specs with options."""
import csv
import math
import os
import statistics
import sys

import pytest
import yaml

import run_comparison
from prism_recbole.experiments import parse_model_spec


def test_comparison_table_chart_and_failures(tmp_path, tiny, monkeypatch, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    argv = ["--dataset=tiny", f"--config_files={config_file}", "--seeds", "7", "8",
            "--models", "PRISM_SASRec", "SASRec", "NoSuchModel", "PRISM_SASRec:prism_fusion=none",
            "--reference", "SASRec", "--out", str(tmp_path / "out"), "--epochs=1"]
    monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
    rows = run_comparison.main(argv)
    assert [r["variant"] for r in rows] == ["PRISM_SASRec", "SASRec", "NoSuchModel",
                                            "PRISM_SASRec:prism_fusion=none"]
    assert [r["status"] for r in rows][:2] == ["ok", "ok"] and rows[3]["status"] == "ok"
    assert rows[2]["status"].startswith("failed:") and "NoSuchModel" in rows[2]["status"]
    assert rows[0]["seeds"] == 2 and rows[0]["params"] > rows[1]["params"]
    assert rows[3]["options"] == "prism_fusion=none" and rows[3]["params"] < rows[0]["params"]

    with open(tmp_path / "out" / "comparison-tiny.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    # every metric of the config, on both splits, with its std
    for split in ("valid", "test"):
        for name in ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@5", "mrr@10"):
            assert f"{split} {name}" in table[0] and f"{split} {name} std" in table[0]
    # the change against the reference is computed from the two means
    prism, sasrec = rows[0], rows[1]
    expected = 100 * (prism["test ndcg@10"] - sasrec["test ndcg@10"]) / sasrec["test ndcg@10"]
    assert prism["test ndcg@10 vs SASRec %"] == pytest.approx(expected)
    assert float(table[0]["s/epoch"]) > 0

    printed = capsys.readouterr().out
    assert "[1/8] variant PRISM_SASRec (PRISM_SASRec), seed 7" in printed
    assert "[2/8] variant SASRec (SASRec), seed 7" in printed  # seed-major order
    assert "[7/8] variant NoSuchModel" not in printed  # a failed model is not retried
    assert "failed:" in printed and "Chart:" in printed
    md = (tmp_path / "out" / "comparison-tiny.md").read_text()
    assert "### Test" in md and "### Valid" in md and md.count("| NoSuchModel |") == 2
    png = (tmp_path / "out" / "comparison-tiny.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_std_over_seeds_is_that_of_the_single_runs(tmp_path, tiny, monkeypatch):
    from prism_recbole.quick_start import run

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    singles = [run(model="SASRec", dataset="tiny", config_file_list=[str(config_file)],
                   config_dict={"seed": seed})["test_result"]["ndcg@10"] for seed in (3, 4)]
    argv = ["--dataset=tiny", f"--config_files={config_file}", "--seeds", "3", "4",
            "--models", "SASRec", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
    row = run_comparison.main(argv)[0]
    assert row["test ndcg@10"] == pytest.approx(statistics.mean(singles))
    assert row["test ndcg@10 std"] == pytest.approx(statistics.stdev(singles))


def test_model_specs_and_bad_arguments(monkeypatch, tmp_path):
    spec = parse_model_spec("PRISM_SASRec:prism_experts=[unique, synergy],prism_margin=0.5")
    assert spec.model == "PRISM_SASRec"
    assert spec.options == {"prism_experts": ["unique", "synergy"], "prism_margin": 0.5}
    with pytest.raises(ValueError, match="not key=value"):
        parse_model_spec("SASRec:oops")
    for argv in (["--models", "SASRec", "SASRec"], ["--models", "SASRec", "--reference", "GRU4Rec"]):
        monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
        with pytest.raises(SystemExit):
            run_comparison.main(argv)
    with pytest.raises(ValueError, match="--metric"):
        run_comparison._metric_column("train:ndcg@10", [])
    assert run_comparison._metric_column("hit@10", []) == "test hit@10"


def test_interrupted_comparison_leaves_the_table_of_finished_runs(tmp_path, tiny, monkeypatch):
    import prism_recbole.quick_start as quick_start

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    real_run, calls = quick_start.run, []

    def run_then_stop(**kwargs):
        calls.append(kwargs["config_dict"]["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(**kwargs)

    monkeypatch.setattr(quick_start, "run", run_then_stop)
    argv = ["--dataset=tiny", f"--config_files={config_file}", "--seeds", "1", "2",
            "--models", "SASRec", "GRU4Rec", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
    with pytest.raises(KeyboardInterrupt):
        run_comparison.main(argv)
    assert calls == [1, 1, 2]
    with open(tmp_path / "out" / "comparison-tiny.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["variant"], r["seeds"], r["status"]) for r in table] == [("SASRec", "1", "ok"), ("GRU4Rec", "1", "ok")]
    assert "seeds 1)" in (tmp_path / "out" / "comparison-tiny.md").read_text()


def test_labels_and_resume_build_one_table_from_several_invocations(tmp_path, tiny, monkeypatch):
    """An interrupted comparison resumed with --resume runs only what is missing (the logged
    runs are not run again and give the same numbers), a second invocation adds seeds and a
    model to the same table, and a label reused with other options is an error."""
    import prism_recbole.quick_start as quick_start

    spec = parse_model_spec("none=PRISM_SASRec:prism_fusion=none")
    assert (spec.label, spec.model, spec.options) == ("none", "PRISM_SASRec", {"prism_fusion": "none"})
    with pytest.raises(ValueError, match="empty label"):
        parse_model_spec("=SASRec")

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    real_run, calls = quick_start.run, []

    def counting_run(**kwargs):
        calls.append((kwargs["model"], kwargs["config_dict"]["seed"]))
        if len(calls) == 2 and stop_at_second:
            raise KeyboardInterrupt
        return real_run(**kwargs)

    monkeypatch.setattr(quick_start, "run", counting_run)
    out = tmp_path / "out"
    base = ["--dataset=tiny", f"--config_files={config_file}", "--out", str(out)]

    def invoke(*extra):
        argv = base + list(extra)
        monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
        return run_comparison.main(argv)

    stop_at_second = True
    with pytest.raises(KeyboardInterrupt):
        invoke("--seeds", "1", "--models", "sas=SASRec", "gru=GRU4Rec")
    stop_at_second = False
    first = calls[:]
    rows = invoke("--seeds", "1", "--models", "sas=SASRec", "gru=GRU4Rec", "--resume")
    assert calls[len(first):] == [("GRU4Rec", 1)]  # SASRec seed 1 came from the log
    assert [(r["variant"], r["seeds"]) for r in rows] == [("sas", 1), ("gru", 1)]
    sas_seed1 = rows[0]["test ndcg@10"]
    assert rows[0]["train s"] > 0

    calls.clear()
    rows = invoke("--seeds", "1", "2", "--models", "sas=SASRec", "--resume")
    assert calls == [("SASRec", 2)]
    # the rows keep the log's order: adding seeds to one model does not reorder the table
    assert [(r["variant"], r["seeds"]) for r in rows] == [("sas", 2), ("gru", 1)]
    single2 = real_run(model="SASRec", dataset="tiny", config_file_list=[str(config_file)],
                       config_dict={"seed": 2})["test_result"]["ndcg@10"]
    assert rows[0]["test ndcg@10"] == pytest.approx((sas_seed1 + single2) / 2)

    with pytest.raises(ValueError, match="label 'sas' was run with SASRec"):
        invoke("--seeds", "1", "--models", "sas=SASRec:hidden_size=8", "--resume")
    # without --resume a comparison starts a fresh log
    calls.clear()
    rows = invoke("--seeds", "1", "--models", "sas=SASRec")
    assert calls == [("SASRec", 1)] and [r["variant"] for r in rows] == ["sas"]
    (out / "comparison-tiny-runs.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="comparison-tiny-runs.jsonl, line 1"):
        invoke("--seeds", "1", "--models", "sas=SASRec", "--resume")


def test_runs_log_with_one_label_for_two_option_sets_is_an_error(tmp_path):
    import json

    from prism_recbole.experiments import read_runs_log

    run = {"best_valid_result": {"ndcg@10": 0.1}, "test_result": {"ndcg@10": 0.1}, "seed": 1}
    log = tmp_path / "runs.jsonl"
    log.write_text(json.dumps(dict(run, label="a", model="SASRec", options={})) + "\n"
                   + json.dumps(dict(run, label="a", model="SASRec", options={"hidden_size": 8})) + "\n")
    with pytest.raises(ValueError, match=r"runs.jsonl, line 2: label 'a' was run with SASRec \{\}"):
        read_runs_log(str(log))


def test_a_models_own_option_wins_over_a_shared_one(tmp_path, tiny, monkeypatch):
    """RecBole gives command-line options priority over config_dict: a shared --key=value must
    not silently replace a model spec's own value of that key (it once did)."""
    import prism_recbole.quick_start as quick_start

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    seen, real_run = {}, quick_start.run

    def recording_run(**kwargs):
        out = real_run(**kwargs)
        seen[kwargs["config_dict"].get("hidden_size")] = out["n_params"]
        return out

    monkeypatch.setattr(quick_start, "run", recording_run)
    argv = ["--dataset=tiny", f"--config_files={config_file}", "--seeds", "1", "--out",
            str(tmp_path / "out"), "--hidden_size=8", "--learning_rate=1e-3",
            "--models", "small=SASRec", "big=SASRec:hidden_size=16", "--table_metrics", "NDCG@10"]
    monkeypatch.setattr(sys, "argv", ["run_comparison.py"] + argv)
    rows = run_comparison.main(argv)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    md = (tmp_path / "out" / "comparison-tiny.md").read_text()
    assert "test ndcg@10" in md and "valid ndcg@10" in md and "hit@10" not in md
    with open(tmp_path / "out" / "comparison-tiny.csv") as f:
        assert "test hit@10" in next(csv.reader(f))  # the CSV keeps every metric
    assert set(seen) == {8, 16} and rows[1]["params"] > rows[0]["params"]
    from prism_recbole.cli import read_value

    assert read_value("1e-3") == 0.001 and read_value("[attrs]") == ["attrs"] and read_value("x") == "x"


def test_plot_names_the_seed_count_when_rows_differ(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prism_recbole.experiments import plot_metric

    seen = []
    real_close = plt.close

    def close(fig=None):
        if fig is not None:
            seen.append([t.get_text() for t in fig.axes[0].get_xticklabels()])
        real_close(fig)

    monkeypatch.setattr(plt, "close", close)
    rows = [{"variant": "a", "seeds": 3, "test ndcg@10": 0.05, "test ndcg@10 std": 0.001},
            {"variant": "b", "seeds": 1, "test ndcg@10": 0.04, "test ndcg@10 std": math.nan}]
    path = plot_metric(rows, "test ndcg@10", str(tmp_path / "c.png"))
    assert os.path.getsize(path) > 0
    assert seen[-1] == ["a (3 seeds)", "b (1 seed)"]
    plot_metric([dict(r, seeds=2) for r in rows], "test ndcg@10", str(tmp_path / "d.png"))
    assert seen[-1] == ["a", "b"]


def test_times_come_from_one_kind_of_machine(tmp_path):
    """A row whose seeds ran on the CPU and on a GPU is timed on its CPU runs; a row that ran on
    a GPU only names the GPU next to its times (runs logged without a device ran on the CPU)."""
    from prism_recbole.experiments import (Variant, append_run, markdown_table, read_runs_log,
                                           summarize, write_tables)
    from prism_recbole.results_table import markdown as compact, read_rows

    def run(seed, epochs, device=None):
        out = {"best_valid_result": {"ndcg@10": 0.1}, "test_result": {"ndcg@10": 0.1},
               "n_params": 10, "epoch_times": epochs, "wall_s": sum(epochs), "seed": seed}
        if device:
            out["device"] = device
        return out

    log = tmp_path / "runs.jsonl"
    mixed, gpu = Variant("mixed", "SASRec"), Variant("gpu", "BERT4Rec")
    append_run(str(log), mixed, run(1, [100.0, 100.0]))  # an old record: no device
    append_run(str(log), mixed, run(2, [5.0, 5.0], "NVIDIA H200"))
    append_run(str(log), gpu, run(1, [3.0], "NVIDIA H200"))
    results = read_runs_log(str(log))
    rows, names = summarize(results)
    by = {r["variant"]: r for r in rows}
    assert (by["mixed"]["timed on"], by["mixed"]["train s"], by["mixed"]["s/epoch"]) == ("cpu", 200.0, 100.0)
    assert by["mixed"]["devices"] == "cpu 1, NVIDIA H200 1" and by["mixed"]["seeds"] == 2
    assert (by["gpu"]["timed on"], by["gpu"]["train s"]) == ("NVIDIA H200", 3.0)
    table = markdown_table(rows, names)
    assert "| 3 (NVIDIA H200) |" in table and "| 200 |" in table
    write_tables(rows, names, str(tmp_path), "t")
    text = compact(read_rows(str(tmp_path / "t.csv"), metrics=["test ndcg@10"]), metrics=["test ndcg@10"])
    assert "| 3 (NVIDIA H200) |" in text and "| 200 |" in text
