"""Time to quality: ``train_positions: all`` against RecBole's prefix training (``last``).

For every dataset x model, trains with the package's trainer to early stopping on valid
NDCG@10 in each mode (same config files, max length, hidden size, learning rate, seed, batch
size and ``--extra`` options for all of them):

* ``last``:   RecBole's training (every prefix is a sample, its last position scored), CE loss;
* ``all-ss``: ``train_positions: all``, ``position_loss: sampled_softmax``, 256 negatives;
* ``all-ce``: ``train_positions: all``, ``position_loss: ce`` (full softmax at every position).

``--modes`` also takes ``NAME:key=value,...`` for another option set (e.g.
``all-ss-1024:train_positions=all,position_loss=sampled_softmax,position_negatives=1024``).

Per run the package's trainer is subclassed (:class:`EpochClockMixin`): ``_train_epoch`` and
``_valid_epoch`` are timed, and RecBole's ``fit(callback_fn=...)``, called after each epoch's
validation, early stopping and checkpoint, records a point of the curve: the wall-clock time
since ``fit`` started (training + validation + checkpointing: evaluation is part of the time to
quality; training and validation seconds are also reported on their own) and that epoch's
valid NDCG@10.  Data loading and the final test evaluation are not in the wall time (reported
apart).  Validation runs after every epoch (``eval_step: 1``).

Reported per run: best valid NDCG@10 and its epoch, the test NDCG@10 and HR@10 of the best
epoch (RecBole's ``evaluate(load_best_model=True)``), epochs run, wall / training / validation
seconds.  For every mode other than ``last``, against ``last`` (same dataset, model and
options): the wall time at which its curve first reaches ``last``'s best valid NDCG@10
("never" if it does not), that time over ``last``'s total wall time (target: <= ``--target``,
0.25), and whether its own best valid NDCG@10 is >= ``last``'s.

Outputs: a Markdown table on stdout, ``--csv`` (one row per run) and ``--curves_csv`` (one row
per run and epoch), rewritten after every run, so an interrupted benchmark keeps the runs that
finished; ``--resume`` skips the runs already in ``--csv`` (same dataset, model, mode and
options, status ok).  ``--plot FILE.png``: valid NDCG@10 against wall time, one panel per
dataset x model, one line per mode.  Logs and checkpoints go to ``--work_dir`` (default: a
temporary folder, removed at the end; a run's checkpoint is deleted after its test evaluation
unless ``--keep_checkpoints``).  The S3-Rec datasets (toys, sports, yelp-s3rec) are built with
``atomic_data.s3rec`` when their atomic files are missing.

Example::

    OMP_NUM_THREADS=2 python benchmarks/bench_time_to_quality.py --threads 2 \\
        --csv results/time_to_quality.csv --plot results/time_to_quality.png
    python benchmarks/bench_time_to_quality.py --datasets toys --models SASRec \\
        --modes last all-ss --epochs 50 --extra eval_batch_size=2048 --resume

RecBole's ``Config`` reads ``--key=value`` items of ``sys.argv`` itself, so ``sys.argv`` is
cleared while the runs build their configs (and restored afterwards).
"""
import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import prism_recbole  # noqa: E402,F401  (numpy shims, anomaly mode off) -- must come first
import torch  # noqa: E402

METRIC = "ndcg@10"
HIT = "hit@10"

#: the predefined modes: options that define them (they override --extra)
MODES = {
    "last": {"train_positions": "last", "loss_type": "CE"},
    "all-ss": {"train_positions": "all", "position_loss": "sampled_softmax",
               "position_negatives": 256, "position_sampler": "uniform"},
    "all-ce": {"train_positions": "all", "position_loss": "ce"},
}
REFERENCE_MODE = "last"

#: options every run gets (not part of a run's identity: they do not change what is learned)
FIXED_OPTIONS = {"valid_metric": "NDCG@10", "eval_step": 1, "show_progress": False}

