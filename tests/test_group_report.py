"""group_report / run_group_report.py: per-group NDCG@10 / HR@10 of several checkpoints."""
import csv
import os
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, tiny_config, write_dataset
from prism_recbole.group_report import (group_report, make_bins, parse_bins, quantile_lows)
from prism_recbole.quick_start import run

sys.path.insert(0, REPO)
import run_group_report  # noqa: E402

N_USERS = 30
MAX_LEN = 8
EXPERTS = ["unique_img_emb", "unique_txt_emb", "synergy", "redundancy"]
NAMES = ["full", "none", "sasrec"]
# item 3 has an empty img_emb cell, item 7 no row in the .item file (misses both modalities)
ITEM_ROWS = {"3": {"img_emb": ""}, "7": None}
MISSING = {"img_emb": {"3", "7"}, "txt_emb": {"7"}}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_inter(data, name="tiny"):
    """{user: [items in time order]} straight from the .inter file."""
    seqs = {}
    with open(os.path.join(data, name, f"{name}.inter")) as f:
        next(f)
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for user, item, ts in sorted(rows, key=lambda r: (r[0], float(r[2]))):
        seqs.setdefault(user, []).append(item)
    return seqs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three tiny 1-epoch checkpoints on one dataset: PRISM_SASRec (adaptive), its
    prism_fusion none variant and SASRec, each in its own folder (RecBole names checkpoints
    by the second).  metric_decimal_place 10: the trainer's results are not rounded to 4."""
    root = tmp_path_factory.mktemp("groups")
    data = write_dataset(str(root / "data"), item_rows=ITEM_ROWS)
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(root)
        for i, (model, extra) in enumerate([("PRISM_SASRec", {"initializer_range": 0.3}),
                                            ("PRISM_SASRec", {"prism_fusion": "none"}),
                                            ("SASRec", {})]):
            config = tiny_config(data, str(root / f"saved{i}"), epochs=1, metric_decimal_place=10,
                                 **extra)
            outs.append(run(model=model, dataset="tiny", config_dict=config))
        report = group_report([o["checkpoint"] for o in outs], names=NAMES,
                              length_bins=[1, 6], csv_path=str(root / "out" / "groups.csv"),
                              users_csv_path=str(root / "out" / "users.csv"),
                              plot_path=str(root / "out" / "groups.png"))
    return data, outs, report


def test_overall_metrics_equal_the_trainers_test_result(trained):
    _, outs, report = trained
    overall = report.rows[0]
    assert overall["kind"] == "all" and overall["n_users"] == N_USERS
    for name, out, ev in zip(NAMES, outs, report.evals):
        assert overall[f"{name}_ndcg@10"] == pytest.approx(out["test_result"]["ndcg@10"], abs=1e-6)
        assert overall[f"{name}_hr@10"] == pytest.approx(out["test_result"]["hit@10"], abs=1e-6)
        assert ev.ndcg.mean() == pytest.approx(out["test_result"]["ndcg@10"], abs=1e-6)
        # NDCG and HR come from one rank per user
        np.testing.assert_array_equal(ev.hit, (ev.ranks <= 10).astype(float))
        np.testing.assert_allclose(ev.ndcg, np.where(ev.ranks <= 10, 1 / np.log2(ev.ranks + 1), 0))
        assert ev.ranks.min() >= 1 and ev.ranks.max() <= 24  # 24 items, padding excluded
    # the models differ: a mix-up of models would show
    assert len({round(overall[f"{n}_ndcg@10"], 8) for n in NAMES}) > 1


def test_valid_split_equals_the_trainers_valid_result(trained):
    _, outs, _ = trained
    report = group_report([o["checkpoint"] for o in outs[:2]], split="valid")
    assert report.names == ["PRISM_SASRec", "PRISM_SASRec-none"]  # default names
    for out, ev in zip(outs, report.evals):  # one epoch: the best valid result is the saved model's
        assert ev.ndcg.mean() == pytest.approx(out["best_valid_result"]["ndcg@10"], abs=1e-6)
    assert "(valid split)" in report.markdown


