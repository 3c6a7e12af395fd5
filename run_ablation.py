"""Ablations of a PRISM model: the full model and each single ablation, over several seeds.

    python run_ablation.py                                   # PRISM_SASRec on ml-100k-mm, 3 seeds
    python run_ablation.py --model=PRISM_GRU4Rec --seeds 1 2 --variants full none uniform
    python run_ablation.py --epochs=20 --MAX_ITEM_LIST_LENGTH=20  # options for every run
    python run_ablation.py --variants full none --add_variant noise_match prism_noise_std=match

Writes <out>/ablation-<model>-<dataset>.md and .csv (mean and std of every metric on valid and
test, the change against the full model) and prints the table.  A variant that fails is
reported with its error; the others still run.  Any --key=value is passed to every run, as in
run_recbole.py.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

VARIANTS = {
    "full": ({}, "the full model (defaults)"),
    "none": ({"prism_fusion": "none"}, "ID + each item's projected modality vectors only"),
    "uniform": ({"prism_fusion": "uniform"}, "the experts with fixed equal weights"),
    "no_unique": ({"prism_experts": ["synergy", "redundancy"]}, "without the uniqueness experts"),
    "no_synergy": ({"prism_experts": ["unique", "redundancy"]}, "without the synergy expert"),
    "no_redundancy": ({"prism_experts": ["unique", "synergy"]}, "without the redundancy expert"),
    "no_aux_loss": ({"prism_aux_loss": False}, "the experts without their auxiliary losses"),
    "no_item_features": ({"prism_item_features": False}, "the fused vector alone carries the modalities"),
}


def _parse_extra_variant(spec, parser):
    """["label", "key=value", ...] -> (label, {key: value}); values are read like YAML."""
    from prism_recbole.experiments import parse_options

    label, items = spec[0], spec[1:]
    if "=" in label or not items:
        parser.error(f"--add_variant needs a label and at least one key=value, got {' '.join(spec)!r}")
    if label in VARIANTS:
        parser.error(f"--add_variant label {label!r} is already a built-in variant")
    try:
        return label, parse_options(items, f"--add_variant {label}")
    except ValueError as err:
        parser.error(str(err))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="PRISM_SASRec")
    parser.add_argument("--dataset", default="ml-100k-mm")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--add_variant", nargs="+", action="append", default=[],
                        metavar=("LABEL", "KEY=VALUE"),
                        help="an extra variant (e.g. a candidate default): a label and its "
                             "options; may be given several times")
    parser.add_argument("--out", default="results")
    args, _ = parser.parse_known_args(argv)
    # our own flags are not RecBole options: keep only --key=value items for RecBole's Config
    own = {"--model", "--dataset", "--config_files", "--seeds", "--variants", "--out",
           "--add_variant"}
    from prism_recbole.cli import shared_options

    # shared options go in under each variant's own (see prism_recbole.cli.shared_options)
    shared = shared_options(argv if argv is not None else sys.argv[1:], own)
    sys.argv = sys.argv[:1]
    extra = [_parse_extra_variant(spec, parser) for spec in args.add_variant]

    from prism_recbole.experiments import Variant, run_variants, summarize, write_tables

    config_files = args.config_files.split() if args.config_files else [
        p for p in [os.path.join(HERE, "configs", f"{args.dataset}.yaml")] if os.path.isfile(p)]
    variants = [Variant(label, args.model, dict(VARIANTS[label][0]), VARIANTS[label][1])
                for label in args.variants]
    variants += [Variant(label, args.model, options, ", ".join(f"{k}={v}" for k, v in options.items()))
                 for label, options in extra]
    results = run_variants(variants, args.dataset, args.seeds, config_files, config_dict=shared)
    rows, metric_names = summarize(results, reference="full")
    name = f"ablation-{args.model}-{args.dataset}"
    key_metrics = [m for m in ("hit@10", "ndcg@10", "mrr@10") if m in metric_names] or metric_names
    table, md_path, csv_path = write_tables(rows, metric_names, args.out, name, reference="full",
                                            metrics=key_metrics)
    print()
    print(table)
    print(f"Markdown: {md_path}\nCSV (every metric, mean and std): {csv_path}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
