"""How far a model is from a relative goal, read from run_comparison's CSV files.

    python -m prism_recbole.goal docs/results/comparison-toys.csv docs/results/comparison-sports.csv
    python -m prism_recbole.goal results/comparison-*.csv --metric "test ndcg@10" \
        --model PRISM_SASRec --features_only PRISM_SASRec-none --best 1.10 --own 1.03

For each CSV (one dataset each, as ``run_comparison.py`` writes it) it prints one Markdown row:
the model's mean over seeds, the best baseline (the highest mean among the rows whose status is
``ok`` and whose label does not start with ``--exclude_prefix``, by default ``PRISM_``: the
model's own variants and PRISM on other backbones are not baselines), the features-only variant,
the two ratios and whether each goal is met.  Only rows that ran are read; a row without a
number is skipped and listed under "not run".  ``--expected LABEL ...`` names the rows every CSV
should have (e.g. the models a comparison asks for): one a CSV has no row for is listed under
"not run" too, so a model that was never started is not silently missing from the verdict.

``--pairs MODEL=FEATURES_ONLY ...`` (e.g. ``PRISM_SASRec=PRISM_SASRec-none
PRISM_SASRec-frozen=PRISM_SASRec-none-frozen``) lets validation choose the configuration: in
each CSV the pair whose model has the highest ``--select_on`` value (default ``valid
ndcg@10``) among the pairs that ran is the one reported, and the chosen label is printed.  The
best baseline is still the highest on ``--metric`` itself, which can only favour the baseline.
"""