def test_group_means_weighted_by_size_equal_the_overall_mean(trained):
    _, _, report = trained
    overall = report.rows[0]
    value_columns = [c for c in report.columns[5:] if "/" not in c]
    kinds = sorted({r["kind"] for r in report.rows} - {"all"})
    assert kinds == ["history_length", "target_img_emb", "target_popularity", "target_txt_emb"]
    for kind in kinds:
        rows = [r for r in report.rows if r["kind"] == kind]
        assert sum(r["n_users"] for r in rows) == N_USERS
        for column in value_columns:
            total = sum(r["n_users"] * r[column] for r in rows if r["n_users"])
            assert total / N_USERS == pytest.approx(overall[column], abs=1e-9), (kind, column)
    # the groups are exercised: each kind has at least two non-empty groups
    for kind in kinds:
        assert sum(r["n_users"] > 0 for r in report.rows if r["kind"] == kind) >= 2


def test_group_assignment_matches_a_hand_computation_from_the_inter_file(trained):
    data, _, report = trained
    seqs = read_inter(data)
    # training interactions: each user's items but the last two (valid, test); test = last
    train_counts = Counter(i for items in seqs.values() for i in items[:-2])
    users = read_csv(os.path.join(os.path.dirname(report.paths["csv"]), "users.csv"))
    assert sorted(u["user"] for u in users) == sorted(seqs)
    for u in users:
        items = seqs[u["user"]]
        assert u["target"] == items[-1]
        assert int(u["history_length"]) == min(len(items) - 1, MAX_LEN)
        assert int(u["target_popularity"]) == train_counts[items[-1]]
        for f in ("img_emb", "txt_emb"):
            assert int(u[f"target_missing_{f}"]) == (items[-1] in MISSING[f])
    # a few users by hand: users whose target is cold / misses a modality exist in this data
    assert any(u["target"] in MISSING["img_emb"] for u in users)
    # the bins: length_bins=[1, 6] with MAX_ITEM_LIST_LENGTH 8 -> 1-5, 6-7, 8+ (capped)
    by_kind = {}
    for r in report.rows:
        by_kind.setdefault(r["kind"], []).append(r)
    assert [r["group"] for r in by_kind["history_length"]] == ["1-5", "6-7", "8+"]
    assert [r["group"] for r in by_kind["target_popularity"]] == ["0", "1-4", "5-19", "20+"]
    assert [r["group"] for r in by_kind["target_img_emb"]] == ["missing", "present"]
    lengths = np.array([min(len(seqs[u["user"]]) - 1, MAX_LEN) for u in users])
    pops = np.array([train_counts[seqs[u["user"]][-1]] for u in users])
    ndcg = np.array([float(u["full_ndcg@10"]) for u in users])
    hand = {("history_length", "1-5"): lengths <= 5, ("history_length", "6-7"): (lengths >= 6) & (lengths <= 7),
            ("history_length", "8+"): lengths >= 8, ("target_popularity", "0"): pops == 0,
            ("target_popularity", "1-4"): (pops >= 1) & (pops <= 4),
            ("target_popularity", "5-19"): (pops >= 5) & (pops <= 19),
            ("target_popularity", "20+"): pops >= 20,
            ("target_txt_emb", "missing"): np.array([seqs[u["user"]][-1] == "7" for u in users])}
    rows = {(r["kind"], r["group"]): r for r in report.rows}
    for key, mask in hand.items():
        assert rows[key]["n_users"] == mask.sum(), key
        if mask.any():
            assert rows[key]["full_ndcg@10"] == pytest.approx(ndcg[mask].mean(), abs=1e-9), key


def test_popularity_of_a_checkpoint_trained_on_every_position(trained, tmp_path, monkeypatch):
    """With train_positions: all the training split keeps one window per user; the popularity
    groups must still count every training interaction (they once counted the windows' last
    targets only)."""
    data = trained[0]
    seqs = read_inter(data)
    train_counts = Counter(i for items in seqs.values() for i in items[:-2])
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)
    config = tiny_config(data, str(tmp_path / "saved"), epochs=1, train_positions="all",
                         position_loss="sampled_softmax", MAX_ITEM_LIST_LENGTH=3)
    out = run(model="SASRec", dataset="tiny", config_dict=config)
    group_report([out["checkpoint"]], names=["all"], users_csv_path=str(tmp_path / "users.csv"))
    users = read_csv(str(tmp_path / "users.csv"))
    assert len(users) == len(seqs)
    assert [int(u["target_popularity"]) for u in users] == [
        train_counts[seqs[u["user"]][-1]] for u in users]
    assert max(len(items) for items in seqs.values()) - 3 > 3  # some users have several windows


