"""Where the gain comes from: per-group NDCG@10 / HR@10 of two (or more) checkpoints on one dataset.

    python run_group_report.py --checkpoints saved/PRISM_SASRec-a.pth saved/PRISM_SASRec-b.pth \\
        --names full none --csv results/groups.csv --plot results/groups.png
    python run_group_report.py --checkpoints A.pth B.pth --split valid --length_bins q4 \\
        --popularity_bins 0 1 5 20 --users_csv results/users.csv --progress
    python run_group_report.py --checkpoints A.pth B.pth --data_path=elsewhere/ --gpu_id=""   # any stored option

Groups: history length (item_length, --length_bins), training interactions of the target item
(--popularity_bins), targets missing each modality; the first checkpoint is the numerator of
the ratio columns.  ``--interventions no_fusion swap_fusion uniform_gate`` adds columns for the
first checkpoint evaluated with its fused vector off, another user's, or equal expert weights.
Prints a Markdown table.  See prism_recbole/group_report.py.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    from prism_recbole.cli import config_overrides

    from prism_recbole.model.prism_layer import INTERVENTIONS
    from prism_recbole.group_report import (DEFAULT_K, DEFAULT_LENGTH_BINS, DEFAULT_POPULARITY_BINS,
                                            SPLITS, group_report)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", "-c", nargs="+", required=True,
                        help="checkpoints written by run_recbole.py, trained on the same dataset")
    parser.add_argument("--names", nargs="+", default=None,
                        help="one name per checkpoint (default: the model names)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: %(default)s")
    parser.add_argument("--length_bins", nargs="+", default=None,
                        help="lower ends of the history-length bins, or qN for N quantile bins "
                             f"(default: {' '.join(map(str, DEFAULT_LENGTH_BINS))}; cut at "
                             "MAX_ITEM_LIST_LENGTH)")
    parser.add_argument("--popularity_bins", nargs="+", default=None,
                        help="lower ends of the target-popularity bins, or qN "
                             f"(default: {' '.join(map(str, DEFAULT_POPULARITY_BINS))})")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="cut-off of NDCG and HR (default: %(default)s)")
    parser.add_argument("--csv", default=None, help="write the group table to this CSV")
    parser.add_argument("--plot", default=None, help="write a bar chart of NDCG@k per group (PNG)")
    parser.add_argument("--users_csv", default=None, help="write one line per test user to this CSV")
    parser.add_argument("--interventions", nargs="+", default=(),
                        choices=INTERVENTIONS,
                        help="also evaluate the first checkpoint with its fused vector off "
                             "(no_fusion), taken from another user (swap_fusion) or with equal "
                             "expert weights (uniform_gate): one more column each")
    parser.add_argument("--progress", action="store_true", help="progress bars (tqdm)")
    args, extra = parser.parse_known_args(argv)
    config_dict = config_overrides(parser, extra)

    report = group_report(
        args.checkpoints, names=args.names, split=args.split,
        length_bins=args.length_bins or DEFAULT_LENGTH_BINS,
        popularity_bins=args.popularity_bins or DEFAULT_POPULARITY_BINS, k=args.k,
        config_dict=config_dict or None, csv_path=args.csv, plot_path=args.plot,
        users_csv_path=args.users_csv, progress=args.progress, interventions=args.interventions,
    )
    print(report.markdown)
    return report


def cli(argv=None):
    """``main()`` for the command line: bad input (a missing checkpoint, checkpoints of
    different datasets, bad bins ...) ends in one ``error:`` line and exit code 2.  Set
    PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    from prism_recbole.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