ROW_COLUMNS = [
    "dataset", "model", "mode", "status", "seed", "best_valid_ndcg@10", "best_epoch",
    "epochs_run", "test_ndcg@10", "test_hit@10", "wall_s", "train_s", "valid_s",
    "train_s_per_epoch", "valid_s_per_epoch", "best_at_s",
    "reach_last_best_s", "reach_last_best_epoch", "reach_ratio", "reach_ratio_target_met",
    "best_valid_ge_last", "last_best_valid_ndcg@10", "last_wall_s", "last_best_at_s",
    "load_s", "test_s", "train_rows", "params", "device", "threads", "max_len", "hidden_size",
    "learning_rate", "train_batch_size", "epochs", "stopping_step", "mode_options", "settings",
    "log_file", "torch",
]
CURVE_COLUMNS = [
    "dataset", "model", "mode", "settings", "epoch", "wall_s", "train_s", "valid_s",
    "train_s_cum", "valid_s_cum", "train_loss", "valid_ndcg@10", "valid_hit@10", "best",
]
#: columns computed from the rows and curves (rebuilt every time, also for resumed rows)
DERIVED = ["reach_last_best_s", "reach_last_best_epoch", "reach_ratio", "reach_ratio_target_met",
           "best_valid_ge_last", "last_best_valid_ndcg@10", "last_wall_s", "last_best_at_s"]


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure functions


def time_to_reach(curve, target, bigger=True):
    """The first time of ``curve`` (``[(time, value), ...]`` in time order) whose value reaches
    ``target`` (``>=``, or ``<=`` when ``bigger`` is False); None if it never does."""
    for t, value in curve:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if (value >= target) if bigger else (value <= target):
            return t
    return None


