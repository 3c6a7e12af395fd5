"""Where the gain comes from: per-group NDCG@K / HR@K of two (or more) checkpoints.

For checkpoints written by :func:`prism_recbole.quick_start.run` on the same dataset (e.g. the
full PRISM_SASRec, its ``prism_fusion: none`` variant and SASRec), every model is rebuilt with
:func:`~prism_recbole.quick_start.load_model` and evaluated on the test (or valid) split with
RecBole's full-ranking protocol, exactly as ``Trainer.evaluate`` runs it for a sequential
model (``recbole.trainer.Trainer._full_sort_batch_eval`` and the ``rec.topk`` collector):

* the batches of the split's ``FullSortEvalDataLoader`` in their order (one row per test
  interaction: the input sequence and its target item), ``model.eval()``, ``torch.no_grad()``;
* ``scores = model.full_sort_predict(interaction)`` over all items, ``scores[:, 0] = -inf``
  (the padding item); for sequential models the loader gives no history index, so items of
  the user's history are **not** masked (a history index, if a loader gave one, is applied as
  the trainer does);
* the top ``max(topk)`` items by ``torch.topk`` (``topk`` of the checkpoint's config, at least
  K), whose tie order decides a hit as in RecBole.

The rank of the target is its position in that top list, or, when it is not there,
``max(max(topk) + 1, 1 + #items scoring strictly higher)``.  Per row: ``NDCG@K = 1/log2(rank+1)``
when ``rank <= K`` else 0 (one relevant item, so IDCG = 1) and ``HR@K = [rank <= K]``; their
mean over all rows is RecBole's NDCG@K / Hit@K of that split (before its rounding to
``metric_decimal_place``).

Rows (test sequences; one per user with a leave-one-out split) are grouped by:

1. **history length**: ``item_length``, the length of the model's input sequence, which RecBole
   caps at ``MAX_ITEM_LIST_LENGTH`` (L; the largest L of the models when they differ).  Bins are
   given by their lower ends (default 1 5 10 20: 1-4, 5-9, 10-19, 20+) or as ``qN`` (N quantile
   bins of the lengths); bins are cut at L and the rows with ``item_length == L`` (L or more
   past items) get the bin ``L+`` of their own.
2. **target popularity**: the number of *training interactions* of the target item: every
   occurrence of the item as the target of one of RecBole's prefix rows that precede the user's
   validation and test rows, plus every occurrence as the first item of a user's sequence
   (RecBole's sequential augmentation keeps a user's first interaction only as input history).
   With a leave-one-out split that is every interaction of every user before the user's
   validation interaction; validation and test interactions are not counted.  Counted on the
   whole dataset, so it is the same for ``train_positions: all`` (whose training split keeps
   only windows of rows) as for RecBole's default.  Default bins
   0, 1-4, 5-19, 20+ (lower ends 0 1 5 20), or ``qN``.
3. **missing modality**: for each modality field of the dataset (``dataset.modality_missing``,
   the items without a vector for it), targets missing it vs targets that have it.

PRISM models (and MMSR) also get the mean fusion weight of each expert per group (the gate
weights ``model.prism_gate_weights`` left by the same ``full_sort_predict`` call; see
:mod:`prism_recbole.fusion_report`); ``prism_fusion: none`` and models without a gate have none.

Interventions (``interventions=``, ``--interventions``): the first checkpoint, a PRISM model with
experts and a gate, is evaluated again with one part changed, each as one more column: its
fused vector z off (``no_fusion``: the backbone still gets Σ_m x^m_t), another user's z
(``swap_fusion``: the batch rolled by one), or equal expert weights (``uniform_gate``).  Ratios
near 1 mean the trained model does not use that part, whatever its training cost.

Output: :class:`GroupReport` with one row per group (``rows``), a Markdown table, and
optionally a CSV of the rows, a CSV per test row and a bar chart (PNG).
"""
import csv
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from prism_recbole.data.positions import rank_in_user

