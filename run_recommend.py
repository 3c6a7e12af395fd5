"""Top-k recommendations from a saved checkpoint (PRISM models, MMSR or any RecBole model).

    python run_recommend.py --checkpoint=saved/PRISM_SASRec-xxx.pth --users 1 2 3 --k 10
    python run_recommend.py --checkpoint=saved/PRISM_SASRec-xxx.pth --items 50 172 133

--users: each user's history is their whole interaction sequence in the dataset (train, valid
and test interactions) in time order, cut to its last MAX_ITEM_LIST_LENGTH items: the list is
the next item after everything the dataset knows.  --items: one sequence, oldest first.
Items of the history are left out unless --include_history; scores are the model's raw
full-ranking scores.  Titles come from the .item file (title, movie_title, name, ... or
--title_field).  The checkpoint is loaded with torch.load(weights_only=True) and its stored
config rebuilds the dataset: --data_path points at the dataset folder's parent if it moved.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", "-c", required=True, help="a .pth file written by run_recbole.py")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--users", "-u", nargs="+", metavar="USER", help="user tokens, one query each")
    query.add_argument("--items", "-i", nargs="+", metavar="ITEM",
                       help="one sequence of item tokens, oldest first")
    parser.add_argument("--k", "-k", type=int, default=10, help="items per query (default: %(default)s)")
    parser.add_argument("--include_history", action="store_true",
                        help="keep items of the history in the list (default: left out)")
    parser.add_argument("--title_field", default=None, help="the .item field to show as title")
    parser.add_argument("--data_path", default=None,
                        help="folder holding the dataset folder (default: the one stored in the checkpoint)")
    parser.add_argument("--gpu_id", default=None, help="GPU to use ('' for CPU; default: as stored)")
    return parser.parse_args(argv)


def format_results(results, title_field=None, show_history=5):
    """The results as a readable text table, one block per query."""
    lines = []
    for query, recs in results:
        n, used = len(query.history), len(query.model_input)
        recent = " ".join(query.model_input[-show_history:])
        more = "... " if used > show_history else ""
        if query.user is not None:
            head = (f"user {query.user}: {n} interaction{'s' if n != 1 else ''}, the model sees "
                    f"the last {used}: {more}{recent}")
        else:
            head = (f"items {' '.join(query.history)}"
                    + (f" (the model sees the last {used})" if used < n else ""))
        lines.append(head)
        if not recs:
            lines.append("  (no item left to recommend)")
            lines.append("")
            continue
        rows = [(str(r), item, f"{score:.4f}", title)
                for r, (item, score, title) in enumerate(recs, 1)]
        header = ("rank", "item", "score") + ((title_field or "title",) if title_field else ())
        widths = [max(len(header[c]), *(len(row[c]) for row in rows)) for c in range(3)]

        def line(cells):
            out = [cells[0].rjust(widths[0]), cells[1].ljust(widths[1]), cells[2].rjust(widths[2])]
            if title_field:
                out.append(cells[3] if cells[3] is not None else "-")
            return "  " + "  ".join(out).rstrip()

        lines.append(line(header))
        lines.extend(line(row) for row in rows)
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from prism_recbole.recommend import Recommender

    overrides = {}
    if args.data_path is not None:
        overrides["data_path"] = args.data_path
    if args.gpu_id is not None:
        overrides["gpu_id"] = args.gpu_id
    recommender = Recommender(args.checkpoint, config_dict=overrides or None,
                              title_field=args.title_field)
    results = recommender.recommend(users=args.users, items=args.items, k=args.k,
                                    exclude_history=not args.include_history)
    config = recommender.config
    print(f"{config['model']} on {config['dataset']} ({recommender.loaded.checkpoint})")
    print(f"top {args.k}; items of the history are "
          + ("kept" if args.include_history else "left out (--include_history keeps them)")
          + "; scores are the model's raw full-ranking scores")
    print()
    print(format_results(results, recommender.title_field))
    return results


def cli():
    """``main()`` for the command line: bad input (unknown tokens, an unsafe or missing
    checkpoint, a moved dataset ...) ends in one ``error:`` line and exit code 2.  Set
    PRISM_RECBOLE_TRACEBACK=1 to see the traceback instead."""
    from prism_recbole.cli import run_cli

    return run_cli(main)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    cli()