def _is_num(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def compare_to_reference(rows, curves, target_ratio=0.25, reference=REFERENCE_MODE):
    """Fill the :data:`DERIVED` columns of every ok row whose mode is not ``reference``,
    against the ok ``reference`` row of the same dataset, model and settings.

    ``curves``: run key (:func:`run_key`) -> list of per-epoch dicts (``wall_s``, ``epoch``,
    ``valid_ndcg@10``).  Rows without a reference row keep those columns empty.
    """
    refs = {(r["dataset"], r["model"], r["settings"]): r for r in rows
            if r.get("mode") == reference and r.get("status") == "ok"}
    for row in rows:
        for key in DERIVED:
            row[key] = None
        ref = refs.get((row["dataset"], row["model"], row["settings"]))
        if row.get("mode") == reference or row.get("status") != "ok" or ref is None:
            continue
        goal, ref_wall = ref["best_valid_ndcg@10"], ref["wall_s"]
        points = curves.get(run_key(row), [])
        reached = next((p for p in points if _is_num(p["valid_ndcg@10"])
                        and p["valid_ndcg@10"] >= goal), None)
        t = time_to_reach([(p["wall_s"], p["valid_ndcg@10"]) for p in points], goal)
        row["last_best_valid_ndcg@10"] = goal
        row["last_wall_s"] = ref_wall
        row["last_best_at_s"] = ref.get("best_at_s")
        if t is None:
            row["reach_last_best_s"] = "never"
            row["reach_last_best_epoch"] = "never"
            row["reach_ratio"] = None
            row["reach_ratio_target_met"] = False
        else:
            row["reach_last_best_s"] = t
            row["reach_last_best_epoch"] = reached["epoch"]
            row["reach_ratio"] = t / ref_wall if ref_wall else None
            ratio = row["reach_ratio"]
            row["reach_ratio_target_met"] = ratio is not None and ratio <= target_ratio
        row["best_valid_ge_last"] = row["best_valid_ndcg@10"] >= goal
    return rows


def run_key(row):
    return (str(row["dataset"]), str(row["model"]), str(row["mode"]), str(row["settings"]))


def settings_of(options):
    """A run's options as a canonical string (its identity for --resume and comparisons)."""
    return json.dumps(options, sort_keys=True, default=str)


# --------------------------------------------------------------------------- options


def split_list(values):
    """``["SASRec,GRU4Rec", "BERT4Rec"]`` -> ``["SASRec", "GRU4Rec", "BERT4Rec"]``."""
    out = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def parse_modes(specs):
    """``["last", "all-ss", "name:key=value,..."]`` -> ``{name: options}`` (in order)."""
    from prism_recbole.experiments import _split_options, parse_options

    modes = {}
    for spec in specs:
        name, sep, rest = spec.partition(":")
        name = name.strip()
        if not sep:
            if name not in MODES:
                raise SystemExit(f"--modes: unknown mode {name!r} (known: {', '.join(MODES)}; "
                                 "or NAME:key=value,...)")
            options = dict(MODES[name])
        else:
            try:
                options = parse_options(_split_options(rest), f"--modes {spec!r}")
            except ValueError as err:
                raise SystemExit(str(err))
        if not name or name in modes:
            raise SystemExit(f"--modes: empty or repeated mode name in {spec!r}")
        modes[name] = options
    return modes


def parse_extra(items):
    from prism_recbole.experiments import parse_options

    try:
        return parse_options(items or [], "--extra")
    except ValueError as err:
        raise SystemExit(str(err))


def parse_config_files(items, datasets):
    """``--config_files``: ``DATASET=FILE[,FILE]`` items, or plain files for every dataset;
    a dataset without any: ``configs/<dataset>.yaml`` when it exists."""
    per_dataset, common = {}, []
    for item in items or []:
        name, sep, files = item.partition("=")
        if sep and not os.path.isfile(item):
            per_dataset.setdefault(name.strip(), []).extend(split_list([files]))
        else:
            common.extend(split_list([item]))
    out = {}
    for dataset in datasets:
        files = per_dataset.get(dataset) or list(common)
        if not files:
            default = os.path.join(REPO, "configs", f"{dataset}.yaml")
            files = [default] if os.path.isfile(default) else []
        for path in files:
            if not os.path.isfile(path):
                raise SystemExit(f"--config_files: {path} (dataset {dataset}) does not exist")
        out[dataset] = [os.path.abspath(p) for p in files]
    return out


def base_options(args, extra):
    """The options shared by every mode of a run (the CLI's, then --extra)."""
    options = {}
    for key, value in (("MAX_ITEM_LIST_LENGTH", args.max_len), ("hidden_size", args.hidden_size),
                       ("learning_rate", args.learning_rate), ("seed", args.seed),
                       ("epochs", args.epochs), ("stopping_step", args.stopping_step),
                       ("train_batch_size", args.train_batch_size)):
        if value is not None:
            options[key] = value
    options.update(extra)
    return options


# --------------------------------------------------------------------------- data


def s3rec_names():
    """Output dataset name -> ``atomic_data.s3rec --name`` (toys, sports, yelp-s3rec)."""
    from atomic_data import s3rec

    return {out_name: name for name, (_, out_name, _) in s3rec.DATASETS.items()}


def _yaml_option(config_files, key):
    import yaml

    value = None
    for path in config_files:
        with open(path) as f:
            value = (yaml.safe_load(f) or {}).get(key, value)
    return value


def ensure_dataset(dataset, config_files, options):
    """For an S3-Rec dataset: build its atomic files with ``atomic_data.s3rec`` when missing.

    Returns the options to add (``data_path`` when it had to be made absolute), else {}.
    """
    names = s3rec_names()
    if dataset not in names:
        return {}
    root = options.get("data_path") or _yaml_option(config_files, "data_path")
    added = {}
    if root is None:  # RecBole's default dataset/, here: the repository's
        root = os.path.join(REPO, "dataset")
        added["data_path"] = root
    inter = os.path.join(root, dataset, f"{dataset}.inter")
    if not os.path.isfile(inter):
        from atomic_data import s3rec

        log(f"[{dataset}] {inter} missing: python -m atomic_data.s3rec --name {names[dataset]} "
            f"--out {root}")
        code = s3rec.main(["--name", names[dataset], "--out", root])
        if code or not os.path.isfile(inter):
            raise SystemExit(f"could not build dataset {dataset} with atomic_data.s3rec "
                             f"(exit code {code}); see atomic_data/S3REC.md")
    return added


# --------------------------------------------------------------------------- training


class EpochClockMixin:
    """Placed before the package's trainer class: times every training and validation epoch
    and records one curve point per validation (see the module docstring)."""

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self.curve, self.train_s, self.valid_s = [], 0.0, 0.0
        self._epoch_train_s = self._epoch_valid_s = 0.0
        self._last_valid_result = {}
        on_epoch = getattr(self, "on_epoch", None)

        def record(epoch_idx, valid_score):
            point = {
                "epoch": int(epoch_idx),
                "wall_s": time.perf_counter() - self.fit_start,
                "train_s": self._epoch_train_s,
                "valid_s": self._epoch_valid_s,
                "train_s_cum": self.train_s,
                "valid_s_cum": self.valid_s,
                "train_loss": float(self.train_loss_dict.get(epoch_idx, math.nan)),
                "valid_ndcg@10": float(self._last_valid_result.get(METRIC, valid_score)),
                "valid_hit@10": float(self._last_valid_result.get(HIT, math.nan)),
                "best": self.cur_step == 0,  # early_stopping reset the counter: a new best
            }
            self.curve.append(point)
            if on_epoch is not None:
                on_epoch(point)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)

        self.fit_start = time.perf_counter()
        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=record)
        finally:
            self.fit_s = time.perf_counter() - self.fit_start

    def _train_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._train_epoch(*args, **kwargs)
        finally:
            self._epoch_train_s = time.perf_counter() - start
            self.train_s += self._epoch_train_s

    def _valid_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            score, result = super()._valid_epoch(*args, **kwargs)
        finally:
            self._epoch_valid_s = time.perf_counter() - start
            self.valid_s += self._epoch_valid_s
        self._last_valid_result = {str(k).lower(): v for k, v in result.items()}
        return score, result


