"""Compare models on one dataset: PRISM variants, MMSR and any RecBole model by name.

    python run_comparison.py                       # the README's model list on ml-100k-mm, seed 2020
    python run_comparison.py --models PRISM_SASRec SASRec GRU4Rec --seeds 2020 2021 2022
    python run_comparison.py --models SASRec "PRISM_SASRec:prism_fusion=none" --epochs=20
    python run_comparison.py --dataset=amazon-beauty --metric=test:hit@10 --reference SASRec
    python run_comparison.py --dataset=toys --models "none=PRISM_SASRec:prism_fusion=none" --resume

A spec ``LABEL=MODEL:key=value,...`` names its row LABEL (else the row is the spec itself).
Every finished run is appended to <out>/<name>-runs.jsonl; ``--resume`` reads it first, skips
the (label, seed) runs found there and keeps its other rows in the table, so several
invocations (more seeds for some models, a model added later) build one table; its rows keep
the log's order, new labels follow.

Every model gets the same config files (configs/<dataset>.yaml unless --config_files) and the
same --key=value options, so data, split and metrics are shared; a model spec
``MODEL:key=value,key=value`` adds options to that model only (e.g. an ablation row), and they
win over a shared option of the same name.  Writes
<out>/comparison-<dataset>.md (every metric on test and on valid: mean ± std over seeds,
training time per epoch, parameters), .csv (the same plus the std columns) and a bar chart
.png of --metric, and prints the table.  A model that fails is reported in the table with its
error; the others still run.  Progress: model, seed, and RecBole's per-epoch log lines.
All models run with the first seed, then with the next one; the files are rewritten after
every run, so an interrupted comparison leaves the table of the runs that finished.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODELS = ["PRISM_SASRec", "SASRec", "GRU4Rec", "BERT4Rec", "SASRecF_MM", "FDSA_MM", "MMSR"]
OWN_FLAGS = {"--models", "--dataset", "--config_files", "--seeds", "--metric", "--reference",
             "--out", "--name", "--resume", "--table_metrics"}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="model names or MODEL:key=value,... specs (default: %(default)s)")
    parser.add_argument("--dataset", default="ml-100k-mm")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020])
    parser.add_argument("--metric", default=None,
                        help="split:metric for the bar chart and the Δ column, e.g. test:ndcg@10 "
                             "(default: test:<valid_metric of the config>, else test:ndcg@10)")
    parser.add_argument("--reference", default=None,
                        help="a model spec from --models: adds the change against it (%%)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--name", default=None, help="file name stem (default: comparison-<dataset>)")
    parser.add_argument("--table_metrics", nargs="+", default=None,
                        help="metrics of the Markdown table, e.g. hit@10 ndcg@10 ndcg@20 "
                             "(default: every metric; the CSV always has every metric)")
    parser.add_argument("--resume", action="store_true",
                        help="read <out>/<name>-runs.jsonl: skip the runs logged there, keep "
                             "its other rows in the table")
    return parser


def _metric_column(metric, config_files):
    if metric is None:
        valid_metric = None
        for path in config_files:
            import yaml

            with open(path) as f:
                valid_metric = (yaml.safe_load(f) or {}).get("valid_metric", valid_metric)
        metric = f"test:{(valid_metric or 'NDCG@10').lower()}"
    split, sep, name = metric.partition(":")
    if not sep:
        split, name = "test", metric
    if split not in ("valid", "test"):
        raise ValueError(f"--metric must be valid:<metric> or test:<metric>, got {metric!r}")
    return f"{split} {name.lower()}"


def main(argv=None):
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    raw = argv if argv is not None else sys.argv[1:]
    # our own flags are not RecBole options; the --key=value items are shared by every model
    # and go in as config_dict, under each model's own options (prism_recbole.cli.shared_options)
    from prism_recbole.cli import shared_options

    shared = shared_options(raw, OWN_FLAGS)
    sys.argv = sys.argv[:1]

    from prism_recbole.experiments import (markdown_table, parse_model_spec, plot_metric,
                                           run_variants, summarize, write_tables)

    config_files = args.config_files.split() if args.config_files else [
        p for p in [os.path.join(HERE, "configs", f"{args.dataset}.yaml")] if os.path.isfile(p)]
    variants = [parse_model_spec(spec) for spec in args.models]
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        parser.error(f"--models lists a model twice: {' '.join(labels)}")
    if args.reference is not None and args.reference not in labels:
        parser.error(f"--reference {args.reference!r} is not one of --models ({' '.join(labels)})")
    column = _metric_column(args.metric, config_files)

    name = args.name or f"comparison-{args.dataset}"

    def write(results):
        rows, metric_names = summarize(results, reference=args.reference)
        shown = None
        if args.table_metrics:
            shown = [m.lower() for m in args.table_metrics]
            unknown = [m for m in shown if metric_names and m not in metric_names]
            if unknown:
                raise ValueError(f"--table_metrics {' '.join(unknown)}: not a metric of these "
                                 f"runs ({' '.join(metric_names)})")
        done = sorted({run["seed"] for res in results for run in res.runs})
        seeds = " ".join(str(s) for s in done) or "none finished"
        table = (f"### Test (mean ± std over seeds {seeds})\n\n"
                 + markdown_table(rows, metric_names, args.reference, splits=("test",),
                                  metrics=shown)
                 + "\n### Valid (best epoch by valid_metric)\n\n"
                 + markdown_table(rows, metric_names, args.reference, splits=("valid",),
                                  metrics=shown))
        table, md_path, csv_path = write_tables(rows, metric_names, args.out, name,
                                                reference=args.reference, table=table)
        png_path = plot_metric(rows, column, os.path.join(args.out, f"{name}.png"),
                               title=f"{args.dataset}: {column}, mean over each row's seeds (of {seeds})")
        return rows, table, md_path, csv_path, png_path

    # all models with the first seed, then the next seed ...; the tables are rewritten after
    # every run, so an interrupted comparison still leaves a table of what finished
    runs_log = os.path.join(args.out, f"{name}-runs.jsonl")
    if not args.resume and os.path.isfile(runs_log):
        os.replace(runs_log, runs_log + ".old")  # a fresh comparison starts a fresh log
    results = run_variants(variants, args.dataset, args.seeds, config_files, config_dict=shared,
                           seed_major=True,
                           on_update=write, runs_log=runs_log, resume=args.resume)
    rows, table, md_path, csv_path, png_path = write(results)
    print()
    print(table)
    print(f"Markdown: {md_path}\nCSV (every metric, mean and std): {csv_path}\nChart: {png_path}")
    return rows


def cli():
    """``main()`` for the command line: bad arguments end in one ``error:`` line and exit code
    2 (prism_recbole.cli; PRISM_RECBOLE_TRACEBACK=1 shows the traceback).  A model that fails
    during the comparison is not an error here: it is a row of the table."""
    from prism_recbole.cli import run_cli

    return run_cli(main)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