def test_fusion_weight_columns_sum_to_one_per_group_for_prism_only(trained):
    _, _, report = trained
    full, none, sasrec = report.evals
    assert full.expert_names == EXPERTS and none.weights is None and sasrec.weights is None
    weight_columns = [c for c in report.columns if "_w_" in c]
    assert weight_columns == [f"full_w_{e}" for e in EXPERTS]
    for row in report.rows:
        if row["n_users"]:
            assert sum(row[c] for c in weight_columns) == pytest.approx(1, abs=1e-6)
    # the weights differ between users (the group means are not all 1/K)
    assert np.abs(full.weights - 0.25).max() > 0.01
    assert "### Mean fusion weight per expert: full" in report.markdown


def test_csv_columns_and_values(trained):
    _, _, report = trained
    rows = read_csv(report.paths["csv"])
    expected = (["kind", "group", "lo", "hi", "n_users"]
                + [f"{n}_{m}@10" for n in NAMES for m in ("ndcg", "hr")]
                + ["ndcg@10_full/none", "hr@10_full/none", "ndcg@10_full/sasrec", "hr@10_full/sasrec"]
                + [f"full_w_{e}" for e in EXPERTS])
    assert list(rows[0]) == expected == report.columns
    assert len(rows) == len(report.rows) == 1 + 3 + 4 + 2 + 2
    for written, row in zip(rows, report.rows):
        assert written["group"] == str(row["group"]) and int(written["n_users"]) == row["n_users"]
        for c in expected[5:]:
            if row["n_users"] and not np.isnan(row[c]) and not np.isinf(row[c]):
                assert float(written[c]) == pytest.approx(row[c], abs=1e-9)
        a, b = row["full_ndcg@10"], row["none_ndcg@10"]
        if row["n_users"] and b > 0:
            assert row["ndcg@10_full/none"] == pytest.approx(a / b)
    # the Markdown table has a line per group, and the plot is a PNG
    assert "| all | 30 | " in report.markdown
    assert "| history length 8+ |" in report.markdown and "| img_emb missing |" in report.markdown
    with open(report.paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bins():
    assert parse_bins(["1", "5", "10", "20"]) == [1, 5, 10, 20]
    assert parse_bins("q4") == ("quantiles", 4) and parse_bins(["q3"]) == ("quantiles", 3)
    with pytest.raises(ValueError, match="not an integer"):
        parse_bins(["1", "x"])
    labels = lambda bins: [b.label for b in bins]  # noqa: E731
    assert labels(make_bins([1, 5, 10, 20], 1, cap=50)) == ["1-4", "5-9", "10-19", "20-49", "50+"]
    assert labels(make_bins([1, 5, 10, 20], 1, cap=20)) == ["1-4", "5-9", "10-19", "20+"]
    assert labels(make_bins([5, 10], 1, cap=8)) == ["1-4", "5-7", "8+"]
    assert labels(make_bins([0, 1, 5, 20], 0)) == ["0", "1-4", "5-19", "20+"]
    assert quantile_lows([1, 1, 2, 3, 4, 5, 6, 7], 4) == [1, 3, 5]
    bins = make_bins([0, 1, 5, 20], 0)
    values = np.arange(0, 40)
    assert (sum(b.contains(values).astype(int) for b in bins) == 1).all()


def test_quantile_bins_and_cli(trained, tmp_path, capsys):
    _, outs, _ = trained
    out_csv = tmp_path / "g.csv"
    report = run_group_report.main(["--checkpoints", outs[0]["checkpoint"], outs[2]["checkpoint"],
                                    "--length_bins", "q2", "--popularity_bins", "0", "6",
                                    f"--csv={out_csv}"])
    printed = capsys.readouterr().out
    assert "## Where the gain comes from: PRISM_SASRec vs SASRec on tiny (test split)" in printed
    rows = read_csv(out_csv)
    assert [r["group"] for r in rows if r["kind"] == "target_popularity"] == ["0-5", "6+"]
    lengths = [r for r in rows if r["kind"] == "history_length"]
    assert len(lengths) >= 2 and sum(int(r["n_users"]) for r in lengths) == N_USERS
    assert report.names == ["PRISM_SASRec", "SASRec"]


def test_mismatched_datasets_and_missing_files_are_one_error_line(trained, tmp_path, capsys,
                                                                   monkeypatch):
    _, outs, _ = trained
    other = write_dataset(str(tmp_path / "data"), name="other", n_users=12)
    monkeypatch.chdir(tmp_path)
    wrong = run(model="SASRec", dataset="other",
                config_dict=tiny_config(other, str(tmp_path / "s1"), epochs=1))["checkpoint"]
    with pytest.raises(ValueError, match=r"different datasets: .*: tiny, .*: other"):
        group_report([outs[2]["checkpoint"], wrong])
    # same dataset name, other interactions: the test rows differ
    shifted = write_dataset(str(tmp_path / "data2"), seed=1)
    wrong_rows = run(model="SASRec", dataset="tiny",
                     config_dict=tiny_config(shifted, str(tmp_path / "s2"), epochs=1))["checkpoint"]
    with pytest.raises(ValueError, match="different data: the test splits"):
        group_report([outs[2]["checkpoint"], wrong_rows])
    for argv, message in [
        ([outs[2]["checkpoint"], wrong], "the checkpoints are for different datasets"),
        ([outs[2]["checkpoint"], str(tmp_path / "missing.pth")], "Checkpoint not found"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_group_report.cli(["--checkpoints"] + argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        error_lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and message in error_lines[0]
        assert "Traceback" not in err
    with pytest.raises(ValueError, match="2 names for 1 checkpoints"):
        group_report([outs[2]["checkpoint"]], names=["a", "b"])


def test_interventions_add_columns_of_the_first_checkpoint(trained, tmp_path, capsys):
    _, outs, report = trained
    ivs = ["no_fusion", "swap_fusion", "uniform_gate"]
    out = run_group_report.main(["--checkpoints", outs[0]["checkpoint"], outs[1]["checkpoint"],
                                 "--names", "full", "none", "--length_bins", "1", "6",
                                 "--interventions", *ivs, f"--csv={tmp_path / 'g.csv'}"])
    assert out.names == ["full", "none"] + [f"full-{x}" for x in ivs]
    full, none, off, swap, uniform = out.evals
    # the intact model first, and restored after every intervention
    np.testing.assert_array_equal(full.ranks, report.evals[0].ranks)
    assert out.evals[0].loaded.model.prism.intervention is None
    # each intervention changes the ranking of this model (its z is far from 0, init 0.3)
    for changed in (off, swap, uniform):
        assert (changed.ranks != full.ranks).any()
    assert np.abs(full.weights - 0.25).max() > 0.01
    header = list(read_csv(tmp_path / "g.csv")[0].keys())
    assert "full-no_fusion_ndcg@10" in header and "ndcg@10_full/full-no_fusion" in header
    # the interventions' gate weights would repeat the intact model's: not reported
    assert not [c for c in header if c.startswith("full-") and "_w_" in c]
    assert all(e.weights is None for e in (off, swap, uniform))
    assert "full-swap_fusion" in capsys.readouterr().out


def test_interventions_need_a_prism_model_with_a_gate_first(trained, capsys):
    _, outs, _ = trained
    with pytest.raises(ValueError, match="prism_fusion: none"):
        group_report([outs[1]["checkpoint"]], interventions=["no_fusion"])
    with pytest.raises(ValueError, match="SASRec, not a PRISM model"):
        group_report([outs[2]["checkpoint"]], interventions=["uniform_gate"])
    with pytest.raises(ValueError, match="unknown bogus"):
        group_report([outs[0]["checkpoint"]], interventions=["bogus"])
    with pytest.raises(SystemExit):
        run_group_report.cli(["--checkpoints", outs[0]["checkpoint"], "--interventions", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