_CLOCKED = {}


def clocked(trainer_class):
    """``trainer_class`` with :class:`EpochClockMixin` in front."""
    if trainer_class not in _CLOCKED:
        _CLOCKED[trainer_class] = type("Clocked" + trainer_class.__name__,
                                       (EpochClockMixin, trainer_class), {})
    return _CLOCKED[trainer_class]


def train_run(model_name, dataset, mode, config_files, options, work_dir, keep_checkpoint=False):
    """One run: the package's Config, data, model and trainer (as ``quick_start.run`` does),
    with the clocked trainer.  Returns ``(row, curve)``."""
    from recbole.utils import init_seed

    from prism_recbole.config import Config
    from prism_recbole.logger import init_logger
    from prism_recbole.quick_start import build_model, load_data, set_reproducibility_flags
    from prism_recbole.utils import get_trainer

    label = f"[{dataset} {model_name} {mode}]"
    config = Config(model=model_name, dataset=dataset, config_file_list=config_files,
                    config_dict=options)
    metrics = [str(m).lower() for m in config["metrics"]]
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if "ndcg" not in metrics or "hit" not in metrics or 10 not in topk:
        raise ValueError(f"the config must evaluate NDCG and Hit at 10 (metrics {config['metrics']}, "
                         f"topk {config['topk']})")
    init_seed(config["seed"], config["reproducibility"])
    set_reproducibility_flags(config)
    log_file = init_logger(config, log_root=os.path.join(work_dir, "log"))

    start = time.perf_counter()
    _, train_data, valid_data, test_data = load_data(config)
    load_s = time.perf_counter() - start
    model = build_model(config, train_data)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = clocked(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)

    def on_epoch(point):
        log(f"{label} epoch {point['epoch']}: valid {METRIC} {point['valid_ndcg@10']:.4f}"
            f"{' (best)' if point['best'] else ''}, train {point['train_s']:.1f} s, valid "
            f"{point['valid_s']:.1f} s, {point['wall_s']:.1f} s since start")

    trainer.on_epoch = on_epoch
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    test_s = time.perf_counter() - start
    test_result = {str(k).lower(): v for k, v in test_result.items()}
    if not keep_checkpoint and os.path.isfile(trainer.saved_model_file):
        os.remove(trainer.saved_model_file)

    curve = trainer.curve
    # the checkpoint RecBole tests: the last epoch that early stopping took as a new best (>=)
    best_point = next((p for p in reversed(curve) if p["best"]), None)
    best_value = best_point["valid_ndcg@10"] if best_point else math.nan
    n = max(len(curve), 1)
    row = {
        "dataset": dataset, "model": model_name, "mode": mode, "status": "ok",
        "seed": config["seed"],
        "best_valid_ndcg@10": best_value,
        "best_epoch": best_point["epoch"] if best_point else None,
        "epochs_run": len(curve),
        "test_ndcg@10": float(test_result[METRIC]),
        "test_hit@10": float(test_result[HIT]),
        "wall_s": trainer.fit_s,
        "train_s": trainer.train_s,
        "valid_s": trainer.valid_s,
        "train_s_per_epoch": trainer.train_s / n,
        "valid_s_per_epoch": trainer.valid_s / n,
        "best_at_s": time_to_reach([(p["wall_s"], p["valid_ndcg@10"]) for p in curve], best_value)
        if best_point else None,  # first reached
        "load_s": load_s,
        "test_s": test_s,
        "train_rows": len(train_data._dataset),
        "params": n_params,
        "device": str(config["device"]),
        "threads": torch.get_num_threads(),
        "max_len": config["MAX_ITEM_LIST_LENGTH"],
        "hidden_size": config["hidden_size"],
        "learning_rate": config["learning_rate"],
        "train_batch_size": config["train_batch_size"],
        "epochs": config["epochs"],
        "stopping_step": config["stopping_step"],
        "log_file": log_file,
        "torch": torch.__version__,
    }
    return row, curve