import argparse
import csv
import os
import sys


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_comparison(path, metric):
    """Rows of a comparison CSV as ``{label: (mean, n_seeds)}`` and the labels without a result."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or metric not in reader.fieldnames or "variant" not in reader.fieldnames:
            have = ", ".join(c for c in (reader.fieldnames or []) if c.startswith(("test ", "valid ")) and not c.endswith(" std"))
            raise ValueError(f"{path}: no column '{metric}' (a run_comparison CSV has: {have or 'none'})")
        values, missing = {}, []
        for row in reader:
            value = _number(row.get(metric))
            if row.get("status", "ok") != "ok" or value is None:
                missing.append(row["variant"])
                continue
            seeds = _number(row.get("seeds"))
            values[row["variant"]] = (value, int(seeds) if seeds is not None else None)
    return values, missing


def choose_pair(path, pairs, select_on):
    """The (model, features-only) pair of ``pairs`` whose model is best on ``select_on``."""
    values, _ = read_comparison(path, select_on)
    ran = [(m, f) for m, f in pairs if m in values]
    if not ran:
        raise ValueError(f"{path}: none of the --pairs models has a finished row "
                         f"({', '.join(m for m, _ in pairs)})")
    return max(ran, key=lambda pair: values[pair[0]][0])


def goal_row(path, metric, model, features_only, exclude_prefix="PRISM_", best_goal=1.10, own_goal=1.03,
             pairs=None, select_on="valid ndcg@10", expected=()):
    if pairs:
        model, features_only = choose_pair(path, pairs, select_on)
    values, missing = read_comparison(path, metric)
    missing += [label for label in expected if label not in values and label not in missing]
    if model not in values:
        raise ValueError(f"{path}: no finished row '{model}' (rows: {', '.join(values) or 'none'})")
    mean, seeds = values[model]
    baselines = {k: v for k, v in values.items() if not k.startswith(exclude_prefix) and k != model}
    row = {"dataset": os.path.basename(path), "model": mean, "seeds": seeds, "not run": missing,
           "label": model, "features_only": features_only}
    if baselines:
        best = max(baselines, key=lambda k: baselines[k][0])
        row.update(best=best, best_value=baselines[best][0], best_seeds=baselines[best][1],
                   best_ratio=mean / baselines[best][0] if baselines[best][0] else None)
    if features_only in values:
        row.update(own=values[features_only][0], own_seeds=values[features_only][1],
                   own_ratio=mean / values[features_only][0] if values[features_only][0] else None)
    row["best_met"] = row.get("best_ratio") is not None and row["best_ratio"] >= best_goal
    row["own_met"] = row.get("own_ratio") is not None and row["own_ratio"] >= own_goal
    return row


def _f(x, digits=4):
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rows, metric, model, features_only, best_goal, own_goal, chosen_on=None):
    mine_title, own_title = f"{model} {metric} (seeds)", f"{features_only} (seeds)"
    if chosen_on:  # the label differs per row: it is printed in the cells
        mine_title = f"model chosen on {chosen_on}: its {metric} (seeds)"
        own_title = "its features-only variant (seeds)"
    lines = [
        f"| data (CSV) | {mine_title} | best baseline (seeds) | ratio (goal {best_goal:.2f}) "
        f"| {own_title} | ratio (goal {own_goal:.2f}) | not run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = (f"{r['best']} {_f(r['best_value'])} ({r['best_seeds']})" if "best" in r else "-")
        own = (f"{_f(r['own'])} ({r['own_seeds']})" if "own" in r else "-")
        mine = f"{_f(r['model'])} ({r['seeds']})"
        if chosen_on:
            mine = f"{r['label']} {mine}"
            own = f"{r['features_only']} {own}"
        lines.append(
            f"| {r['dataset']} | {mine} | {best} "
            f"| {_f(r.get('best_ratio'), 3)} {'met' if r['best_met'] else 'not met'} | {own} "
            f"| {_f(r.get('own_ratio'), 3)} {'met' if r['own_met'] else 'not met'} "
            f"| {', '.join(r['not run']) or '-'} |")
    return "\n".join(lines)


def main(argv=None):
    rows, table = run(argv)
    print(table)
    return rows


def render(argv):
    """The Markdown table for ``argv`` (the command line without the program name)."""
    return run(argv)[1]


def run(argv=None):
    """The goal rows and their Markdown table for ``argv``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", help="run_comparison CSV files, one per dataset")
    parser.add_argument("--metric", default="test ndcg@10", help="a CSV column (default: %(default)s)")
    parser.add_argument("--model", default="PRISM_SASRec")
    parser.add_argument("--features_only", default="PRISM_SASRec-none")
    parser.add_argument("--exclude_prefix", default="PRISM_",
                        help="rows whose label starts with this are not baselines (default: %(default)s)")
    parser.add_argument("--best", type=float, default=1.10, help="goal against the best baseline")
    parser.add_argument("--own", type=float, default=1.03, help="goal against the features-only variant")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="MODEL=FEATURES_ONLY",
                        help="candidate configurations; per CSV the pair whose model is best on "
                             "--select_on is reported (instead of --model/--features_only)")
    parser.add_argument("--select_on", default="valid ndcg@10",
                        help="the CSV column that chooses among --pairs (default: %(default)s)")
    parser.add_argument("--expected", nargs="+", default=(), metavar="LABEL",
                        help="rows every CSV should have; those without a row are listed as not run")
    args = parser.parse_args(argv)
    pairs = None
    if args.pairs:
        pairs = []
        for spec in args.pairs:
            model, sep, features_only = spec.partition("=")
            if not sep or not model or not features_only:
                parser.error(f"--pairs: {spec!r} is not MODEL=FEATURES_ONLY")
            pairs.append((model, features_only))
    rows = []
    for path in args.csv:
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
        try:
            rows.append(goal_row(path, args.metric, args.model, args.features_only,
                                 args.exclude_prefix, args.best, args.own, pairs, args.select_on,
                                 args.expected))
        except ValueError as e:
            parser.error(str(e))
    return rows, markdown(rows, args.metric, args.model, args.features_only, args.best, args.own,
                          chosen_on=args.select_on if pairs else None)


if __name__ == "__main__":
    main(sys.argv[1:])
