"""Fusion-weight report: which experts the gate of a trained model picks, per test user.

For a checkpoint written by :func:`prism_recbole.quick_start.run`, the model is rebuilt with
:func:`~prism_recbole.quick_start.load_model` and run over its test split exactly as RecBole's
full-sort evaluation runs it (eval mode, ``torch.no_grad``, ``full_sort_predict`` on each
batch of ``test_data``); after each batch the model exposes the gate weights of its users:

* PRISM models (``PRISM_<Backbone>``): ``model.prism_gate_weights [B, K]`` over the experts
  ``model.prism_expert_names`` (``unique_<modality>`` ..., ``synergy``, ``redundancy``).
  ``prism_fusion: uniform`` has fixed weights 1/K (reported, with a note); ``prism_fusion:
  none`` has no experts and no gate and is refused.
* MMSR: ``model.mmsr_gate_weights [B, 2]``, its update gate at the last item's node (the node
  the user vector is read from) over the two propagation orders, named ``homo_then_hetero``
  (o^AB) and ``hetero_then_homo`` (o^BA).

Written to ``out_dir`` (file names start with ``prefix``, by default the checkpoint's name):

* ``<prefix>.users.csv``: one row per test sequence (one per user with a leave-one-out split):
  user token, history length (``item_length``, capped at ``MAX_ITEM_LIST_LENGTH``), its
  length bucket, ``w_<expert>`` per expert, the argmax expert (``tie`` when the largest
  weight is shared, as with uniform fusion);
* ``<prefix>.summary.csv`` and ``<prefix>.summary.md``: per group (all users, then each
  history-length bucket) the number of users, mean (and std) weight per expert and the share
  of users whose largest weight is each expert;
* ``<prefix>.png``: box plot of each expert's weight over the users, and the mean weight per
  expert in each history-length bucket.
"""
import csv
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

DEFAULT_BUCKET_EDGES = (5, 10, 20, 50)
MMSR_GATE_NAMES = ("homo_then_hetero", "hetero_then_homo")  # order of mmsr_gate_weights
TIE = "tie"


# --------------------------------------------------------------------------- which models


def _supported_models_text():
    from prism_recbole.utils import list_prism_models

    try:
        prism = ", ".join(name for name in list_prism_models() if name.startswith("PRISM_"))
    except Exception:  # a model module that does not import must not hide the real message
        prism = "PRISM_<Backbone>, e.g. PRISM_SASRec"
    return (f"the fusion report supports the PRISM models ({prism}) with "
            "prism_fusion adaptive or uniform, and MMSR")


def _model_class(name):
    from prism_recbole.utils import get_model

    return get_model(name)


def _is_prism(cls_or_model):
    from prism_recbole.model.plugin import PRISMPlugin

    cls = cls_or_model if isinstance(cls_or_model, type) else type(cls_or_model)
    return issubclass(cls, PRISMPlugin)


def _is_mmsr(cls_or_model):
    from prism_recbole.model.sequential_recommender.mmsr import MMSR

    cls = cls_or_model if isinstance(cls_or_model, type) else type(cls_or_model)
    return issubclass(cls, MMSR)


def _no_fusion_none(where, name):
    return ValueError(
        f"{where}: {name} was trained with prism_fusion: none (the features-only ablation): "
        "it has no experts and no gate, so there are no fusion weights to report"
    )


def check_stored_config(stored, where="checkpoint"):
    """Refuse, before any data is loaded, a checkpoint whose model has no readable gate."""
    name = stored.get("model")
    if not name:
        raise ValueError(f"{where}: the stored configuration names no model")
    cls = _model_class(str(name))
    if not (_is_prism(cls) or _is_mmsr(cls)):
        raise ValueError(f"{where}: model {name} has no fusion gate; {_supported_models_text()}")
    if _is_prism(cls) and str(stored.get("prism_fusion") or "adaptive") == "none":
        raise _no_fusion_none(where, name)


@dataclass
class GateReader:
    """How to read a model's per-user gate weights after one of its calls."""
    attribute: str
    names: List[str]
    fusion: str  # "adaptive", "uniform" or "mmsr"


def gate_reader(model, where="model"):
    """The :class:`GateReader` of a loaded model, or ValueError when it has no gate."""
    if _is_prism(model):
        fusion = model.prism.fusion
        if fusion == "none" or not model.prism_expert_names:
            raise _no_fusion_none(where, type(model).__name__)
        return GateReader("prism_gate_weights", list(model.prism_expert_names), fusion)
    if _is_mmsr(model):
        return GateReader("mmsr_gate_weights", list(MMSR_GATE_NAMES), "mmsr")
    raise ValueError(
        f"{where}: model {type(model).__name__} has no fusion gate; {_supported_models_text()}"
    )


