"""The README's result tables are rendered from CSVs by named commands (results_table, goal),
and readme_tables keeps them in step."""
import os

import pytest
from conftest import write_csv

from prism_recbole import goal, readme_tables, results_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ["variant", "model", "options", "seeds", "status", "valid ndcg@10", "valid ndcg@10 std",
          "test hit@10", "test hit@10 std", "test ndcg@10", "test ndcg@10 std", "test ndcg@20",
          "test ndcg@20 std", "s/epoch", "train s", "params"]


def _write(path, rows):
    return write_csv(path, FIELDS, rows)


def _row(variant, model, options, seeds, ndcg, std="", status="ok", train=100.0):
    return {"variant": variant, "model": model, "options": options, "seeds": seeds, "status": status,
            "valid ndcg@10": ndcg + 0.01, "test hit@10": 2 * ndcg, "test ndcg@10": ndcg,
            "test ndcg@10 std": std, "test ndcg@20": ndcg + 0.005, "train s": train}


def _csv(tmp_path, name="c.csv"):
    return _write(tmp_path / name, [
        _row("SASRec", "SASRec", "", 1, 0.04),
        _row("BERT4Rec", "BERT4Rec", "", 1, 0.02),
        _row("MMSR", "MMSR", "", 0, float("nan"), status="failed: out of memory"),
        _row("PRISM_SASRec-none", "PRISM_SASRec",
             "train_positions=all position_loss=sampled_softmax position_sampler=in_batch "
             "train_batch_size=128 prism_fusion=none", 3, 0.05, std=0.0004),
        _row("PRISM_SASRec", "PRISM_SASRec",
             "train_positions=all position_loss=sampled_softmax position_sampler=in_batch "
             "train_batch_size=128", 3, 0.051, std=0.0002, train=182.3),
    ])


def test_the_readme_tables_are_what_their_commands_print():
    text, stale = readme_tables.sync(os.path.join(ROOT, "README.md"), check=True)
    assert "<!-- table: python -m prism_recbole.results_table" in text
    assert stale == [], (f"README.md tables at lines {stale} differ from their commands' output: "
                         f"run python -m prism_recbole.readme_tables README.md")


def test_parse_options_keeps_values_with_spaces():
    assert results_table.parse_options("") == {}
    assert results_table.parse_options("a=1 selected_features=['x', 'y'] c=z") == {
        "a": 1, "selected_features": ["x", "y"], "c": "z"}
    with pytest.raises(ValueError, match="not key=value"):
        results_table.parse_options("nonsense")


@pytest.mark.parametrize("model, options, expected", [
    ("SASRec", {}, "last (RecBole)"),
    ("MMSR", {"embedding_size": 64}, "last (RecBole)"),
    ("BERT4Rec", {}, "masked items on RecBole's prefixes"),
    ("BERT4Rec", {"mask_ratio": 0.6}, "masked items on RecBole's prefixes, mask ratio 0.6"),
    ("BERT4Rec", {"train_positions": "all", "mask_ratio": 0.6},
     "masked items, one window per user, mask ratio 0.6"),
    ("PRISM_SASRec", {"train_positions": "all", "position_loss": "sampled_softmax",
                      "position_sampler": "in_batch"}, "all positions, in-batch"),
    ("SASRec", {"train_positions": "all", "position_loss": "sampled_softmax",
                "position_negatives": 128}, "all positions, sampled softmax, 128 uniform negatives"),
    ("SASRec", {"train_positions": "all"}, "all positions, full softmax"),
    ("SASRec", {"train_positions": "all", "loss_type": "BPR"}, "all positions, bce"),
    ("SASRec", {"train_positions": "all", "position_loss": "gbce"}, "all positions, gbce"),
    ("PRISM_SASRec", {"train_positions": "all", "position_loss": "ce", "prism_freeze_features": True},
     "all positions, full softmax; frozen feature tables"),
    ("PRISM_SASRec", {"prism_freeze_features": False}, "last (RecBole)"),
    ("PRISM_SASRec", {"prism_freeze_features": True, "prism_feature_transform": "whiten"},
     "last (RecBole); frozen feature tables; whitened features"),
    ("PRISM_SASRec", {"prism_feature_transform": "center"}, "last (RecBole); centred features"),
    ("PRISM_SASRec", {"prism_feature_transform": "none"}, "last (RecBole)"),
])
def test_training_mode_in_words(model, options, expected):
    assert results_table.training_mode(model, options) == expected
    # the same words from the CSV's options cell, as experiments.summarize writes it
    cell = " ".join(f"{k}={v}" for k, v in options.items())
    assert results_table.training_mode(model, results_table.parse_options(cell)) == expected