DEFAULT_LENGTH_BINS = (1, 5, 10, 20)
DEFAULT_POPULARITY_BINS = (0, 1, 5, 20)
DEFAULT_K = 10
SPLITS = ("test", "valid")
KIND_TITLES = {"all": "all", "history_length": "history length",
               "target_popularity": "target popularity"}


# --------------------------------------------------------------------------- bins


@dataclass
class Bin:
    lo: int
    hi: Optional[int]  # None: open-ended
    label: str
    capped: bool = False

    def contains(self, values):
        values = np.asarray(values)
        inside = values >= self.lo
        if self.hi is not None:
            inside &= values <= self.hi
        return inside


def _label(lo, hi):
    if hi is None:
        return f"{lo}+"
    return f"{lo}" if hi == lo else f"{lo}-{hi}"


def parse_bins(spec, what="bins"):
    """``spec``: lower ends (ints, or strings of ints), or ``"qN"`` / ``["qN"]`` (N quantile
    bins).  Returns a sorted list of ints, or ``("quantiles", N)``."""
    if isinstance(spec, str):
        spec = [spec]
    spec = list(spec)
    if not spec:
        raise ValueError(f"{what}: give at least one lower end, or qN for N quantile bins")
    if len(spec) == 1 and isinstance(spec[0], str):
        match = re.fullmatch(r"\s*q(?:uantiles?:?)?(\d+)\s*", spec[0], flags=re.I)
        if match:
            n = int(match.group(1))
            if n < 1:
                raise ValueError(f"{what}: qN needs N >= 1, got {spec[0]!r}")
            return ("quantiles", n)
    lows = []
    for item in spec:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not an integer lower end (or qN for N "
                             "quantile bins)") from None
        lows.append(value)
    return sorted(set(lows))


def quantile_lows(values, n):
    """Lower ends of ``n`` quantile bins of integer ``values`` (ties merge bins)."""
    values = np.asarray(values)
    if not len(values):
        return [0]
    qs = np.quantile(values, np.arange(n) / n, method="lower")
    return sorted({int(q) for q in qs})


def make_bins(lows, minimum, cap=None):
    """Bins from their lower ends; ``minimum`` is added when the first end is above it (every
    value is then in one bin).  With ``cap``: bins are cut at ``cap - 1`` and the values
    ``>= cap`` get the bin ``cap+`` (``capped``)."""
    lows = sorted({int(x) for x in lows})
    if lows and lows[0] < minimum:
        raise ValueError(f"bin lower ends must be >= {minimum}, got {lows[0]}")
    if not lows or lows[0] > minimum:
        lows.insert(0, minimum)
    bins = []
    for k, lo in enumerate(lows):
        hi = lows[k + 1] - 1 if k + 1 < len(lows) else None
        if cap is not None:
            if lo >= cap:
                break
            if hi is None or hi >= cap:
                hi = cap - 1
        bins.append(Bin(lo, hi, _label(lo, hi)))
    if cap is not None:
        bins.append(Bin(int(cap), None, _label(int(cap), None), capped=True))
    return bins


def _resolve_bins(spec, values, minimum, cap=None, what="bins"):
    lows = parse_bins(spec, what)
    if isinstance(lows, tuple):
        lows = quantile_lows(values, lows[1])
    return make_bins(lows, minimum, cap)


# --------------------------------------------------------------------------- evaluation


@dataclass
class ModelEval:
    """One model's full-ranking evaluation of a split, one entry per row of the split."""
    name: str
    model: str  # model class name
    checkpoint: str
    dataset: str
    max_len: int
    n_items: int  # item_num, padding included
    users: np.ndarray  # user tokens (str)
    targets: np.ndarray  # target item tokens (str)
    target_ids: np.ndarray  # internal ids of the targets in this model's dataset
    lengths: np.ndarray  # item_length
    ranks: np.ndarray  # rank of the target (1 = best)
    ndcg: np.ndarray
    hit: np.ndarray
    expert_names: Optional[List[str]] = None
    weights: Optional[np.ndarray] = None  # [N, K] fusion weights, or None
    fusion: Optional[str] = None
    loaded: object = field(default=None, repr=False)


