"""Run several variants (models or option sets) x seeds on one dataset and tabulate them.

Used by ``run_ablation.py``.  Each (variant, seed) is one :func:`prism_recbole.quick_start.run`
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


def run_variants(variants, dataset, seeds, config_file_list=None, config_dict=None,
                 echo=print):
    """Run every variant with every seed; returns a list of :class:`VariantResult`."""
    from prism_recbole.quick_start import run

    results = []
    total = len(variants) * len(seeds)
    step = 0
    for variant in variants:
        result = VariantResult(variant)
        for seed in seeds:
            step += 1
            echo(f"\n=== [{step}/{total}] variant {variant.label} ({variant.model}), seed {seed} ===",
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
                break
            out["wall_s"] = time.perf_counter() - start
            result.runs.append(out)
        results.append(result)
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
        epoch_times = [t for run in res.runs for t in run.get("epoch_times", [])]
        row["s/epoch"] = statistics.mean(epoch_times) if epoch_times else math.nan
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
    header += ["s/epoch", "params", "status"]
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
        cells += [_fmt(row["s/epoch"], 1), _fmt(row["params"], 0) if isinstance(row["params"], float) else str(row["params"]), row["status"]]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows, metric_names, out_dir, name, reference=None, metrics=None):
    """Write ``<out_dir>/<name>.md`` and ``.csv`` (written to temporary names, then renamed)."""
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, f"{name}.md")
    csv_path = os.path.join(out_dir, f"{name}.csv")
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