def test_results_table_rows_order_and_std(tmp_path):
    table = results_table.render([_csv(tmp_path), "--first", "PRISM_SASRec", "PRISM_SASRec-none"])
    lines = table.split("\n")
    assert lines[0] == ("| model | training | seeds | valid NDCG@10 | test HR@10 | test NDCG@10 "
                        "| test NDCG@20 | train s |")
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == [
        "PRISM_SASRec", "PRISM_SASRec-none", "SASRec", "BERT4Rec"]  # MMSR failed: not shown
    assert lines[2] == ("| PRISM_SASRec | all positions, in-batch | 3 | 0.0610 | 0.1020 "
                        "| 0.0510 ± 0.0002 | 0.0560 | 182 |")
    assert lines[4] == "| SASRec | last (RecBole) | 1 | 0.0500 | 0.0800 | 0.0400 | 0.0450 | 100 |"
    plain = results_table.render([_csv(tmp_path), "--metrics", "test ndcg@10", "--std"])
    assert plain.split("\n")[0] == "| model | training | seeds | test NDCG@10 | train s |"
    assert "±" not in plain and plain.split("\n")[2].startswith("| SASRec |")


def test_results_table_errors_name_the_file(tmp_path, capsys):
    path = _csv(tmp_path)
    with pytest.raises(SystemExit):
        results_table.render([path, "--first", "STOSA"])
    assert "c.csv: --first STOSA: no finished row" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_table.render([path, "--metrics", "test recall@10"])
    assert "c.csv: no column 'test recall@10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_table.render([str(tmp_path / "missing.csv")])
    assert "no such file" in capsys.readouterr().err


def test_sync_rewrites_a_stale_table_and_check_reports_it(tmp_path, capsys):
    _csv(tmp_path)
    doc = tmp_path / "doc.md"
    marker = "<!-- table: python -m prism_recbole.results_table c.csv --first PRISM_SASRec -->"
    doc.write_text(f"# Results\n\ntext\n\n{marker}\n| old | table |\n|---|---|\n| 1 | 2 |\n\nafter\n")
    with pytest.raises(SystemExit) as e:
        readme_tables.main([str(doc), "--check"])
    assert e.value.code == 1
    assert "stale tables at line 6" in capsys.readouterr().err
    assert "| old | table |" in doc.read_text()  # --check does not write
    assert readme_tables.main([str(doc)]) == [6]
    text = doc.read_text()
    expected = results_table.render([str(tmp_path / "c.csv"), "--first", "PRISM_SASRec"])
    assert text == f"# Results\n\ntext\n\n{marker}\n{expected}\n\nafter\n"
    assert readme_tables.main([str(doc), "--check"]) == []
    assert "every marked table is up to date" in capsys.readouterr().out


def test_sync_renders_goal_tables_too(tmp_path, capsys):
    _csv(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- table: python -m prism_recbole.goal c.csv --expected SASRec MMSR -->\n|x|\n")
    readme_tables.main([str(doc)])
    capsys.readouterr()
    assert doc.read_text() == ("<!-- table: python -m prism_recbole.goal c.csv --expected SASRec MMSR -->\n"
                               + goal.render([str(tmp_path / "c.csv"), "--expected", "SASRec", "MMSR"]) + "\n")
    goal.main([str(tmp_path / "c.csv"), "--expected", "SASRec", "MMSR"])
    assert "| c.csv | 0.0510 (3) | SASRec 0.0400 (1) | 1.275 met |" in capsys.readouterr().out


@pytest.mark.parametrize("body, message", [
    ("<!-- table: python -m prism_recbole.results_table c.csv -->\n\n| a |\n", "doc.md:1: no table"),
    ("x\n<!-- table: python -m os.system rm -->\n| a |\n", "doc.md:2: os.system is not a table command"),
    ("<!-- table: python -m prism_recbole.results_table missing.csv -->\n| a |\n",
     "doc.md:1: prism_recbole.results_table missing.csv: "),
    ("<!-- table: python -m prism_recbole.goal c.csv --pairs 'A -->\n| a |\n", "doc.md:1: cannot parse"),
])
def test_bad_markers_name_the_line(tmp_path, capsys, body, message):
    _csv(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(body)
    with pytest.raises(SystemExit) as e:
        readme_tables.main([str(doc)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert doc.read_text() == body
