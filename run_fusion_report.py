"""Fusion-weight report of a trained PRISM model (or MMSR): per-user gate weights on the test users.

    python run_fusion_report.py --checkpoint=saved/PRISM_SASRec-....pth --out=results/fusion
    python run_fusion_report.py --checkpoint=... --buckets 5 10 20     # history-length buckets
    python run_fusion_report.py --checkpoint=... --data_path=elsewhere/ --gpu_id=""   # any stored option

Writes <out>/<checkpoint name>.users.csv (one row per test user), .summary.csv, .summary.md
and .png, and prints the Markdown summary.  See prism_recbole/fusion_report.py.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    from prism_recbole.cli import config_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", "-c", required=True, help="checkpoint written by run_recbole.py")
    parser.add_argument("--out", "-o", default=os.path.join("results", "fusion"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--buckets", type=int, nargs="+", default=None,
                        help="upper ends of the history-length buckets (default: 5 10 20 50, "
                             "cut at MAX_ITEM_LIST_LENGTH)")
    parser.add_argument("--prefix", default=None, help="start of the file names (default: the checkpoint's name)")
    parser.add_argument("--no_plot", action="store_true", help="do not write the PNG")
    args, extra = parser.parse_known_args(argv)
    config_dict = config_overrides(parser, extra)

    from prism_recbole.fusion_report import DEFAULT_BUCKET_EDGES, fusion_report

    report = fusion_report(
        args.checkpoint, args.out,
        bucket_edges=args.buckets if args.buckets else DEFAULT_BUCKET_EDGES,
        config_dict=config_dict or None, prefix=args.prefix, plot=not args.no_plot,
    )
    print(report.markdown)
    for kind, path in report.paths.items():
        print(f"{kind + ':':<12} {path}")
    return report


def cli(argv=None):
    """``main()`` for the command line: bad input (a checkpoint of a model without a gate,
    prism_fusion none, a missing or unsafe checkpoint ...) ends in one ``error:`` line and exit
    code 2.  Set PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    from prism_recbole.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
