"""Run several variants (models or option sets) x seeds on one dataset and tabulate them.

Used by ``run_ablation.py`` and ``run_comparison.py``.  Each (variant, seed) is one :func:`prism_recbole.quick_start.run`
with the shared dataset, config files and options, plus the variant's own options and the
seed.  A variant that fails is reported in the table with its error; the others still run.
Tables: Markdown and CSV with, per variant, the mean and standard deviation over seeds of every
metric on valid and test, the training time per epoch and the parameter count, and the change
of each mean against a reference variant (relative, in %).
"""
import csv
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class Variant:
    label: str
    model: str
    options: Dict = field(default_factory=dict)
    description: str = ""


@dataclass
class VariantResult:
    variant: Variant
    runs: List[dict] = field(default_factory=list)  # one result dict of quick_start.run per seed
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self):
        return bool(self.runs) and not self.errors


def _mean_std(values):
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), math.nan
    return float(statistics.mean(values)), float(statistics.stdev(values))


RUN_KEYS = ("best_valid_result", "test_result", "n_params", "epoch_times", "wall_s", "seed",
            "checkpoint", "device")


def timed_on_suffix(timed_on):
    """What follows a time in a table: nothing for the CPU (or a CSV written before runs
    recorded their device), `` (NVIDIA H200)`` for a time measured on that GPU."""
    return "" if not timed_on or timed_on == "cpu" else f" ({timed_on})"


def check_same_variant(where, logged, now):
    """One label must always mean one model with one set of options (the runs of a label are
    averaged): a label logged with other options than ``now`` ends in an error naming both."""
    if (logged.model, logged.options) != (now.model, now.options):
        raise ValueError(f"{where}: label {now.label!r} was run with {logged.model} "
                         f"{logged.options}, now {now.model} {now.options}; use another label")


def read_runs_log(path):
    """The runs of a ``--runs_log`` JSON-lines file -> list of :class:`VariantResult` (in the
    order their labels first appear).  A line that is not a run ends in an error naming it."""
    import json

    results = {}
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                variant = Variant(record["label"], record["model"], dict(record["options"]))
                run = {key: record[key] for key in RUN_KEYS if key in record}
                run["best_valid_result"], run["test_result"], run["seed"]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {number}: not a run of run_comparison "
                                 f"({type(err).__name__}: {err})") from None
            result = results.setdefault(variant.label, VariantResult(variant))
            check_same_variant(f"{path}, line {number}", result.variant, variant)
            result.runs = [r for r in result.runs if r["seed"] != run["seed"]] + [run]
    return list(results.values())