# --------------------------------------------------------------------------- files


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _atomic_csv(path, columns, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    os.replace(tmp, path)


def _parse_cell(text):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path):
    if not path or not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {k: _parse_cell(v) for k, v in raw.items()}
            for key in ("dataset", "model", "mode", "settings", "status", "mode_options"):
                if key in row and row[key] is not None:
                    row[key] = str(raw[key])
            rows.append(row)
        return rows


def write_results(rows, curves, csv_path, curves_path):
    columns = ROW_COLUMNS + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ROW_COLUMNS]
    _atomic_csv(csv_path, columns, rows)
    curve_rows = []
    for row in rows:
        key = run_key(row)
        for point in curves.get(key, []):
            curve_rows.append(dict(point, dataset=key[0], model=key[1], mode=key[2], settings=key[3]))
    _atomic_csv(curves_path, CURVE_COLUMNS, curve_rows)


# --------------------------------------------------------------------------- report


TABLE_HEADER = ["dataset", "model", "mode", "epochs", "best epoch", "best valid NDCG@10",
                "test NDCG@10", "test HR@10", "wall s", "train s", "valid s", "s/epoch (train)",
                "reaches last's best at s", "ratio to last's wall", "ratio met",
                "best >= last's", "status"]


def _f(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in rows:
        reach = r.get("reach_last_best_s")
        if _is_num(reach):
            reach = f"{reach:.1f} (epoch {r.get('reach_last_best_epoch')})"
        cells = [r["dataset"], r["model"], r["mode"], _f(r.get("epochs_run")), _f(r.get("best_epoch")),
                 _f(r.get("best_valid_ndcg@10")), _f(r.get("test_ndcg@10")), _f(r.get("test_hit@10")),
                 _f(r.get("wall_s"), 1), _f(r.get("train_s"), 1), _f(r.get("valid_s"), 1),
                 _f(r.get("train_s_per_epoch"), 2), _f(reach, 1), _f(r.get("reach_ratio"), 3),
                 _f(r.get("reach_ratio_target_met")), _f(r.get("best_valid_ge_last")),
                 str(r.get("status"))]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def report(rows, args, target_ratio):
    print("## Time to quality: train_positions all vs last")
    print()
    print(f"- threads: {torch.get_num_threads()}; torch {torch.__version__}; early stopping on "
          f"valid NDCG@10 (validation every epoch; wall s = training + validation + checkpoints "
          f"since the start of fit)")
    print(f"- target: an all-* mode reaches last's best valid NDCG@10 within "
          f"{target_ratio:g} x last's wall time")
    print()
    print(markdown_table(rows))
    for r in rows:
        if r.get("mode") == REFERENCE_MODE or r.get("status") != "ok" or r.get("last_wall_s") is None:
            continue
        ratio = r.get("reach_ratio")
        verdict = ("never reaches it" if not _is_num(ratio) else
                   f"ratio {ratio:.3f} {'met' if r['reach_ratio_target_met'] else 'NOT met'}")
        print(f"{r['dataset']} {r['model']} {r['mode']}: last's best {r['last_best_valid_ndcg@10']:.4f} "
              f"(last: {r['last_wall_s']:.1f} s) -> {verdict}; own best "
              f"{r['best_valid_ndcg@10']:.4f} {'>=' if r['best_valid_ge_last'] else '<'} last's")


def plot_curves(rows, curves, path):
    """Valid NDCG@10 against wall time: one panel per dataset x model, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows if curves.get(run_key(r))))
    if not panels:
        return None
    cols = min(2, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(6.0 * cols, 4.2 * n_rows), squeeze=False)
    for ax, (dataset, model) in zip(axes.flat, panels):
        for r in rows:
            if (r["dataset"], r["model"]) != (dataset, model):
                continue
            points = curves.get(run_key(r), [])
            if not points:
                continue
            xs = [p["wall_s"] for p in points]
            ys = [p["valid_ndcg@10"] for p in points]
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=r["mode"])
            if r["mode"] == REFERENCE_MODE and _is_num(r.get("best_valid_ndcg@10")):
                ax.axhline(r["best_valid_ndcg@10"], color=line.get_color(), linestyle="--",
                           linewidth=0.8, label=f"{REFERENCE_MODE}'s best")
            if _is_num(r.get("reach_last_best_s")):
                ax.axvline(r["reach_last_best_s"], color=line.get_color(), linestyle=":",
                           linewidth=0.8)
        ax.set_title(f"{dataset} / {model}", fontsize=10)
        ax.set_xlabel("wall-clock s since training start (train + valid)")
        ax.set_ylabel("valid NDCG@10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- main


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["SASRec", "PRISM_SASRec"])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k-mm", "toys"])
    parser.add_argument("--modes", nargs="+", default=list(MODES),
                        help=f"{', '.join(MODES)} or NAME:key=value,... (default: %(default)s)")
    parser.add_argument("--config_files", nargs="+", default=None, metavar="[DATASET=]FILE[,FILE]",
                        help="YAML files per dataset (DATASET=FILE,...) or for all; default "
                             "configs/<dataset>.yaml")
    parser.add_argument("--max_len", type=int, default=None,
                        help="MAX_ITEM_LIST_LENGTH (default: the config's)")
    parser.add_argument("--hidden_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's")
    parser.add_argument("--epochs", type=int, default=200, help="most epochs (default: %(default)s)")
    parser.add_argument("--stopping_step", type=int, default=None,
                        help="early stopping patience in epochs (default: the config's)")
    parser.add_argument("--train_batch_size", type=int, default=None, help="default: the config's")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="options for every run (YAML values); a mode's own options win")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--target", type=float, default=0.25,
                        help="target for time to last's best / last's wall time (default: %(default)s)")
    parser.add_argument("--csv", default=os.path.join("results", "time_to_quality.csv"))
    parser.add_argument("--curves_csv", default=None,
                        help="per-epoch curves (default: <csv stem>-curves.csv)")
    parser.add_argument("--plot", default=None, metavar="PNG", help="write the curves' plot")
    parser.add_argument("--work_dir", default=None,
                        help="logs and checkpoints (default: a temporary folder, removed at the end)")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="keep each run's best checkpoint in --work_dir/saved")
    parser.add_argument("--resume", action="store_true",
                        help="keep --csv's rows and skip the runs already there with status ok "
                             "(same dataset, model, mode and options); failed runs are rerun")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models, datasets = split_list(args.models), split_list(args.datasets)
    modes = parse_modes(args.modes)
    extra = parse_extra(args.extra)
    config_files = parse_config_files(args.config_files, datasets)
    curves_path = args.curves_csv or os.path.splitext(args.csv)[0] + "-curves.csv"

    from prism_recbole.utils import get_model

    for name in models:  # fail before any training
        try:
            get_model(name)
        except ValueError as err:
            raise SystemExit(f"--models {name!r}: {err}")

    rows, curves = [], {}
    if args.resume:
        rows = read_csv(args.csv)  # failed runs stay in the table until they are rerun
        for point in read_csv(curves_path):
            key = run_key(point)
            curves.setdefault(key, []).append(
                {k: v for k, v in point.items() if k not in ("dataset", "model", "mode", "settings")})
    done = {run_key(r) for r in rows if r.get("status") == "ok"}
    if args.resume:
        log(f"--resume: {len(done)} finished runs in {args.csv}")

    own_work_dir = args.work_dir is None
    work_dir = tempfile.mkdtemp(prefix="bench_ttq-") if own_work_dir else os.path.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our options as its own
    plan = [(d, m, mode) for d in datasets for m in models for mode in modes]
    try:
        for step, (dataset, model_name, mode) in enumerate(plan, start=1):
            mode_options = modes[mode]
            shared = base_options(args, extra)
            settings = settings_of(shared)  # before a machine's own data_path is added
            shared.update(ensure_dataset(dataset, config_files[dataset], shared))
            key = (dataset, model_name, mode, settings)
            if key in done:
                log(f"=== [{step}/{len(plan)}] {dataset} {model_name} {mode}: in {args.csv}, skipped")
                continue
            overridden = sorted(k for k in mode_options if k in extra and extra[k] != mode_options[k])
            if overridden:
                log(f"mode {mode} sets {', '.join(overridden)} itself: --extra ignored for those")
            options = dict(shared)
            options.update(mode_options)
            options.update(FIXED_OPTIONS)
            options["checkpoint_dir"] = os.path.join(work_dir, "saved")
            log(f"=== [{step}/{len(plan)}] {dataset} {model_name} {mode}: {settings_of(mode_options)}")
            try:
                row, curve = train_run(model_name, dataset, mode, config_files[dataset], options,
                                       work_dir, keep_checkpoint=args.keep_checkpoints)
            except Exception as err:  # reported as a row; the other runs go on
                message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                log(f"{dataset} {model_name} {mode} failed: {message}")
                traceback.print_exc(file=sys.stderr)
                row, curve = {"dataset": dataset, "model": model_name, "mode": mode,
                              "status": f"failed: {message}"}, []
            if own_work_dir:  # removed at the end
                row.pop("log_file", None)
            row["settings"] = settings
            row["mode_options"] = settings_of(mode_options)
            rows = [r for r in rows if run_key(r) != key] + [row]
            curves[key] = curve
            compare_to_reference(rows, curves, args.target)
            write_results(rows, curves, args.csv, curves_path)
            if args.plot:
                plot_curves(rows, curves, args.plot)
    finally:
        sys.argv = saved_argv
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    order = {k: i for i, k in enumerate(plan)}
    rows.sort(key=lambda r: order.get((r["dataset"], r["model"], r["mode"]), len(order)))
    compare_to_reference(rows, curves, args.target)
    write_results(rows, curves, args.csv, curves_path)
    png = plot_curves(rows, curves, args.plot) if args.plot else None
    report(rows, args, args.target)
    print(f"\nwrote {args.csv} and {curves_path}" + (f" and {png}" if png else ""))
    return rows


if __name__ == "__main__":
    main()
