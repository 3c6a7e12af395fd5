"""Shared fixtures: tiny atomic datasets written by the tests themselves (no network)."""
import os
import sys

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import prism_recbole  # noqa: E402,F401  (shims first)

DIMS = {"img_emb": 8, "txt_emb": 6}


def write_csv(path, fields, rows):
    """A CSV with columns ``fields`` (e.g. a run_comparison CSV); a row's missing cells are empty."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields})
    return str(path)


def item_vector(token, field):
    """A deterministic, distinct vector per (item token, field)."""
    seed = int(token) * 7 + (0 if field == "img_emb" else 3)
    return np.random.default_rng(seed).normal(size=DIMS[field]).round(5)


def fmt(vec):
    return " ".join(f"{v:.6g}" for v in vec)


def write_dataset(root, name="tiny", n_users=30, n_items=24, seed=0, item_rows=None,
                  extra_item_lines=(), header=None, inter_items=None):
    """Write ``root/name/name.inter`` and ``.item``; returns ``root``.

    ``item_rows``: dict token -> {field: cell text} overriding the generated cells (None = no
    row for that token).  ``extra_item_lines``: raw lines appended to the .item file.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        n = int(rng.integers(6, 12))
        items = inter_items(u, n, rng) if inter_items else rng.choice(np.arange(1, n_items + 1), size=n)
        for t, i in enumerate(items):
            lines.append(f"{u}\t{i}\t{1000 * u + t}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    item_rows = dict(item_rows or {})
    lines = [header or "item_id:token\timg_emb:float_seq\ttxt_emb:float_seq"]
    for i in range(1, n_items + 1):
        token = str(i)
        row = item_rows.get(token, {})
        if row is None:
            continue
        img = row.get("img_emb", fmt(item_vector(token, "img_emb")))
        txt = row.get("txt_emb", fmt(item_vector(token, "txt_emb")))
        lines.append(f"{token}\t{img}\t{txt}")
    lines.extend(extra_item_lines)
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root)


def small_prism_tables(n=30, seed=0):
    """Two random modality tables (6- and 5-d) for n item rows, items 3..6 missing the second,
    and the layer options the hand-check tests share (hidden size 8)."""
    torch.manual_seed(seed)
    tables = [torch.randn(n, 6), torch.randn(n, 5)]
    missing = [torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]
    missing[1][3:7] = True
    return tables, missing, dict(hidden_size=8, expert_hidden=16, gate_dropout=0.0)


def tiny_config(data_path, checkpoint_dir, **overrides):
    config = {
        "data_path": data_path,
        "checkpoint_dir": checkpoint_dir,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "modalities": ["img_emb", "txt_emb"],
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "MAX_ITEM_LIST_LENGTH": 8,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 2,
        "prism_expert_hidden": 16,
        "train_batch_size": 64,
        "eval_batch_size": 512,
        "epochs": 2,
        "stopping_step": 5,
        "show_progress": False,
        "state": "ERROR",
        "seed": 2020,
        "gpu_id": "",
    }
    config.update(overrides)
    return config


def run_cli(monkeypatch, tmp_path, options, *argv):
    """``run_recbole.py`` as a user runs it: ``options`` in a YAML file given with
    ``--config_files``, ``argv`` on the command line; returns ``run_recbole.main``'s result."""
    import yaml

    import run_recbole

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(options))
    argv = [*argv, f"--config_files={path}"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py"] + argv)
    return run_recbole.main(argv)


@pytest.fixture(autouse=True)
def _clean_argv_and_cwd(monkeypatch, tmp_path):
    """RecBole's Config reads sys.argv and logs to ./log: isolate both per test."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def tiny_data(tmp_path):
    return write_dataset(str(tmp_path / "data"))


@pytest.fixture
def tiny(tmp_path, tiny_data):
    """A config dict for the tiny dataset, checkpoints under tmp_path."""
    return tiny_config(tiny_data, str(tmp_path / "saved"))