# --------------------------------------------------------------------------- gate weights


def collect_gate_weights(model, eval_data, reader=None):
    """Gate weights of every sequence of ``eval_data``, computed as the evaluation does.

    Iterates the full-sort loader like RecBole's ``Trainer.evaluate`` (``model.eval()``,
    ``torch.no_grad()``, ``model.full_sort_predict(interaction)``) and reads the gate the
    model stored during that call.

    Returns:
        (uids int64 [N] internal user ids, lengths int64 [N] ``item_length``,
        weights float64 [N, K] in the order ``reader.names``).
    """
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    reader = reader or gate_reader(model)
    if not isinstance(eval_data, FullSortEvalDataLoader):
        raise ValueError(
            "the fusion report needs full-sort evaluation (eval_args mode: full); the test "
            f"data loader here is {type(eval_data).__name__}"
        )
    uid_field = eval_data._dataset.uid_field
    was_training = model.training
    model.eval()
    uids, lengths, weights = [], [], []
    try:
        with torch.no_grad():
            for batch in eval_data:
                interaction = batch[0].to(model.device)
                setattr(model, reader.attribute, None)
                model.full_sort_predict(interaction)
                gate = getattr(model, reader.attribute)
                if gate is None or gate.dim() != 2 or gate.shape != (len(interaction), len(reader.names)):
                    raise RuntimeError(
                        f"{type(model).__name__}.full_sort_predict did not leave gate weights "
                        f"[{len(interaction)}, {len(reader.names)}] in model.{reader.attribute} "
                        f"(got {None if gate is None else tuple(gate.shape)})"
                    )
                uids.append(interaction[uid_field].cpu().numpy())
                lengths.append(interaction[model.ITEM_SEQ_LEN].cpu().numpy())
                weights.append(gate.double().cpu().numpy())
    finally:
        model.train(was_training)
    if not uids:
        raise ValueError("the test split has no users")
    return (np.concatenate(uids).astype(np.int64), np.concatenate(lengths).astype(np.int64),
            np.concatenate(weights))


# --------------------------------------------------------------------------- buckets, summary


@dataclass
class Bucket:
    lo: int
    hi: int
    label: str
    capped: bool = False

    def contains(self, lengths):
        return (lengths >= self.lo) & (lengths <= self.hi)


def length_buckets(max_len, edges=DEFAULT_BUCKET_EDGES):
    """History-length buckets partitioning ``1 .. max_len``.

    ``edges`` are the upper ends of the first buckets (``(5, 10, 20, 50)``: 1-5, 6-10, 11-20,
    21-50); edges at or above ``max_len`` are dropped, and the sequences cut at
    ``MAX_ITEM_LIST_LENGTH`` (``item_length == max_len``: a history of ``max_len`` items *or
    more*) get a bucket of their own, ``<max_len>+ (capped)``.
    """
    max_len = int(max_len)
    if max_len < 1:
        raise ValueError(f"MAX_ITEM_LIST_LENGTH must be >= 1, got {max_len}")
    cuts = sorted({int(e) for e in edges if 0 < int(e) < max_len})
    buckets, lo = [], 1
    for hi in cuts + [max_len - 1]:
        if hi >= lo:
            buckets.append(Bucket(lo, hi, f"{lo}-{hi}" if hi > lo else f"{lo}"))
            lo = hi + 1
    buckets.append(Bucket(max_len, max_len, f"{max_len}+ (capped)", capped=True))
    return buckets


def argmax_labels(weights, names):
    """The expert with the largest weight per row, or ``tie`` when several share it."""
    top = weights.max(axis=1, keepdims=True)
    n_top = (weights == top).sum(axis=1)
    best = weights.argmax(axis=1)
    return [TIE if n > 1 else names[b] for n, b in zip(n_top, best)]


def group_stats(label, bucket, weights, argmax, names):
    """One summary row: n, mean/std weight and argmax share per expert (NaN for no users)."""
    n = len(weights)
    row = {"group": label, "lo": bucket.lo if bucket else "", "hi": bucket.hi if bucket else "",
           "n_users": n}
    for k, name in enumerate(names):
        row[f"mean_{name}"] = float(weights[:, k].mean()) if n else math.nan
    for k, name in enumerate(names):
        row[f"std_{name}"] = float(weights[:, k].std()) if n else math.nan
    for name in list(names) + [TIE]:
        row[f"share_{name}"] = (sum(a == name for a in argmax) / n) if n else math.nan
    return row


def summarize(weights, lengths, argmax, names, buckets):
    """Summary rows: all users first, then one per bucket (empty buckets included)."""
    argmax = np.asarray(argmax, dtype=object)
    rows = [group_stats("all", None, weights, list(argmax), names)]
    for bucket in buckets:
        mask = bucket.contains(lengths)
        rows.append(group_stats(bucket.label, bucket, weights[mask], list(argmax[mask]), names))
    return rows