def append_run(path, variant, run):
    """Append one finished run to the JSON-lines log (one line, flushed)."""
    import json

    record = {"label": variant.label, "model": variant.model, "options": variant.options}
    record.update({key: run[key] for key in RUN_KEYS if key in run})
    for key in ("best_valid_result", "test_result"):
        record[key] = {name: float(value) for name, value in record[key].items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_variants(variants, dataset, seeds, config_file_list=None, config_dict=None,
                 echo=print, seed_major=False, on_update=None, runs_log=None, resume=False):
    """Run every variant with every seed; returns a list of :class:`VariantResult`.

    ``seed_major``: run all variants with the first seed, then all with the second, ... (an
    interrupted run then still has every variant with the first seeds).  ``on_update(results)``
    is called after every single run (e.g. to rewrite the tables).  A variant that fails is not
    run again with the other seeds.  ``runs_log``: a JSON-lines file to which every finished
    run is appended; with ``resume`` its runs are read first, a (label, seed) found there is
    not run again, and its other labels stay in the results (so several invocations build one
    table).  A label logged with other options than now is an error.
    """
    from prism_recbole.quick_start import run

    results = [VariantResult(variant) for variant in variants]
    wanted = {variant.label for variant in variants}  # a label only in the log is not run again
    if resume and runs_log:
        # the logged labels keep the log's order and the new ones follow, so that adding
        # seeds or models does not reorder a table (or chart) built by earlier invocations
        logged = read_runs_log(runs_log)
        by_label = {res.variant.label: res for res in logged}
        new = []
        for i, variant in enumerate(variants):
            old = by_label.get(variant.label)
            if old is None:
                new.append(results[i])
                continue
            check_same_variant(runs_log, old.variant, variant)
            old.variant = variant
        results = logged + new
        variants = [res.variant for res in results]
    order = ([(v, s) for s in seeds for v in range(len(variants))] if seed_major
             else [(v, s) for v in range(len(variants)) for s in seeds])
    order = [(v, s) for v, s in order if variants[v].label in wanted
             and not any(run["seed"] == s for run in results[v].runs)]
    for step, (index, seed) in enumerate(order, start=1):
        variant, result = variants[index], results[index]
        if result.errors:
            continue
        echo(f"\n=== [{step}/{len(order)}] variant {variant.label} ({variant.model}), seed {seed} ===",
             flush=True)
        options = dict(config_dict or {})
        options.update(variant.options)
        options["seed"] = seed
        start = time.perf_counter()
        try:
            out = run(model=variant.model, dataset=dataset, config_file_list=config_file_list,
                      config_dict=options)
        except Exception as err:  # a failing variant is reported, the others still run
            message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            echo(f"variant {variant.label} failed with seed {seed}: {message}", flush=True)
            traceback.print_exc(file=sys.stderr)
            result.errors.append(message)
        else:
            out["wall_s"] = time.perf_counter() - start
            out["seed"] = seed
            result.runs.append(out)
            if runs_log:
                append_run(runs_log, variant, out)
        if on_update is not None:
            on_update(results)
    return results


def summarize(results, reference=None):
    """Rows of plain values: one per variant, metric columns as 'valid ndcg@10' etc."""
    metric_names = []
    for res in results:
        for run in res.runs:
            for name in run["best_valid_result"]:
                if name not in metric_names:
                    metric_names.append(name)
    ref = next((r for r in results if r.variant.label == reference and r.ok), None)
    rows = []
    for res in results:
        row = {
            "variant": res.variant.label,
            "model": res.variant.model,
            "options": " ".join(f"{k}={v}" for k, v in res.variant.options.items()),
            "seeds": len(res.runs),
            "status": "ok" if res.ok else ("failed: " + res.errors[0] if res.errors else "no run"),
        }
        for split, key in (("valid", "best_valid_result"), ("test", "test_result")):
            for name in metric_names:
                values = [float(run[key][name]) for run in res.runs if name in run[key]]
                mean, std = _mean_std(values)
                row[f"{split} {name}"] = mean
                row[f"{split} {name} std"] = std
                if ref is not None:
                    ref_values = [float(run[key][name]) for run in ref.runs]
                    ref_mean = statistics.mean(ref_values) if ref_values else math.nan
                    row[f"{split} {name} vs {reference} %"] = (
                        100.0 * (mean - ref_mean) / ref_mean if ref_mean and not math.isnan(mean) else math.nan
                    )
        # Times are compared across rows, so they come from one kind of machine: the CPU's
        # runs where a row has any (runs logged without a device ran on the CPU), else the
        # GPU's; "timed on" names it and "devices" counts the runs of each.
        devices = [run.get("device", "cpu") for run in res.runs]
        row["timed on"] = "cpu" if "cpu" in devices or not devices else devices[0]
        row["devices"] = ", ".join(f"{d} {devices.count(d)}" for d in dict.fromkeys(devices))
        timed = [run for run, device in zip(res.runs, devices) if device == row["timed on"]]
        epoch_times = [t for run in timed for t in run.get("epoch_times", [])]
        row["s/epoch"] = statistics.mean(epoch_times) if epoch_times else math.nan
        # training time of a run to early stopping (validation not counted), mean over seeds
        train_s = [sum(run["epoch_times"]) for run in timed if run.get("epoch_times")]
        row["train s"] = statistics.mean(train_s) if train_s else math.nan
        row["params"] = res.runs[0]["n_params"] if res.runs else math.nan
        rows.append(row)
    return rows, metric_names


def _fmt(value, digits=4):
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows, metric_names, reference=None, splits=("valid", "test"),
                   metrics=None):
    """A compact Markdown table: mean ± std per metric, and the change against the reference."""
    metrics = metrics or metric_names
    header = ["variant", "options", "seeds"]
    for split in splits:
        for name in metrics:
            header.append(f"{split} {name}")
            if reference:
                header.append(f"Δ {split} {name}")
    header += ["s/epoch", "train s", "params", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["variant"], row["options"] or "(defaults)", str(row["seeds"])]
        for split in splits:
            for name in metrics:
                mean, std = row.get(f"{split} {name}", math.nan), row.get(f"{split} {name} std", math.nan)
                cells.append(_fmt(mean) + ("" if math.isnan(std) else f" ± {std:.4f}"))
                if reference:
                    delta = row.get(f"{split} {name} vs {reference} %", math.nan)
                    cells.append("-" if math.isnan(delta) else f"{delta:+.1f} %")
        on = timed_on_suffix(row.get("timed on"))
        cells += [_fmt(row["s/epoch"], 1) + on, _fmt(row.get("train s", math.nan), 0) + on, _fmt(row["params"], 0) if isinstance(row["params"], float) else str(row["params"]), row["status"]]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows, metric_names, out_dir, name, reference=None, metrics=None, table=None):
    """Write ``<out_dir>/<name>.md`` and ``.csv`` (written to temporary names, then renamed).

    ``table``: the Markdown text to write; by default :func:`markdown_table` of ``metrics``.
    """
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, f"{name}.md")
    csv_path = os.path.join(out_dir, f"{name}.csv")
    if table is None:
        table = markdown_table(rows, metric_names, reference, metrics=metrics)
    with open(md_path + ".tmp", "w") as f:
        f.write(table)
    os.replace(md_path + ".tmp", md_path)
    columns = list(rows[0].keys()) if rows else []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with open(csv_path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    os.replace(csv_path + ".tmp", csv_path)
    return table, md_path, csv_path


def parse_model_spec(spec):
    """``"PRISM_SASRec"``, ``"PRISM_SASRec:prism_fusion=none,prism_margin=0.5"`` or
    ``"none=PRISM_SASRec:prism_fusion=none"`` -> Variant.

    Option values are read like YAML (``true`` -> True, ``0.5`` -> 0.5, ``[a, b]`` -> list).
    The label is ``LABEL`` of a ``LABEL=MODEL:...`` spec, else the spec itself, so the same
    model may appear with several option sets.
    """
    head, _, rest = spec.partition(":")
    label, sep, model = head.partition("=")
    if not sep:
        label, model = spec, head
    label, model = label.strip(), model.strip()
    if not model or not label:
        raise ValueError(f"model spec {spec!r} has no model name" if not model
                         else f"model spec {spec!r} has an empty label before '='")
    options = parse_options(_split_options(rest), f"model spec {spec!r}") if rest else {}
    return Variant(label, model, options, "")


def parse_options(items, where):
    """``["key=value", ...]`` -> ``{key: value}``, values read like YAML (``true`` -> True,
    ``0.5`` -> 0.5, ``[a, b]`` -> list); a leading ``--`` on a key is dropped.  ``where`` names
    the argument in the error."""
    from prism_recbole.cli import read_value

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"{where}: {item!r} is not key=value")
        options[key] = read_value(value.strip())
    return options