def _topk_list(config):
    topk = config["topk"]
    if topk is None:
        return []
    if isinstance(topk, (int, np.integer)):
        return [int(topk)]
    return [int(t) for t in topk]


def _is_sequential(config):
    from recbole.utils import ModelType

    return config["MODEL_TYPE"] == ModelType.SEQUENTIAL


def evaluate_model(loaded, split="test", k=DEFAULT_K, name=None, progress=False):
    """Per-row rank, NDCG@k and HR@k of a loaded model on ``split`` (see the module docstring)."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    from prism_recbole.fusion_report import gate_reader

    config, model = loaded.config, loaded.model
    where = str(loaded.checkpoint)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not _is_sequential(config):
        raise ValueError(f"{where}: model {config['model']} is not a sequential model; the "
                         "group report ranks one target item per input sequence")
    eval_data = loaded.test_data if split == "test" else loaded.valid_data
    if eval_data is None or not len(eval_data._dataset):
        raise ValueError(f"{where}: the {split} split is empty")
    if not isinstance(eval_data, FullSortEvalDataLoader):
        raise ValueError(
            f"{where}: the group report needs full-ranking evaluation (eval_args mode: full); "
            f"the {split} data loader is {type(eval_data).__name__}"
        )
    try:
        reader = gate_reader(model, where=where)
    except ValueError:
        reader = None
    dataset = eval_data._dataset
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    tot_item_num = dataset.item_num
    k_top = max(_topk_list(config) + [int(k)])
    if k_top > tot_item_num:
        raise ValueError(f"{where}: top-{k_top} is more than the {tot_item_num} items")
    device = model.device if hasattr(model, "device") else torch.device("cpu")

    batches = eval_data
    if progress:
        from tqdm import tqdm

        batches = tqdm(eval_data, total=len(eval_data), desc=f"{name or config['model']} ({split})")
    uids, targets, lengths, ranks, weights = [], [], [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for interaction, history_index, positive_u, positive_i in batches:
                interaction = interaction.to(device)
                n = len(interaction)
                if reader is not None:
                    setattr(model, reader.attribute, None)
                scores = model.full_sort_predict(interaction)
                scores = scores.view(-1, tot_item_num)
                scores[:, 0] = -np.inf
                if history_index is not None:
                    scores[history_index] = -np.inf
                positive_u = positive_u.to(scores.device)
                positive_i = positive_i.to(scores.device)
                if len(positive_u) != n or not torch.equal(positive_u, torch.arange(n, device=scores.device)):
                    raise ValueError(f"{where}: the {split} loader gives more than one target "
                                     "item per row; the group report needs one per row")
                topk_idx = torch.topk(scores, k_top, dim=-1).indices
                found = topk_idx == positive_i.unsqueeze(1)
                in_top = found.any(dim=1)
                position = found.int().argmax(dim=1) + 1
                target_score = scores.gather(1, positive_i.unsqueeze(1))
                higher = (scores > target_score).sum(dim=1) + 1
                rank = torch.where(in_top, position, torch.clamp(higher, min=k_top + 1))
                ranks.append(rank.cpu().numpy())
                uids.append(interaction[uid_field].cpu().numpy())
                targets.append(positive_i.cpu().numpy())
                lengths.append(interaction[model.ITEM_SEQ_LEN].cpu().numpy())
                if reader is not None:
                    gate = getattr(model, reader.attribute, None)
                    if gate is None or tuple(gate.shape) != (n, len(reader.names)):
                        raise RuntimeError(
                            f"{type(model).__name__}.full_sort_predict did not leave gate weights "
                            f"[{n}, {len(reader.names)}] in model.{reader.attribute} "
                            f"(got {None if gate is None else tuple(gate.shape)})"
                        )
                    weights.append(gate.double().cpu().numpy())
    finally:
        model.train(was_training)
    ranks = np.concatenate(ranks).astype(np.int64)
    target_ids = np.concatenate(targets).astype(np.int64)
    uid_arr = np.concatenate(uids).astype(np.int64)
    hit = (ranks <= k).astype(np.float64)
    ndcg = np.where(ranks <= k, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)
    return ModelEval(
        name=name or str(config["model"]), model=str(config["model"]), checkpoint=where,
        dataset=str(config["dataset"]), max_len=int(config["MAX_ITEM_LIST_LENGTH"]),
        n_items=int(tot_item_num),
        users=np.asarray([str(t) for t in dataset.id2token(uid_field, uid_arr)], dtype=object),
        targets=np.asarray([str(t) for t in dataset.id2token(iid_field, target_ids)], dtype=object),
        target_ids=target_ids, lengths=np.concatenate(lengths).astype(np.int64),
        ranks=ranks, ndcg=ndcg, hit=hit,
        expert_names=list(reader.names) if reader else None,
        weights=np.concatenate(weights) if reader else None,
        fusion=reader.fusion if reader else None, loaded=loaded,
    )


def training_item_counts(loaded):
    """Training interactions per item (internal ids of ``loaded.dataset``), as counted for the
    popularity groups: in RecBole's prefix rows of the whole dataset (one row per target, in
    time order, the user's history before it in ``item_id_list``), each user's rows but the
    last ones that went to validation and test (leave-one-out, or any split in time order) are
    the training interactions: their targets, plus each user's first item (the input of the
    user's first row).  Read from the whole dataset, not from the training split: with
    ``train_positions: all`` the training split keeps only one window of rows per user, whose
    targets alone would undercount every item."""
    full = loaded.dataset.inter_feat
    model = loaded.model
    uid_field, iid_field = loaded.dataset.uid_field, loaded.dataset.iid_field
    n_items = loaded.dataset.item_num
    uids = full[uid_field].numpy().astype(np.int64)
    n_users = int(uids.max(initial=0)) + 1
    # k of each row within its user (the rows are in time order; item_length saturates at
    # MAX_ITEM_LIST_LENGTH, so it cannot tell the rows of a long history apart)
    rank, size = rank_in_user(uids)
    held_out = np.zeros(n_users, dtype=np.int64)
    for data in (loaded.valid_data, loaded.test_data):
        held = data._dataset.inter_feat[uid_field].numpy().astype(np.int64)
        held_out += np.bincount(held, minlength=n_users)
    train = rank < size - held_out[uids]
    counts = np.bincount(full[iid_field].numpy()[train].astype(np.int64), minlength=n_items)
    first = train & (rank == 0)
    counts += np.bincount(full[model.ITEM_SEQ].numpy()[first, 0].astype(np.int64), minlength=n_items)
    return counts


# --------------------------------------------------------------------------- the report


@dataclass
class GroupReport:
    """What :func:`group_report` returns."""
    names: List[str]
    evals: List[ModelEval]
    dataset: str
    split: str
    k: int
    max_len: int
    users: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray  # item_length used for the history-length groups
    popularity: np.ndarray  # training interactions of each row's target
    missing: Dict[str, np.ndarray]  # modality field -> bool per row (target lacks it)
    length_bins: List[Bin]
    popularity_bins: List[Bin]
    rows: List[Dict]
    columns: List[str]
    markdown: str = ""
    paths: Dict[str, str] = field(default_factory=dict)

    def groups(self):
        """``[(kind, label, bool mask over the rows)]`` in the order of ``rows``."""
        out = [("all", "all", np.ones(len(self.users), dtype=bool))]
        out += [("history_length", b.label, b.contains(self.lengths)) for b in self.length_bins]
        out += [("target_popularity", b.label, b.contains(self.popularity))
                for b in self.popularity_bins]
        for f, miss in self.missing.items():
            out += [(f"target_{f}", "missing", miss.copy()), (f"target_{f}", "present", ~miss)]
        return out


def _ratio(a, b):
    if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
        return math.nan
    if b == 0:
        return math.nan if a == 0 else math.inf
    return a / b


def metric_columns(names, k):
    return [c for n in names for c in (f"{n}_ndcg@{k}", f"{n}_hr@{k}")]


def ratio_columns(names, k):
    ref = names[0]
    return [c for n in names[1:] for c in (f"ndcg@{k}_{ref}/{n}", f"hr@{k}_{ref}/{n}")]


def _bounds(kind, label, bins_by_kind):
    for b in bins_by_kind.get(kind, ()):
        if b.label == label:
            return b.lo, ("" if b.hi is None else b.hi)
    return "", ""


def build_rows(report_groups, evals, k, bins_by_kind):
    names = [e.name for e in evals]
    rows = []
    for kind, label, mask in report_groups:
        n = int(mask.sum())
        lo, hi = _bounds(kind, label, bins_by_kind)
        row = {"kind": kind, "group": label, "lo": lo, "hi": hi, "n_users": n}
        for e in evals:
            row[f"{e.name}_ndcg@{k}"] = float(e.ndcg[mask].mean()) if n else math.nan
            row[f"{e.name}_hr@{k}"] = float(e.hit[mask].mean()) if n else math.nan
        ref = names[0]
        for other in names[1:]:
            row[f"ndcg@{k}_{ref}/{other}"] = _ratio(row[f"{ref}_ndcg@{k}"], row[f"{other}_ndcg@{k}"])
            row[f"hr@{k}_{ref}/{other}"] = _ratio(row[f"{ref}_hr@{k}"], row[f"{other}_hr@{k}"])
        for e in evals:
            if e.weights is None:
                continue
            for j, expert in enumerate(e.expert_names):
                row[f"{e.name}_w_{expert}"] = float(e.weights[mask, j].mean()) if n else math.nan
        rows.append(row)
    return rows


def _fmt(x, digits=4):
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if math.isinf(x):
            return "inf"
        return f"{x:.{digits}f}"
    return str(x)


def _group_title(kind, label):
    if kind == "all":
        return "all"
    if kind in KIND_TITLES:
        return f"{KIND_TITLES[kind]} {label}"
    return f"{kind[len('target_'):]} {label}" if kind.startswith("target_") else f"{kind} {label}"


def render_markdown(report):
    names, k = report.names, report.k
    e0 = report.evals[0]
    n_users = len(set(report.users))
    count = (f"{len(report.users)} {report.split} users" if n_users == len(report.users)
             else f"{len(report.users)} {report.split} sequences of {n_users} users")
    models = ", ".join(f"`{e.name}` = {e.model} (`{os.path.basename(e.checkpoint)}`)"
                       for e in report.evals)
    lines = [
        f"## Where the gain comes from: {' vs '.join(names)} on {report.dataset} ({report.split} split)",
        "",
        f"Models: {models}.",
        "",
        f"{count}; full ranking over the {e0.n_items - 1} items as RecBole's full-sort evaluation "
        "of sequential models (padding item excluded, history items not masked); NDCG@"
        f"{k} and HR@{k} per user from the rank of the target, averaged per group.",
        f"History length = `item_length`, the input sequence length, capped at "
        f"MAX_ITEM_LIST_LENGTH = {report.max_len} (the bin `{report.max_len}+` holds every user "
        f"with {report.max_len} or more past items). Target popularity = training interactions "
        "of the target item (every interaction before the user's validation one; valid "
        "and test interactions not counted).",
    ]
    head = ["group", "n"] + [f"{n} {m}@{k}" for n in names for m in ("NDCG", "HR")]
    if len(names) > 1:
        head += [f"{m}@{k} {names[0]}/{n}" for n in names[1:] for m in ("NDCG", "HR")]
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in report.rows:
        cells = [_group_title(row["kind"], row["group"]), str(row["n_users"])]
        cells += [_fmt(row[c]) for c in metric_columns(names, k)]
        cells += [_fmt(row[c], 3) for c in ratio_columns(names, k)]
        lines.append("| " + " | ".join(cells) + " |")
    for e in report.evals:
        if e.weights is None:
            continue
        head = ["group", "n"] + [f"`{x}`" for x in e.expert_names]
        lines += ["", f"### Mean fusion weight per expert: {e.name}"
                  + (" (prism_fusion: uniform, fixed 1/K)" if e.fusion == "uniform" else ""),
                  "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for row in report.rows:
            cells = [_group_title(row["kind"], row["group"]), str(row["n_users"])]
            cells += [_fmt(row[f"{e.name}_w_{x}"]) for x in e.expert_names]
            lines.append("| " + " | ".join(cells) + " |")
    if report.paths:
        lines += ["", "Files: " + ", ".join(f"`{p}`" for p in report.paths.values())]
    return "\n".join(lines) + "\n"


def _cell(v):
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf"
        return f"{v:.10g}"
    return v


def write_csv(report, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(report.columns)
        for row in report.rows:
            writer.writerow([_cell(row.get(c, math.nan)) for c in report.columns])


def write_users_csv(report, path):
    """One line per row of the split: groups' inputs and each model's rank, NDCG, HR, weights."""
    k = report.k
    fields = list(report.missing)
    header = ["user", "target", "history_length", "target_popularity"]
    header += [f"target_missing_{f}" for f in fields]
    for e in report.evals:
        header += [f"{e.name}_rank", f"{e.name}_ndcg@{k}", f"{e.name}_hr@{k}"]
        if e.weights is not None:
            header += [f"{e.name}_w_{x}" for x in e.expert_names]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(len(report.users)):
            line = [report.users[i], report.targets[i], int(report.lengths[i]),
                    int(report.popularity[i])]
            line += [int(report.missing[x][i]) for x in fields]
            for e in report.evals:
                line += [int(e.ranks[i]), f"{e.ndcg[i]:.10g}", int(e.hit[i])]
                if e.weights is not None:
                    line += [f"{w:.9g}" for w in e.weights[i]]
            writer.writerow(line)


def plot_report(report, path):
    """Grouped bars of NDCG@k per model, one panel per kind of group (PNG, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k, names = report.k, report.names
    panels = [("history length (item_length)", [r for r in report.rows if r["kind"] == "history_length"]),
              ("target popularity (training interactions)",
               [r for r in report.rows if r["kind"] == "target_popularity"])]
    modality = [r for r in report.rows if r["kind"].startswith("target_") and r["kind"] != "target_popularity"]
    if modality:
        panels.append(("target modality", modality))
    panels = [(t, [r for r in rows if r["n_users"]]) for t, rows in panels]
    panels = [(t, rows) for t, rows in panels if rows]
    widths = [max(2, len(rows)) for _, rows in panels]
    fig = Figure(figsize=(2.5 + 0.55 * len(names) * sum(widths), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    width = 0.8 / len(names)
    for ax, (title, rows) in zip(axes, panels):
        x = np.arange(len(rows))
        for j, name in enumerate(names):
            values = [row[f"{name}_ndcg@{k}"] for row in rows]
            ax.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=name, color=f"C{j}")
        labels = [(_group_title(r["kind"], r["group"]).replace(" ", "\n") if r["kind"].startswith("target_")
                   and r["kind"] != "target_popularity" else r["group"]) + f"\nn={r['n_users']}"
                  for r in rows]
        ax.set_xticks(x, labels, fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(f"NDCG@{k}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(names), fontsize="small")
    fig.suptitle(f"NDCG@{k} per group on {report.dataset} ({report.split} split)", fontsize="medium",
                 x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120, format="png")


def _default_names(loaded_list):
    names = []
    for loaded in loaded_list:
        config = loaded.config
        name = str(config["model"])
        fusion = config["prism_fusion"] if "prism_fusion" in config else None
        from prism_recbole.fusion_report import _is_prism

        if _is_prism(loaded.model) and fusion and str(fusion) != "adaptive":
            name = f"{name}-{fusion}"
        names.append(name)
    seen = {}
    out = []
    for name in names:
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}-{seen[name]}"
        out.append(name)
    return out


def _check_names(names, n):
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"--names: {len(names)} names for {n} checkpoints")
    if len(set(names)) != len(names):
        raise ValueError(f"--names must be distinct, got {' '.join(names)}")
    bad = [x for x in names if not x or "/" in x or "," in x]
    if bad:
        raise ValueError(f"--names: {bad[0]!r} is not a usable name (empty, or with / or ,)")
    return names


def _load_all(checkpoints, config_dict):
    """Load every checkpoint; files and datasets are checked before any data is built."""
    from prism_recbole.quick_start import LoadedModel, load_model
    from prism_recbole.trainer import load_checkpoint

    paths = [c for c in checkpoints if not isinstance(c, LoadedModel)]
    missing = [str(p) for p in paths if not os.path.isfile(str(p))]
    if missing:
        raise FileNotFoundError(f"Checkpoint not found: {', '.join(missing)}")
    datasets = []
    for c in checkpoints:
        if isinstance(c, LoadedModel):
            datasets.append((str(c.checkpoint), str(c.config["dataset"])))
            continue
        stored = dict(load_checkpoint(c)["config"])
        stored.update(config_dict or {})
        if stored.get("MODEL_TYPE") not in (None, "SEQUENTIAL"):
            raise ValueError(f"{c}: model {stored.get('model')} is not a sequential model; the "
                             "group report ranks one target item per input sequence")
        datasets.append((str(c), str(stored.get("dataset"))))
    if len({d for _, d in datasets}) > 1:
        raise ValueError("the checkpoints are for different datasets: "
                         + ", ".join(f"{os.path.basename(p)}: {d}" for p, d in datasets))
    return [c if isinstance(c, LoadedModel) else load_model(c, config_dict=config_dict)
            for c in checkpoints]


def _check_same_rows(evals, split):
    ref = evals[0]
    for e in evals[1:]:
        if (len(e.users) != len(ref.users) or not (e.users == ref.users).all()
                or not (e.targets == ref.targets).all()):
            raise ValueError(
                f"the checkpoints are for different data: the {split} splits of "
                f"{os.path.basename(ref.checkpoint)} ({len(ref.users)} rows) and "
                f"{os.path.basename(e.checkpoint)} ({len(e.users)} rows) differ in users or "
                "target items (other filtering or split options?)"
            )


def group_report(checkpoints: Sequence, names: Optional[Sequence[str]] = None, split: str = "test",
                 length_bins: Union[str, Sequence] = DEFAULT_LENGTH_BINS,
                 popularity_bins: Union[str, Sequence] = DEFAULT_POPULARITY_BINS,
                 k: int = DEFAULT_K, config_dict: Optional[dict] = None,
                 csv_path: Optional[str] = None, plot_path: Optional[str] = None,
                 users_csv_path: Optional[str] = None, progress: bool = False,
                 echo: bool = False, interventions: Sequence[str] = ()) -> GroupReport:
    """Per-group NDCG@k / HR@k (and fusion weights) of checkpoints trained on one dataset.

    Args:
        checkpoints: paths written by ``run`` (or ``LoadedModel`` objects); the first one is
            the numerator of the ratio columns.
        names: one distinct name per checkpoint (default: the model names, ``-<fusion>``
            added for PRISM models with another ``prism_fusion`` than adaptive, ``-1``, ``-2``
            ... for repeated names).
        split: ``test`` or ``valid``.
        length_bins, popularity_bins: lower ends of the bins, or ``"qN"`` (N quantile bins).
        k: the cut-off of NDCG and HR.
        config_dict: options overriding the stored ones, e.g. ``{"data_path": ...}``.
        csv_path, plot_path, users_csv_path: files to write (None: not written).
        progress: tqdm progress bars over the evaluation batches.
        echo: print the Markdown table.
        interventions: diagnostics of the first checkpoint (a PRISM model with experts and a
            gate): each is evaluated as one more column ``<name>-<intervention>``, the model
            run with that part changed (``no_fusion``: z = 0; ``swap_fusion``: each user gets
            another user's z; ``uniform_gate``: equal weights; see
            ``PRISMPlugin.prism_intervention``).  The ratio of the first column to one of them
            is how much the ranking needs that part (1.0: unused).

    Raises:
        FileNotFoundError: a checkpoint file is missing.
        ValueError: checkpoints of different datasets (or of different test rows), a model
            that is not sequential, no full-sort evaluation, bad names or bins.
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if names is not None:
        names = _check_names(names, len(checkpoints))
    # bins are checked before the (slow) loading
    for spec, what in ((length_bins, "length_bins"), (popularity_bins, "popularity_bins")):
        lows = parse_bins(spec, what)
        if not isinstance(lows, tuple) and lows[0] < (1 if what == "length_bins" else 0):
            raise ValueError(f"{what}: lower ends must be >= {1 if what == 'length_bins' else 0}, "
                             f"got {lows[0]}")
    interventions = list(dict.fromkeys(interventions or ()))
    if interventions:
        from prism_recbole.model.prism_layer import INTERVENTIONS

        unknown = [x for x in interventions if x not in INTERVENTIONS]
        if unknown:
            raise ValueError(f"--interventions: unknown {' '.join(unknown)}; known: "
                             f"{' '.join(INTERVENTIONS)}")
    loaded_list = _load_all(checkpoints, config_dict)
    names = names or _default_names(loaded_list)
    evals = [evaluate_model(loaded, split, k, name, progress) for loaded, name in zip(loaded_list, names)]
    if interventions:
        first = loaded_list[0]
        if not hasattr(first.model, "prism_intervention"):
            raise ValueError(f"--interventions: the first checkpoint ({first.checkpoint}) is "
                             f"{type(first.model).__name__}, not a PRISM model")
        for name in interventions:
            label = f"{names[0]}-{name}"
            if label in names:
                raise ValueError(f"--interventions: the column {label!r} is also a checkpoint's name")
            with first.model.prism_intervention(name):
                changed = evaluate_model(first, split, k, label, progress)
            # its gate weights are the intact model's (or 1/K): no fusion-weight columns
            changed.weights = changed.expert_names = changed.fusion = None
            evals.append(changed)
        names = list(names) + [f"{names[0]}-{name}" for name in interventions]
    _check_same_rows(evals, split)

    ref = evals[0]
    by_len = max(evals, key=lambda e: e.max_len)
    max_len = by_len.max_len
    lengths = by_len.lengths
    counts = training_item_counts(ref.loaded)
    popularity = counts[ref.target_ids]
    missing = {}
    for e in evals:
        table = getattr(e.loaded.dataset, "modality_missing", None) or {}
        if table:
            for f, miss in table.items():
                missing[f] = miss.numpy().astype(bool)[e.target_ids]
            break
    length_bin_list = _resolve_bins(length_bins, lengths, 1, cap=max_len, what="length_bins")
    popularity_bin_list = _resolve_bins(popularity_bins, popularity, 0, what="popularity_bins")
    report = GroupReport(
        names=list(names), evals=evals, dataset=ref.dataset, split=split, k=k, max_len=max_len,
        users=ref.users, targets=ref.targets, lengths=lengths, popularity=popularity,
        missing=missing, length_bins=length_bin_list, popularity_bins=popularity_bin_list,
        rows=[], columns=[],
    )
    report.rows = build_rows(report.groups(), evals, k,
                             {"history_length": length_bin_list,
                              "target_popularity": popularity_bin_list})
    report.columns = (["kind", "group", "lo", "hi", "n_users"] + metric_columns(names, k)
                      + ratio_columns(names, k)
                      + [f"{e.name}_w_{x}" for e in evals if e.weights is not None
                         for x in e.expert_names])
    for key, path, writer in (("csv", csv_path, write_csv), ("users_csv", users_csv_path, write_users_csv),
                              ("plot", plot_path, plot_report)):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            writer(report, path)
            report.paths[key] = str(path)
    report.markdown = render_markdown(report)
    if echo:
        print(report.markdown)
    return report
