"""Synergy probe: does the gate send users whose next item depends on the *combination* of the
modalities to the synergy expert?

Builds a synthetic dataset in a temporary folder.  Every item has four hidden binary-coded
attributes and two modality vectors:

    image vector = A[a] + C[c] + U[u] + noise        text vector = B[b] + C[c] + V[v] + noise

* ``a`` is visible in the image only, ``b`` in the text only, ``c`` in both (redundant), and
  ``s = (u + v) mod K`` is revealed only by the combination: ``u`` alone (image) and ``v``
  alone (text) are uniform and say nothing about ``s``.
* Users fall into four groups (``image``, ``text``, ``both``, ``combination``); every item of a
  user's history and their next item share one value of the group's attribute (``a``, ``b``,
  ``c`` or ``s``), drawn per user; everything else is random.
* There are many items and each has few interactions, so the content, not the item IDs, carries
  the signal.

Then trains PRISM_SASRec with the full module and with ``prism_fusion: none`` (features only)
on the same data and seed, and prints per user group: test NDCG@10 of both, and the full
model's mean gate weight for each expert kind.

    python benchmarks/probe_synergy.py                 # defaults: ~1 min on a 2-core CPU
    python benchmarks/probe_synergy.py --epochs 30 --seeds 1 2 3 --extra prism_noise_std=0.05

NDCG@10 here is computed per user from RecBole's full-sort test batches, with the same masking
as RecBole's evaluator (the user's other interactions and the padding item are excluded).
"""
import argparse
import math
import os
import shutil
import sys
import tempfile
from collections import defaultdict

import numpy as np

GROUPS = ("image", "text", "both", "combination")


def build_dataset(root, n_items=1500, n_users=1200, seq_len=10, dim=32, n_values=12, noise=0.3, seed=0):
    """Write <root>/probe/probe.{inter,item}; return {user token: group}."""
    rng = np.random.default_rng(seed)
    attrs = {k: rng.integers(0, n_values, n_items) for k in ("a", "b", "c", "u", "v")}
    attrs["s"] = (attrs["u"] + attrs["v"]) % n_values
    A, B, C, U, V = (rng.normal(size=(n_values, dim)) for _ in range(5))
    img = A[attrs["a"]] + C[attrs["c"]] + U[attrs["u"]] + noise * rng.normal(size=(n_items, dim))
    txt = B[attrs["b"]] + C[attrs["c"]] + V[attrs["v"]] + noise * rng.normal(size=(n_items, dim))
    folder = os.path.join(root, "probe")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "probe.item"), "w") as f:
        f.write("item_id:token\timg_emb:float_seq\ttxt_emb:float_seq\n")
        for i in range(n_items):
            f.write(f"{i + 1}\t{' '.join(f'{x:.5g}' for x in img[i])}\t{' '.join(f'{x:.5g}' for x in txt[i])}\n")
    key = {"image": "a", "text": "b", "both": "c", "combination": "s"}
    groups = {}
    with open(os.path.join(folder, "probe.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(n_users):
            group = GROUPS[u % len(GROUPS)]
            attr = attrs[key[group]]
            value = rng.choice(np.unique(attr))
            pool = np.flatnonzero(attr == value)
            items = rng.choice(pool, size=seq_len, replace=False)
            for t, i in enumerate(items):
                f.write(f"{u + 1}\t{i + 1}\t{t}\n")
            groups[str(u + 1)] = group
    return groups


def per_user_eval(model, test_data, groups, k=10):
    """NDCG@k per user group and mean gate weights per group, from full-sort test batches."""
    import torch

    dataset = test_data._dataset
    ndcg, weights = defaultdict(list), defaultdict(list)
    model.eval()
    with torch.no_grad():
        for interaction, history_index, positive_u, positive_i in test_data:
            scores = model.full_sort_predict(interaction.to(model.device)).view(len(interaction), -1)
            scores[:, 0] = -math.inf
            if history_index is not None:
                scores[history_index] = -math.inf
            target = scores[positive_u, positive_i]
            rank = (scores > target.unsqueeze(1)).sum(1)  # 0-based rank of the target
            gate = model.prism_gate_weights
            users = dataset.id2token(dataset.uid_field, interaction[dataset.uid_field].cpu().numpy())
            for row, user in enumerate(users):
                group = groups[str(user)]
                r = int(rank[row])
                ndcg[group].append(1.0 / math.log2(r + 2) if r < k else 0.0)
                if gate is not None and gate.shape[1]:
                    weights[group].append(gate[row].cpu().numpy())
    return ({g: float(np.mean(v)) for g, v in ndcg.items()},
            {g: np.mean(v, axis=0) for g, v in weights.items()})


def train(model_name, root, options):
    from recbole.utils import init_seed

    from prism_recbole.config import Config
    from prism_recbole.quick_start import build_model, load_data
    from prism_recbole.utils import get_trainer

    config = Config(model=model_name, dataset="probe", config_dict=dict(options, data_path=root))
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, valid_data, test_data = load_data(config)
    model = build_model(config, train_data)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    trainer.evaluate(test_data, load_best_model=True)  # loads the best checkpoint into model
    return model, test_data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020])
    parser.add_argument("--model", default="PRISM_SASRec")
    parser.add_argument("--extra", nargs="*", default=[], help="key=value options for both runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    import torch
    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import prism_recbole  # noqa: F401

    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.extra)}
    root = tempfile.mkdtemp(prefix="prism-probe-")
    try:
        groups = build_dataset(root)
        base = {
            "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
            "modalities": ["img_emb", "txt_emb"],
            "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
            "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10",
            "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 32, "inner_size": 64, "n_layers": 1,
            "n_heads": 2, "epochs": args.epochs, "train_batch_size": 256, "stopping_step": 10,
            "show_progress": False, "state": "ERROR", "checkpoint_dir": os.path.join(root, "saved"),
        }
        base.update(extra)
        table = defaultdict(lambda: defaultdict(list))
        gate_table = defaultdict(list)
        names = None
        for seed in args.seeds:
            for variant, options in (("full", {}), ("none", {"prism_fusion": "none"})):
                print(f"training {args.model} [{variant}] seed {seed} ...", file=sys.stderr, flush=True)
                model, test_data = train(args.model, root, dict(base, seed=seed, **options))
                ndcg, weights = per_user_eval(model, test_data, groups)
                for g in GROUPS:
                    table[g][variant].append(ndcg.get(g, math.nan))
                if variant == "full":
                    names = model.prism_expert_names
                    for g in GROUPS:
                        gate_table[g].append(weights[g])
        print(f"## Synergy probe ({args.model}, {args.epochs} epochs, seeds {args.seeds}, "
              f"options {extra or 'defaults'})\n")
        header = ["user group", "NDCG@10 full", "NDCG@10 none"] + [f"w({n})" for n in names]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for g in GROUPS:
            w = np.mean(gate_table[g], axis=0)
            cells = [g, f"{np.mean(table[g]['full']):.4f}", f"{np.mean(table[g]['none']):.4f}"]
            cells += [f"{x:.3f}" for x in w]
            print("| " + " | ".join(cells) + " |")
        print("\nw(...) = the full model's mean gate weight per expert over the group's test users.")
    finally:
        if args.keep:
            print(f"data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