# --------------------------------------------------------------------------- the report


@dataclass
class FusionReport:
    """What :func:`fusion_report` returns (also written to ``paths``)."""
    model: str
    dataset: str
    checkpoint: str
    fusion: str  # adaptive, uniform, mmsr
    expert_names: List[str]
    max_len: int
    users: List[str]  # user tokens, one per test sequence
    lengths: np.ndarray  # item_length per test sequence
    weights: np.ndarray  # [N, K]
    argmax: List[str]
    buckets: List[Bucket]
    summary: List[Dict]  # rows of the summary CSV: "all" then the buckets
    notes: List[str]
    markdown: str
    paths: Dict[str, str] = field(default_factory=dict)

    def user_bucket(self):
        """The bucket label of each user."""
        labels = np.empty(len(self.lengths), dtype=object)
        for bucket in self.buckets:
            labels[bucket.contains(self.lengths)] = bucket.label
        return list(labels)


def _fmt(x, digits=3):
    return "–" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def render_markdown(report):
    names = report.expert_names
    what = "fusion orders of MMSR's update gate" if report.fusion == "mmsr" else \
        f"experts (prism_fusion: {report.fusion})"
    n_users = len(set(report.users))
    count = f"{n_users} test users" if n_users == len(report.users) else \
        f"{len(report.users)} test sequences of {n_users} users"
    lines = [
        f"## Fusion weights: {report.model} on {report.dataset}",
        "",
        f"Checkpoint `{os.path.basename(report.checkpoint)}`; {count}; gate weights over "
        f"{len(names)} {what}, computed in eval mode on the input sequences of the test "
        "split (as the full-sort test evaluation computes them).",
        f"History length = `item_length`, the length of the input sequence, which is capped at "
        f"MAX_ITEM_LIST_LENGTH = {report.max_len}: the bucket `{report.buckets[-1].label}` holds "
        f"every user with {report.max_len} or more past items.",
    ]
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    show_tie = any(row[f"share_{TIE}"] > 0 for row in report.summary if row["n_users"])
    tables = [
        ("Mean gate weight per expert", "mean", names),
        ("Share of users whose largest weight is each expert", "share",
         list(names) + ([TIE] if show_tie else [])),
    ]
    for title, key, columns in tables:
        head = ["users", "n"] + [f"`{c}`" for c in columns]
        lines += ["", f"### {title}", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for row in report.summary:
            cells = [row["group"], str(row["n_users"])]
            cells += [_fmt(row[f"{key}_{c}"], 4 if key == "mean" else 3) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Files: " + ", ".join(f"`{os.path.basename(p)}`" for p in report.paths.values())]
    return "\n".join(lines) + "\n"


def _write_users_csv(path, report):
    names = report.expert_names
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "history_length", "bucket"] + [f"w_{n}" for n in names] + ["argmax"])
        for user, length, bucket, w, best in zip(report.users, report.lengths, report.user_bucket(),
                                                  report.weights, report.argmax):
            # 9 significant digits: the float32 gate weights round-trip exactly
            writer.writerow([user, int(length), bucket] + [f"{x:.9g}" for x in w] + [best])


