"""A compact results table (one row per model) from a ``run_comparison.py`` CSV.

    python -m prism_recbole.results_table docs/results/comparison-toys.csv \
        --first PRISM_SASRec PRISM_SASRec-none

Prints a Markdown table: the model's label, its training mode (read from the model and its
options in the CSV: RecBole's last-position training, every-position training and its loss,
BERT4Rec's masked items, frozen feature tables), the number of seeds, validation NDCG@10, test
HR@10, test NDCG@10 (± std over seeds when there are several), test NDCG@20 and the training
time to early stopping (``train s``, mean over seeds; over the CPU runs where a row has any,
else over its GPU runs, and then the GPU is named next to the time).  Only rows whose status is ``ok`` are
shown; ``--first`` puts the named rows on top, the others keep the CSV's order.  ``--metrics``
changes the metric columns, ``--std`` those that show the std.  These are the per-dataset tables of README's "Results on real
data"; ``python -m prism_recbole.readme_tables README.md`` rewrites them from their CSVs.
"""

import argparse
import csv
import math
import os
import re
import sys

from prism_recbole.experiments import parse_options as parse_option_items, timed_on_suffix
from prism_recbole.goal import _f

DEFAULT_METRICS = ("valid ndcg@10", "test hit@10", "test ndcg@10", "test ndcg@20")
# models that train on RecBole's prefixes with masked items instead of next-item targets
MASKED_ITEM_MODELS = {"BERT4Rec", "PRISM_BERT4Rec"}


def parse_options(text):
    """``"a=1 b=[x, y] c=z"`` (the CSV's ``options`` cell, as ``experiments.summarize`` joins a
    variant's options) -> ``{"a": 1, "b": ["x", "y"], "c": "z"}``, values read as the model
    spec's are (``experiments.parse_options``)."""
    text = (text or "").strip()
    if not text:
        return {}
    return parse_option_items(re.split(r" (?=[A-Za-z_][A-Za-z0-9_]*=)", text), f"options {text!r}")


def training_mode(model, options):
    """The training mode of a row, in words, from its model name and options."""
    masked = model in MASKED_ITEM_MODELS
    if masked and options.get("train_positions", "last") == "all":
        mode = "masked items, one window per user"
    elif options.get("train_positions", "last") == "all":
        loss = options.get("position_loss")
        if loss is None:  # follows loss_type (overall.yaml): CE -> ce, BPR -> bce
            loss = "bce" if options.get("loss_type") == "BPR" else "ce"
        sampler = options.get("position_sampler", "uniform")
        if loss == "ce":
            how = "full softmax"
        elif loss == "sampled_softmax":
            how = ("in-batch" if sampler == "in_batch"
                   else f"sampled softmax, {options.get('position_negatives', 256)} uniform negatives")
        else:
            how = str(loss)
        mode = f"all positions, {how}"
    elif masked:
        mode = "masked items on RecBole's prefixes"
    else:
        mode = "last (RecBole)"
    if masked and "mask_ratio" in options:
        mode += f", mask ratio {options['mask_ratio']}"
    if options.get("prism_freeze_features") is True:
        mode += "; frozen feature tables"
    transform = {"center": "centred", "whiten": "whitened"}.get(options.get("prism_feature_transform"))
    if transform:
        mode += f"; {transform} features"
    return mode


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _title(column):
    split, _, metric = column.partition(" ")
    name, at, k = metric.partition("@")
    pretty = {"ndcg": "NDCG", "hit": "HR", "mrr": "MRR", "recall": "Recall", "precision": "Precision"}
    return f"{split} {pretty.get(name, name)}{at}{k}"


def read_rows(path, metrics=DEFAULT_METRICS, first=()):
    """The CSV's finished rows, ``first`` on top; errors name the file and what is missing."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        needed = ["variant", "model", "options", "seeds", "status", "train s", *metrics]
        missing = [c for c in needed if c not in fields]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)} "
                             f"(is it a run_comparison.py CSV?)")
        rows = [r for r in reader if r["status"] == "ok"]
    labels = [r["variant"] for r in rows]
    unknown = [label for label in first if label not in labels]
    if unknown:
        raise ValueError(f"{path}: --first {' '.join(unknown)}: no finished row "
                         f"(rows: {' '.join(labels) or 'none'})")
    order = {label: i for i, label in enumerate(first)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), labels.index(r["variant"])))


def markdown(rows, metrics=DEFAULT_METRICS, std_on=("test ndcg@10",)):
    header = ["model", "training", "seeds", *(_title(m) for m in metrics), "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["variant"], training_mode(r["model"], parse_options(r["options"])), r["seeds"]]
        for m in metrics:
            cell = _f(_number(r[m]))
            std = _number(r.get(f"{m} std"))
            if m in std_on and std is not None and int(r["seeds"]) > 1:
                cell += f" ± {std:.4f}"
            cells.append(cell)
        cells.append(_f(_number(r["train s"]), 0) + timed_on_suffix(r.get("timed on")))
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="a run_comparison.py CSV (one dataset)")
    parser.add_argument("--first", nargs="+", default=(), metavar="LABEL",
                        help="rows to put on top, in this order")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="COLUMN",
                        help="metric columns of the CSV (default: %(default)s)")
    parser.add_argument("--std", nargs="*", default=["test ndcg@10"], metavar="COLUMN",
                        help="columns that also show ± std over seeds (default: %(default)s)")
    return parser


def render(argv):
    """The Markdown table for ``argv`` (the command line without the program name)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.csv):
        parser.error(f"no such file: {args.csv}")
    metrics = [m.lower() for m in args.metrics]
    try:
        rows = read_rows(args.csv, metrics, args.first)
    except ValueError as e:
        parser.error(str(e))
    return markdown(rows, metrics, std_on=[m.lower() for m in args.std])


def main(argv=None):
    table = render(sys.argv[1:] if argv is None else argv)
    print(table)
    return table


if __name__ == "__main__":
    main()
