"""fusion_report / run_fusion_report.py: per-user gate weights of a checkpoint on its test users."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config, write_dataset
from prism_recbole.fusion_report import TIE, fusion_report, length_buckets
from prism_recbole.config import Config
from prism_recbole.quick_start import LoadedModel, build_model, load_data, load_model, run

sys.path.insert(0, REPO)
import run_fusion_report  # noqa: E402

N_USERS = 30  # write_dataset's default: every user has a test interaction
EXPERTS = ["unique_img_emb", "unique_txt_emb", "synergy", "redundancy"]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def split_inputs(loaded):
    """The test split's input sequences, straight from its dataset (not via the report)."""
    ds = loaded.test_data._dataset
    m = loaded.model
    users = ds.id2token(ds.uid_field, ds.inter_feat[ds.uid_field].numpy())
    return [str(u) for u in users], ds.inter_feat[m.ITEM_SEQ], ds.inter_feat[m.ITEM_SEQ_LEN]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny PRISM_SASRec checkpoint.  initializer_range 0.3 makes the gate far from
    uniform after one epoch, so users get clearly different weights (a row mix-up shows)."""
    root = tmp_path_factory.mktemp("fusion")
    data = write_dataset(str(root / "data"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(root)
        out = run(model="PRISM_SASRec", dataset="tiny",
                  config_dict=tiny_config(data, str(root / "saved"), epochs=1, initializer_range=0.3))
        report = fusion_report(out["checkpoint"], str(root / "report"))
    return out["checkpoint"], report


def test_users_csv_has_one_row_per_test_user_with_weights_summing_to_one(trained):
    checkpoint, report = trained
    rows = read_csv(report.paths["users_csv"])
    assert list(rows[0]) == ["user", "history_length", "bucket"] + [f"w_{e}" for e in EXPERTS] + ["argmax"]
    users, _, lengths = split_inputs(load_model(checkpoint))
    assert len(users) == N_USERS
    assert sorted(r["user"] for r in rows) == sorted(users)  # each test user once
    expected_length = dict(zip(users, lengths.tolist()))
    for r in rows:
        w = np.array([float(r[f"w_{e}"]) for e in EXPERTS])
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-5
        assert int(r["history_length"]) == expected_length[r["user"]]
        assert r["argmax"] == EXPERTS[int(w.argmax())]
    # the returned arrays are what was written
    assert report.users == [r["user"] for r in rows]
    np.testing.assert_allclose(report.weights, [[float(r[f"w_{e}"]) for e in EXPERTS] for r in rows],
                               rtol=0, atol=1e-9)


def test_weights_are_what_the_models_own_forward_gives_each_user(trained):
    checkpoint, report = trained
    loaded = load_model(checkpoint)
    model = loaded.model
    by_user = {r["user"]: np.array([float(r[f"w_{e}"]) for e in EXPERTS])
               for r in read_csv(report.paths["users_csv"])}
    users, seqs, lengths = split_inputs(loaded)
    direct, from_layer, in_train_mode = [], [], []
    with torch.no_grad():
        for i in range(len(users)):  # one user at a time: no batching effects
            seq, length = seqs[i:i + 1], lengths[i:i + 1]
            model.eval()
            model.prism_gate_weights = None
            model.forward(seq, length)
            direct.append(model.prism_gate_weights[0].double().numpy())
            out = model.prism(seq, model.item_embedding(seq), model.prism_pool_mask(seq, length))
            from_layer.append(out.gate_weights[0].double().numpy())
            model.train()
            torch.manual_seed(i)
            model.forward(seq, length)
            in_train_mode.append(model.prism_gate_weights[0].double().numpy())
    model.eval()
    reported = np.array([by_user[u] for u in users])
    np.testing.assert_allclose(reported, np.array(direct), rtol=0, atol=1e-6)
    np.testing.assert_allclose(reported, np.array(from_layer), rtol=0, atol=1e-6)
    # the comparison can fail: users differ clearly, and train mode (gate dropout) differs
    assert np.abs(reported - reported.mean(0)).max() > 0.05
    assert np.abs(reported - np.array(in_train_mode)).max() > 1e-3


def test_summary_equals_the_users_csv_recomputed_independently(trained):
    _, report = trained
    users = read_csv(report.paths["users_csv"])
    summary = read_csv(report.paths["summary_csv"])
    assert summary[0]["group"] == "all" and int(summary[0]["n_users"]) == N_USERS
    length = np.array([int(u["history_length"]) for u in users])
    weights = {e: np.array([float(u[f"w_{e}"]) for u in users]) for e in EXPERTS}
    best = np.array([u["argmax"] for u in users])
    for row, returned in zip(summary, report.summary):
        if row["group"] == "all":
            mask = np.ones(len(users), bool)
        else:
            mask = (length >= int(row["lo"])) & (length <= int(row["hi"]))
            assert all(u["bucket"] == row["group"] for u, m in zip(users, mask) if m)
        assert int(row["n_users"]) == mask.sum() == returned["n_users"]
        if not mask.any():
            continue
        for e in EXPERTS:
            assert float(row[f"mean_{e}"]) == pytest.approx(weights[e][mask].mean(), abs=1e-7)
            assert float(row[f"share_{e}"]) == pytest.approx((best[mask] == e).mean(), abs=1e-7)
            assert returned[f"mean_{e}"] == pytest.approx(weights[e][mask].mean(), abs=1e-7)
        assert sum(float(row[f"share_{e}"]) for e in EXPERTS) + float(row["share_tie"]) == pytest.approx(1)
    # the Markdown shows the same numbers, and what the lengths mean
    md = open(report.paths["summary_md"], encoding="utf-8").read()
    assert md == report.markdown
    assert f"| all | {N_USERS} | " + " | ".join(f"{weights[e].mean():.4f}" for e in EXPERTS) + " |" in md
    assert "capped at MAX_ITEM_LIST_LENGTH = 8" in md


def test_buckets_partition_the_users_and_the_lengths(trained):
    _, report = trained
    users = read_csv(report.paths["users_csv"])
    buckets = [r for r in read_csv(report.paths["summary_csv"]) if r["group"] != "all"]
    assert [b["group"] for b in buckets] == ["1-5", "6-7", "8+ (capped)"]
    assert sum(int(b["n_users"]) for b in buckets) == N_USERS
    for u in users:
        n = int(u["history_length"])
        owners = [b["group"] for b in buckets if int(b["lo"]) <= n <= int(b["hi"])]
        assert owners == [u["bucket"]]
    assert sum(int(b["n_users"]) > 0 for b in buckets) >= 2  # the split is exercised
    for max_len, labels in [(50, ["1-5", "6-10", "11-20", "21-49", "50+ (capped)"]),
                            (20, ["1-5", "6-10", "11-19", "20+ (capped)"]),
                            (5, ["1-4", "5+ (capped)"]), (1, ["1+ (capped)"])]:
        got = length_buckets(max_len)
        assert [b.label for b in got] == labels
        covered = [n for b in got for n in range(b.lo, b.hi + 1)]
        assert covered == list(range(1, max_len + 1))  # disjoint, in order, no gap


def test_plot_is_a_valid_png(trained):
    _, report = trained
    path = report.paths["plot"]
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400


def test_models_without_a_gate_are_refused_clearly(tiny, tmp_path):
    sasrec = run(model="SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))["checkpoint"]
    with pytest.raises(ValueError, match=r"model SASRec has no fusion gate; .*PRISM_SASRec.*MMSR"):
        fusion_report(sasrec, str(tmp_path / "a"))
    none = run(model="PRISM_SASRec", dataset="tiny",
               config_dict=dict(tiny, epochs=1, prism_fusion="none"))["checkpoint"]
    no_gate = "prism_fusion: none .*no experts and no gate, so there are no fusion weights"
    with pytest.raises(ValueError, match=no_gate):
        fusion_report(none, str(tmp_path / "b"))
    # the model itself is checked too, not only the stored options
    config = Config(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, prism_fusion="none"))
    dataset, train_data, valid_data, test_data = load_data(config)
    model = build_model(config, train_data).eval()
    loaded = LoadedModel(config, model, dataset, train_data, valid_data, test_data, "none.pth")
    with pytest.raises(ValueError, match=no_gate):
        fusion_report(loaded, str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_uniform_fusion_reports_exactly_one_over_k_with_a_note(tiny, tmp_path):
    out = run(model="PRISM_SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1, prism_fusion="uniform"))
    report = fusion_report(out["checkpoint"], str(tmp_path / "u"))
    assert report.fusion == "uniform" and report.expert_names == EXPERTS
    assert (report.weights == np.float32(1 / 4)).all()
    assert report.argmax == [TIE] * N_USERS
    assert "uniform has no gate" in report.markdown
    assert report.summary[0]["share_tie"] == 1.0


def test_mmsr_update_gate_per_user(tiny, tmp_path):
    out = run(model="MMSR", dataset="tiny", config_dict=dict(tiny, epochs=1))
    report = fusion_report(out["checkpoint"], str(tmp_path / "m"))
    names = ["homo_then_hetero", "hetero_then_homo"]
    assert report.expert_names == names and len(report.users) == N_USERS
    rows = {r["user"]: np.array([float(r[f"w_{n}"]) for n in names])
            for r in read_csv(report.paths["users_csv"])}
    loaded = load_model(out["checkpoint"])
    users, seqs, lengths = split_inputs(loaded)
    with torch.no_grad():
        for i, user in enumerate(users):
            loaded.model.forward(seqs[i:i + 1], lengths[i:i + 1])
            np.testing.assert_allclose(rows[user], loaded.model.mmsr_gate_weights[0].double().numpy(),
                                       rtol=0, atol=1e-6)
            assert abs(rows[user].sum() - 1) < 1e-5


def test_cli_writes_the_files(trained, tmp_path):
    checkpoint, _ = trained
    out_dir = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_fusion_report.py"), f"--checkpoint={checkpoint}",
         f"--out={out_dir}", "--buckets", "3", "6", "--prefix=r"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out_dir)) == ["r.png", "r.summary.csv", "r.summary.md", "r.users.csv"]
    assert "## Fusion weights: PRISM_SASRec on tiny" in proc.stdout
    groups = [r["group"] for r in read_csv(out_dir / "r.summary.csv")]
    assert groups == ["all", "1-3", "4-6", "7", "8+ (capped)"]
    assert len(read_csv(out_dir / "r.users.csv")) == N_USERS


def test_cli_errors_are_one_error_line_and_exit_code_2(tiny, tmp_path, capsys):
    sasrec = run(model="SASRec", dataset="tiny", config_dict=dict(tiny, epochs=1))["checkpoint"]
    for argv, message in [([f"--checkpoint={sasrec}"], "model SASRec has no fusion gate"),
                          ([f"--checkpoint={tmp_path / 'missing.pth'}"], "Checkpoint not found")]:
        with pytest.raises(SystemExit) as exit_info:
            run_fusion_report.cli(argv + [f"--out={tmp_path / 'x'}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        error_lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and message in error_lines[0]
        assert "Traceback" not in err