def _write_summary_csv(path, report):
    columns = list(report.summary[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in report.summary:
            writer.writerow([
                ("" if math.isnan(v) else f"{v:.9g}") if isinstance(v, float) else v
                for v in (row[c] for c in columns)
            ])


def plot_report(report, path):
    """Box plot of each expert's weight, and mean weight per expert per bucket (PNG, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = report.expert_names
    K = len(names)
    filled = [(b, row) for b, row in zip(report.buckets, report.summary[1:]) if row["n_users"]]
    fig = Figure(figsize=(6 + 0.9 * K + 0.6 * len(filled), 4.8))
    FigureCanvasAgg(fig)
    ax_box, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.25]})

    ax_box.boxplot([report.weights[:, k] for k in range(K)], showmeans=True)
    ax_box.set_xticks(range(1, K + 1), names, rotation=25, ha="right")
    ax_box.axhline(1.0 / K, color="grey", linestyle="--", linewidth=1, label="1/K")
    ax_box.set_ylabel("gate weight")
    ax_box.set_title(f"weight per user ({len(report.users)} test users; \u25b2 mean)")
    ax_box.legend(loc="best", fontsize="small")

    colors = [f"C{k}" for k in range(K)]
    width = 0.8 / K
    x = np.arange(len(filled))
    for k, name in enumerate(names):
        means = [row[f"mean_{name}"] for _, row in filled]
        ax_bar.bar(x + (k - (K - 1) / 2) * width, means, width, label=name, color=colors[k])
    ax_bar.axhline(1.0 / K, color="grey", linestyle="--", linewidth=1)
    ax_bar.set_xticks(x, [f"{b.label}\nn={row['n_users']}" for b, row in filled], fontsize="small")
    ax_bar.set_xlabel(f"history length (item_length, capped at {report.max_len})")
    ax_bar.set_ylabel("mean gate weight")
    ax_bar.set_title("mean weight per history-length bucket")
    ax_bar.legend(loc="best", fontsize="small")

    fig.suptitle(f"{report.model} on {report.dataset}: {os.path.basename(report.checkpoint)}",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def _load(checkpoint, config_dict):
    from prism_recbole.quick_start import LoadedModel, load_model
    from prism_recbole.trainer import load_checkpoint

    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    # cheap checks on the stored configuration before the dataset is built
    stored = dict(load_checkpoint(checkpoint)["config"])
    stored.update(config_dict or {})
    check_stored_config(stored, where=str(checkpoint))
    return load_model(checkpoint, config_dict=config_dict)


def fusion_report(checkpoint, out_dir, bucket_edges: Sequence[int] = DEFAULT_BUCKET_EDGES,
                  config_dict: Optional[dict] = None, prefix: Optional[str] = None,
                  plot: bool = True, echo: bool = False) -> FusionReport:
    """Per-user gate weights of a trained PRISM (or MMSR) model on its test users.

    Args:
        checkpoint: path of a checkpoint written by ``run`` (or a ``LoadedModel``).
        out_dir: folder for the CSV, Markdown and PNG files (created).
        bucket_edges: upper ends of the history-length buckets (see :func:`length_buckets`).
        config_dict: options overriding the stored ones, e.g. ``{"data_path": ...}``.
        prefix: start of the file names (default: the checkpoint's name without ``.pth``).
        plot: write the PNG.
        echo: print the Markdown summary.

    Returns:
        :class:`FusionReport` (``summary`` rows, per-user arrays, ``markdown``, ``paths``).

    Raises:
        ValueError: the model has no readable gate (not a PRISM model or MMSR, or PRISM with
            ``prism_fusion: none``), or the test split is not evaluated by full sort.
        FileNotFoundError, UnsafeCheckpointError: see ``load_checkpoint``.
    """
    loaded = _load(checkpoint, config_dict)
    model, config, dataset = loaded.model, loaded.config, loaded.dataset
    reader = gate_reader(model, where=str(loaded.checkpoint))
    uids, lengths, weights = collect_gate_weights(model, loaded.test_data, reader)
    users = [str(t) for t in dataset.id2token(dataset.uid_field, uids)]
    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    if lengths.min() < 1 or lengths.max() > max_len:
        raise RuntimeError(f"history lengths {lengths.min()}..{lengths.max()} outside 1..{max_len}")
    buckets = length_buckets(max_len, bucket_edges)
    names = reader.names
    argmax = argmax_labels(weights, names)
    notes = []
    if reader.fusion == "uniform":
        notes.append(f"prism_fusion: uniform has no gate: every weight is fixed at 1/K = "
                     f"1/{len(names)}, so every user's largest weight is a tie; the numbers "
                     "below only confirm that.")
    elif reader.fusion == "mmsr":
        notes.append("MMSR's update gate weighs its two propagation orders at the node of the "
                     "user's last item, where the user vector is read: `homo_then_hetero` = "
                     "o^AB, `hetero_then_homo` = o^BA (last layer).")
    report = FusionReport(
        model=str(config["model"]), dataset=str(config["dataset"]),
        checkpoint=str(loaded.checkpoint), fusion=reader.fusion, expert_names=list(names),
        max_len=max_len, users=users, lengths=lengths, weights=weights, argmax=argmax,
        buckets=buckets, summary=summarize(weights, lengths, argmax, names, buckets),
        notes=notes, markdown="",
    )
    os.makedirs(out_dir, exist_ok=True)
    if prefix is None:
        prefix = os.path.splitext(os.path.basename(report.checkpoint))[0]
    base = os.path.join(out_dir, prefix)
    report.paths = {"users_csv": base + ".users.csv", "summary_csv": base + ".summary.csv",
                    "summary_md": base + ".summary.md"}
    if plot:
        report.paths["plot"] = base + ".png"
    _write_users_csv(report.paths["users_csv"], report)
    _write_summary_csv(report.paths["summary_csv"], report)
    report.markdown = render_markdown(report)
    with open(report.paths["summary_md"], "w", encoding="utf-8") as f:
        f.write(report.markdown)
    if plot:
        plot_report(report, report.paths["plot"])
    if echo:
        print(report.markdown)
    return report