def _split_options(text):
    """Split ``a=1,b=[x, y],c=2`` on the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def plot_metric(rows, column, path, title=None):
    """Bar chart of ``row[column]`` (mean, with the std over seeds as error bar) per variant.

    A failed variant keeps its place on the axis with the word "failed" instead of a bar.
    Written to a temporary name, then renamed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["variant"] for row in rows]
    counts = [row.get("seeds") for row in rows]
    if len(set(counts)) > 1:  # rows averaged over different numbers of seeds: say so per bar
        labels = [f"{label} ({n} seed{'' if n == 1 else 's'})" for label, n in zip(labels, counts)]
    means = [row.get(column, math.nan) for row in rows]
    stds = [row.get(f"{column} std", math.nan) for row in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2.0), 4.2))
    xs = range(len(rows))
    heights = [0.0 if math.isnan(m) else m for m in means]
    errors = [0.0 if math.isnan(s) else s for s in stds]
    bars = ax.bar(xs, heights, yerr=errors, capsize=4, color="#4C72B0")
    top = max([h + e for h, e in zip(heights, errors)] + [0.0]) or 1.0
    for x, mean, error, bar in zip(xs, means, errors, bars):
        if math.isnan(mean):
            ax.text(x, top * 0.02, "failed", ha="center", va="bottom", rotation=90, color="#C44E52")
        else:
            ax.text(x, bar.get_height() + error + top * 0.01, f"{mean:.4f}", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(column + " (mean ± std over seeds)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_ylim(0, top * 1.2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
