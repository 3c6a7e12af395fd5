"""run_ablation.py on tiny data: one row per variant, a failing variant reported with its error."""
import csv
import sys

import pytest
import yaml

import run_ablation


def test_ablation_writes_one_row_per_variant_and_reports_failures(tmp_path, tiny, monkeypatch, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    # force one variant to fail
    monkeypatch.setitem(run_ablation.VARIANTS, "uniform", ({"prism_fusion": "broken"}, "forced failure"))
    argv = ["--dataset=tiny", f"--config_files={config_file}", "--seeds", "7",
            "--variants", "full", "none", "uniform", "--out", str(tmp_path / "out"), "--epochs=1",
            "--add_variant", "noise_match", "prism_noise_std=match", "prism_margin=0.5"]
    monkeypatch.setattr(sys, "argv", ["run_ablation.py"] + argv)
    rows = run_ablation.main(argv)
    assert [r["variant"] for r in rows] == ["full", "none", "uniform", "noise_match"]
    assert rows[3]["status"] == "ok"
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "ok"
    assert rows[2]["status"].startswith("failed: ValueError: option prism_fusion must be one of")
    assert rows[1]["valid ndcg@10 vs full %"] == rows[1]["valid ndcg@10 vs full %"]  # a number
    printed = capsys.readouterr().out
    assert "[1/4] variant full" in printed and "| none |" in printed and "failed:" in printed
    md = (tmp_path / "out" / "ablation-PRISM_SASRec-tiny.md").read_text()
    assert md.count("\n") == 2 + 4  # header, separator, one line per variant
    with open(tmp_path / "out" / "ablation-PRISM_SASRec-tiny.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and "test mrr@5" in table[0] and "test mrr@5 std" in table[0]


def test_add_variant_reads_options_like_yaml_and_rejects_bad_specs(monkeypatch):
    parser = run_ablation.argparse.ArgumentParser()
    label, options = run_ablation._parse_extra_variant(
        ["item", "prism_fusion_level=item", "prism_margin=0.5", "prism_aux_loss=false"], parser)
    assert label == "item"
    assert options == {"prism_fusion_level": "item", "prism_margin": 0.5, "prism_aux_loss": False}
    for bad in (["lonely"], ["full", "prism_margin=1"], ["x", "prism_margin"]):
        with pytest.raises(SystemExit):
            run_ablation._parse_extra_variant(bad, parser)
