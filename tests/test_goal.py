"""prism_recbole.goal: ratios to the best baseline and to the features-only variant."""

import pytest
from conftest import write_csv

from prism_recbole import goal

FIELDS = ["variant", "model", "options", "seeds", "status", "valid ndcg@10", "test ndcg@10", "test ndcg@10 std"]


def _write(path, rows):
    return write_csv(path, FIELDS, rows)


def _rows():
    return [
        {"variant": "PRISM_SASRec", "seeds": 3, "status": "ok", "test ndcg@10": 0.0600},
        {"variant": "PRISM_SASRec-none", "seeds": 3, "status": "ok", "test ndcg@10": 0.0500},
        {"variant": "PRISM_GRU4Rec", "seeds": 1, "status": "ok", "test ndcg@10": 0.0900},  # not a baseline
        {"variant": "FDSA_MM", "seeds": 2, "status": "ok", "test ndcg@10": 0.0540},
        {"variant": "SASRec", "seeds": 1, "status": "ok", "test ndcg@10": 0.0400},
        {"variant": "MMSR", "seeds": 0, "status": "no run"},
    ]


def test_ratios_best_baseline_excludes_prism_rows(tmp_path):
    row = goal.goal_row(_write(tmp_path / "c.csv", _rows()), "test ndcg@10", "PRISM_SASRec", "PRISM_SASRec-none")
    assert row["best"] == "FDSA_MM" and row["best_seeds"] == 2
    assert row["best_ratio"] == pytest.approx(0.06 / 0.054)
    assert row["own_ratio"] == pytest.approx(1.2)
    assert row["best_met"] is True and row["own_met"] is True
    assert row["not run"] == ["MMSR"]


def test_goal_not_met_and_markdown(tmp_path, capsys):
    rows = _rows()
    rows[0]["test ndcg@10"] = 0.0510
    path = _write(tmp_path / "comparison-toys.csv", rows)
    out = goal.main([path])
    assert out[0]["best_met"] is False and out[0]["own_met"] is False  # 0.944 and 1.02
    printed = capsys.readouterr().out
    assert "| comparison-toys.csv | 0.0510 (3) | FDSA_MM 0.0540 (2) | 0.944 not met | 0.0500 (3) | 1.020 not met | MMSR |" in printed


def test_bad_input_names_file_and_column(tmp_path, capsys):
    path = _write(tmp_path / "c.csv", _rows())
    with pytest.raises(SystemExit):
        goal.main([path, "--metric", "test hit@10"])
    assert "c.csv: no column 'test hit@10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        goal.main([path, "--model", "STOSA"])
    assert "no finished row 'STOSA'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        goal.main([str(tmp_path / "missing.csv")])
    assert "no such file" in capsys.readouterr().err


def test_pairs_are_chosen_on_validation_not_on_test(tmp_path, capsys):
    rows = _rows()
    rows[0]["valid ndcg@10"] = 0.070
    rows += [
        # better on test, worse on validation: must not be chosen
        {"variant": "PRISM_SASRec-last", "seeds": 1, "status": "ok", "valid ndcg@10": 0.069, "test ndcg@10": 0.0900},
        {"variant": "PRISM_SASRec-none-last", "seeds": 1, "status": "ok", "valid ndcg@10": 0.060, "test ndcg@10": 0.0450},
        {"variant": "PRISM_SASRec-frozen", "seeds": 1, "status": "ok", "valid ndcg@10": 0.071, "test ndcg@10": 0.0550},
        {"variant": "PRISM_SASRec-none-frozen", "seeds": 1, "status": "ok", "valid ndcg@10": 0.070, "test ndcg@10": 0.0500},
    ]
    path = _write(tmp_path / "comparison-yelp.csv", rows)
    out = goal.main([path, "--pairs", "PRISM_SASRec=PRISM_SASRec-none", "PRISM_SASRec-last=PRISM_SASRec-none-last",
                     "PRISM_SASRec-frozen=PRISM_SASRec-none-frozen", "PRISM_SASRec-gone=PRISM_SASRec-none-gone"])
    row = out[0]
    assert (row["label"], row["features_only"]) == ("PRISM_SASRec-frozen", "PRISM_SASRec-none-frozen")
    assert row["best_ratio"] == pytest.approx(0.055 / 0.054) and row["own_ratio"] == pytest.approx(1.1)
    printed = capsys.readouterr().out
    assert "model chosen on valid ndcg@10:" in printed
    assert "| PRISM_SASRec-frozen 0.0550 (1) | FDSA_MM 0.0540 (2) |" in printed
    assert "| PRISM_SASRec-none-frozen 0.0500 (1) |" in printed
    with pytest.raises(SystemExit):
        goal.main([path, "--pairs", "PRISM_SASRec"])
    assert "is not MODEL=FEATURES_ONLY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        goal.main([path, "--pairs", "A=B"])
    assert "none of the --pairs models has a finished row (A)" in capsys.readouterr().err


def test_expected_rows_without_a_row_are_listed_as_not_run(tmp_path, capsys):
    path = _write(tmp_path / "comparison-yelp.csv", _rows())
    goal.main([path, "--expected", "SASRec", "BERT4Rec", "MMSR", "FDSA"])
    printed = capsys.readouterr().out
    # MMSR has a "no run" row, BERT4Rec and FDSA have no row at all; SASRec ran
    assert printed.rstrip().endswith("| MMSR, BERT4Rec, FDSA |")
    row = goal.goal_row(path, "test ndcg@10", "PRISM_SASRec", "PRISM_SASRec-none")
    assert row["not run"] == ["MMSR"]  # without --expected only the CSV's own "no run" rows
