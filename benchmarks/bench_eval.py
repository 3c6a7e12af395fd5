"""Full-sort evaluation cost of PRISM_<Backbone> relative to the plain RecBole backbone.

Prints, for each dataset (``--datasets ml-100k-mm synthetic``) and backbone (``--backbones
SASRec GRU4Rec BERT4Rec``; the PRISM model is ``"PRISM_" + backbone``), the time of one
evaluation of the test split with full ranking and its peak memory, PRISM against plain,
measured side by side in one process.

Datasets
--------
* ``ml-100k-mm`` (or any other name ``X``): the dataset with the config files
  ``--config_files`` (default ``configs/X.yaml``), as the training commands load it.
* ``synthetic``: a generated catalogue of ``--synthetic_items`` items (default 100,000) with
  two ``--dim``-d (default 512) ``float_seq`` modalities ``img_emb`` and ``txt_emb`` (values
  drawn from a table of 65,536 numbers ~ N(0, 1/dim), six decimals, the scale of
  L2-normalised CLIP vectors; 0.5 % of the items have an empty ``img_emb`` cell and another
  0.5 % an empty ``txt_emb`` cell, i.e. lack that modality), and ``--synthetic_users`` users
  (default 20,000) with 3 + Poisson(7) interactions each (10 on average), items drawn with a
  popularity skew (p ∝ 1 / rank^0.8 over a random ranking of the items), timestamps in order.
  Generated once, deterministically (seed 0), as atomic files ``<name>.inter`` and
  ``<name>.item`` in ``<--cache_dir>/<name>/`` with ``name = bench-synthetic-<items>-<users>-<dim>``
  (``--cache_dir`` defaults to the git-ignored ``dataset/`` of the repository): written into a
  temporary folder that is then renamed, so an interrupted run leaves no half-written dataset,
  and reused by later runs.  The first load also writes the loader's modality cache
  ``<name>.item.prism-cache.npz`` next to the ``.item`` file, so later loads skip the parse.
  Its config: leave-one-out by time (``LS: valid_and_test``, ``order: TO``, full ranking) as
  ``configs/ml-100k-mm.yaml``.

Method
------
* Setup, per dataset and backbone.  One Config per model (``make_config`` of
  ``bench_prism_overhead.py``: same dataset, ``--max_len`` as ``MAX_ITEM_LIST_LENGTH``,
  ``--eval_batch_size``, ``--extra`` overrides for both, ``--prism_extra`` for the PRISM model
  only).  The data are loaded once with the PRISM model's config through
  ``prism_recbole.quick_start.load_data`` (RecBole's ``data_preparation``); the batches of the
  test split's ``FullSortEvalDataLoader`` are materialised once into a list and moved to the
  device: both models evaluate the very same ``Interaction`` objects.  Producing the batches
  (RecBole's collate, the same for both models) is therefore not in the timings; one pass of
  the dataloader itself is timed once and printed for scale.  Both models are built with
  ``build_model`` (same seed, untrained: the cost of evaluation does not depend on the weights).
* One evaluation pass = what RecBole's trainer does in ``evaluate`` for a sequential model
  with full ranking: ``model.eval()``, ``torch.no_grad()``, and for every batch
  ``scores = model.full_sort_predict(interaction).view(-1, n_items)``, ``scores[:, 0] = -inf``
  (the padding item) and ``torch.topk(scores, 20)`` (the history is not masked for sequential
  models, as in RecBole).  Metric arithmetic on the top-k (the same for both models) is left
  out.  Before every pass, outside the timing, the model goes through ``model.train()``, a
  version bump of every parameter (``torch.autograd.graph.increment_version``, what an
  optimizer step does, without changing a value) and ``model.eval()``: in training, every
  evaluation follows a training epoch, so whatever a model caches between evaluation calls
  (e.g. projected item tables) is rebuilt in every timed pass as it would be in training.
  ``--warm_caches`` skips this (steady-state cost of repeated evaluations of a fixed model).
* Time.  A warm-up round (each model evaluates the test split once, not counted), then
  ``--rounds`` timed rounds; in each round each model evaluates the whole test split once, the
  order alternating from round to round (A B, B A, A B, ...: ABBA), so drift and noise on a
  shared machine hit both models alike.  On CUDA the device is synchronised before each clock
  reading.  Reported: the median seconds per pass of each model, the ratio of the medians
  PRISM / plain, and the median over the rounds of the per-round ratios.
* Peak memory, measured after the timing, one model at a time, each model built afresh with
  the same seed (so its first evaluation, caches included, is what is watched), one pass each.

  - CPU: there is no allocator peak counter.  A ``TorchDispatchMode`` (:class:`LiveTensorTracker`)
    watches every aten op run during the pass: each storage that an op returns and that is
    new (not already counted, and not the storage of one of the op's inputs, i.e. not a view
    or an in-place result) is added with its whole ``untyped_storage().nbytes()``, once per
    storage (deduplicated by ``data_ptr``), and subtracted when the storage is freed
    (``weakref.finalize`` on the storage object, which torch keeps alive exactly as long as
    the storage).  The running maximum of that sum is the peak.  So it counts the tensors
    created during the evaluation (activations, scores, the top-k, anything a model caches
    while evaluating), not what existed before: parameters, buffers (the modality tables) and
    the batch tensors.  Not counted either: scratch memory an op allocates and frees inside
    its kernel, and tensors made outside aten (``torch.from_numpy``).  The live total left
    when the pass ends (e.g. a cache kept on the model) is printed as "retained".
  - CUDA: ``torch.cuda.reset_peak_memory_stats()`` before the pass and
    ``torch.cuda.max_memory_allocated()`` after, minus ``memory_allocated()`` before it: the
    allocator's peak above what existed before the pass (same meaning as on CPU, kernel
    scratch included).

  The model's own memory, bytes of the unique storages of its parameters and buffers, is
  printed separately as "static MB" (not in the peak, not in the ratio).

A Markdown table (dataset | backbone | eval s plain | eval s PRISM | time ratio | median round
ratio | peak MB plain | peak MB PRISM | memory ratio) is printed with the device, threads,
torch version, eval batch size, max_len, and per dataset the number of test users and items,
followed by one line per target check (ratio <= ``--target``, default 1.1).  Progress goes to
stderr.

Example (full run)::

    python benchmarks/bench_eval.py --threads 1 --csv results/bench_eval.csv
    python benchmarks/bench_eval.py --datasets synthetic --synthetic_items 20000 \
        --synthetic_users 4000 --rounds 2 --backbones SASRec

RecBole's ``Config`` reads ``--key=value`` items of ``sys.argv`` itself, so this script
parses its own options first and clears ``sys.argv`` (restored when ``main`` returns).
"""
import argparse
import csv
import gc
import math
import os
import shutil
import statistics
import sys
import time
import types
import weakref

import numpy as np

import prism_recbole  # noqa: F401  (numpy shims, anomaly mode off) -- must come first
import torch
from torch.autograd.graph import increment_version
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prism_overhead import (  # noqa: E402  (shared benchmark helpers)
    MB,
    log,
    make_config,
    parse_extra,
    split_list,
    sync,
)
from prism_recbole.quick_start import build_model, load_data  # noqa: E402
from prism_recbole.utils import get_model  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPK = 20
SYNTHETIC = "synthetic"
SYNTHETIC_FIELDS = ("img_emb", "txt_emb")
SYNTHETIC_SEED = 0
MISSING_SHARE = 0.005  # per modality: the share of items whose cell is empty
POPULARITY_EXPONENT = 0.8
MIN_INTERACTIONS = 3  # leave-one-out needs a train, a valid and a test item


# --------------------------------------------------------------------------- synthetic data


def synthetic_name(n_items, n_users, dim):
    return f"bench-synthetic-{n_items}-{n_users}-{dim}"


def _write_item_file(path, n_items, dim, rng):
    vocab = np.array([f"{v:.6f}" for v in rng.normal(0.0, 1.0 / math.sqrt(dim), 65536)],
                     dtype=object)
    n_missing = max(1, int(round(n_items * MISSING_SHARE)))
    lacking = rng.choice(n_items, size=min(n_items, 2 * n_missing), replace=False) + 1
    missing = {SYNTHETIC_FIELDS[0]: set(lacking[:n_missing].tolist()),
               SYNTHETIC_FIELDS[1]: set(lacking[n_missing:].tolist())}
    with open(path, "w") as f:
        f.write("item_id:token\t" + "\t".join(f"{fld}:float_seq" for fld in SYNTHETIC_FIELDS) + "\n")
        chunk = 1000
        for start in range(1, n_items + 1, chunk):
            stop = min(n_items + 1, start + chunk)
            cells = {fld: vocab[rng.integers(0, len(vocab), (stop - start, dim))].tolist()
                     for fld in SYNTHETIC_FIELDS}
            lines = []
            for row, item in enumerate(range(start, stop)):
                parts = [f"i{item}"]
                for fld in SYNTHETIC_FIELDS:
                    parts.append("" if item in missing[fld] else " ".join(cells[fld][row]))
                lines.append("\t".join(parts))
            f.write("\n".join(lines) + "\n")
    return {fld: len(v) for fld, v in missing.items()}


def _write_inter_file(path, n_items, n_users, mean_interactions, rng):
    counts = MIN_INTERACTIONS + rng.poisson(max(0.0, mean_interactions - MIN_INTERACTIONS), n_users)
    ranking = rng.permutation(n_items)  # ranking[r] = item (0-based) of popularity rank r
    p_rank = 1.0 / np.arange(1, n_items + 1) ** POPULARITY_EXPONENT
    p_item = np.empty(n_items)
    p_item[ranking] = p_rank / p_rank.sum()
    items = rng.choice(n_items, size=int(counts.sum()), p=p_item) + 1
    users = np.repeat(np.arange(1, n_users + 1), counts)
    position = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    stamps = users.astype(np.int64) * 1000 + position
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.write("\n".join(f"u{u}\ti{i}\t{t}" for u, i, t in
                          zip(users.tolist(), items.tolist(), stamps.tolist())) + "\n")
    return int(counts.sum())


def ensure_synthetic(root, n_items, n_users, dim, mean_interactions=10.0):
    """Generate the synthetic dataset unless ``root/<name>/`` already holds it.

    Returns:
        tuple: (dataset name, info dict with ``generated`` (bool) and, when generated, the
        seconds, interactions and items lacking each modality).
    """
    name = synthetic_name(n_items, n_users, dim)
    folder = os.path.join(root, name)
    files = [os.path.join(folder, f"{name}.{ext}") for ext in ("inter", "item")]
    if all(os.path.isfile(f) for f in files):
        return name, {"generated": False}
    if os.path.exists(folder):
        raise SystemExit(f"{folder} exists but lacks {name}.inter or {name}.item: remove it")
    os.makedirs(root, exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    start = time.perf_counter()
    log(f"[{name}] generating into {folder}")
    try:
        rng = np.random.default_rng(SYNTHETIC_SEED)
        missing = _write_item_file(os.path.join(tmp, f"{name}.item"), n_items, dim, rng)
        n_inter = _write_inter_file(os.path.join(tmp, f"{name}.inter"), n_items, n_users,
                                    mean_interactions, rng)
        try:
            os.rename(tmp, folder)  # atomic; fails if another process got there first
        except OSError:
            if not all(os.path.isfile(f) for f in files):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    size_mb = sum(os.path.getsize(f) for f in files) / MB
    log(f"[{name}] generated in {seconds:.1f} s: {n_inter} interactions, {size_mb:.0f} MB, "
        f"items lacking a modality: {missing}")
    return name, {"generated": True, "generate_s": seconds, "interactions": n_inter,
                  "missing": missing, "size_mb": size_mb}


def synthetic_config(root):
    """Config dict of the synthetic dataset (columns, modalities, leave-one-out, full ranking)."""
    return {
        "data_path": root,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                     "item": ["item_id", *SYNTHETIC_FIELDS]},
        "modalities": list(SYNTHETIC_FIELDS),
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO",
                      "mode": "full"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
    }


# --------------------------------------------------------------------------- memory


def _storage(tensor):
    try:
        storage = tensor.untyped_storage()
        return storage, storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # no plain storage (sparse, meta...)
        return None, 0, 0


class LiveTensorTracker(TorchDispatchMode):
    """Peak of the bytes of live tensor storages created while the mode is active.

    Every aten op run under the mode is seen after it ran.  Each storage one of its outputs
    holds is added (whole ``nbytes``, once per storage, keyed by ``data_ptr``) when it is new:
    not counted already and not the storage of one of the op's inputs (a view or an in-place
    result of a tensor that existed before the mode, such as a parameter, is not an
    allocation).  It is subtracted when the storage is freed (``weakref.finalize`` on the
    storage object; torch keeps that object alive as long as the storage).  ``peak_bytes`` is
    the running maximum of ``live_bytes``; ``allocations`` counts the storages added.
    """

    def __init__(self):
        super().__init__()
        self.live = {}  # data_ptr -> [nbytes] (a fresh list per storage: its identity)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.allocations = 0

    def _free(self, ptr, entry):
        if self.live.get(ptr) is entry:
            del self.live[ptr]
            self.live_bytes -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        input_ptrs = None
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage, ptr, nbytes = _storage(tensor)
            if storage is None or ptr == 0 or nbytes == 0 or ptr in self.live:
                continue
            if input_ptrs is None:
                input_ptrs = {_storage(t)[1] for t in tree_flatten((args, kwargs))[0]
                              if isinstance(t, torch.Tensor)}
            if ptr in input_ptrs:
                continue
            entry = [nbytes]
            self.live[ptr] = entry
            self.live_bytes += nbytes
            self.allocations += 1
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._free, ptr, entry)
        return out


def unique_storage_bytes(tensors):
    seen = {}
    for tensor in tensors:
        _, ptr, nbytes = _storage(tensor)
        seen[ptr if ptr else id(tensor)] = nbytes
    return sum(seen.values())


def static_bytes(model):
    """Bytes of the unique storages of the model's parameters and buffers."""
    return unique_storage_bytes(list(model.parameters()) + list(model.buffers()))


def batch_bytes(batches):
    return unique_storage_bytes(t for batch in batches for t in batch.interaction.values()
                                if torch.is_tensor(t))


# --------------------------------------------------------------------------- evaluation


def prepare_for_evaluation(model, fresh_caches=True):
    """``model.eval()``; with ``fresh_caches`` first what a training epoch leaves behind:
    ``train()`` and a version bump of every parameter (an optimizer step, values unchanged)."""
    if fresh_caches:
        model.train()
        for p in model.parameters():
            increment_version(p)
    model.eval()


def evaluation_pass(model, batches, n_items):
    """One full-sort evaluation of ``batches`` (see the module docstring); returns the number
    of users ranked."""
    users = 0
    with torch.no_grad():
        for interaction in batches:
            scores = model.full_sort_predict(interaction).view(-1, n_items)
            scores[:, 0] = -math.inf
            _, topk_idx = torch.topk(scores, TOPK, dim=-1)
            users += topk_idx.size(0)
    return users


def interleaved_rounds(arms, rounds, device, fresh_caches=True, label=""):
    """A warm-up round, then ``rounds`` timed rounds; the order alternates (ABBA).

    Args:
        arms (list[tuple[str, model, batches, n_items]]): the models and what they evaluate.

    Returns:
        dict: name -> list of seconds, one per timed round.
    """
    times = {name: [] for name, *_ in arms}
    for r in range(rounds + 1):
        order = arms if r % 2 == 0 else arms[::-1]
        for name, model, batches, n_items in order:
            prepare_for_evaluation(model, fresh_caches)
            sync(device)
            start = time.perf_counter()
            evaluation_pass(model, batches, n_items)
            sync(device)
            if r > 0:
                times[name].append(time.perf_counter() - start)
        if r == 0:
            log(f"{label}warm-up round done")
        else:
            log(f"{label}round {r}/{rounds} ({' then '.join(a[0] for a in order)}): "
                + ", ".join(f"{name} {times[name][-1]:.3f}s" for name, *_ in arms))
    return times


def measure_eval_memory(config, train_data, batches, n_items):
    """Peak memory of one evaluation pass of a freshly built model (see the module docstring).

    Returns:
        dict: ``peak_mb``, ``retained_mb`` (still allocated after the pass), ``static_mb``.
    """
    device = config["device"]
    gc.collect()
    model = build_model(config, train_data)
    prepare_for_evaluation(model)
    static = static_bytes(model)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        sync(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        evaluation_pass(model, batches, n_items)
        sync(device)
        gc.collect()
        peak = torch.cuda.max_memory_allocated(device) - baseline
        retained = torch.cuda.memory_allocated(device) - baseline
    else:
        tracker = LiveTensorTracker()
        with tracker:
            evaluation_pass(model, batches, n_items)
        gc.collect()
        peak, retained = tracker.peak_bytes, tracker.live_bytes
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"peak_mb": peak / MB, "retained_mb": retained / MB, "static_mb": static / MB}


# --------------------------------------------------------------------------- benchmark


def dataset_args(dataset, args):
    """(namespace for ``make_config``, config overrides) of one entry of ``--datasets``."""
    extra = {"eval_batch_size": args.eval_batch_size}
    info = {}
    if dataset == SYNTHETIC:
        name, info = ensure_synthetic(args.cache_dir, args.synthetic_items, args.synthetic_users,
                                      args.dim)
        extra.update(synthetic_config(args.cache_dir))
        config_files = []
    else:
        name = dataset
        config_files = args.config_files or [os.path.join(REPO, "configs", f"{dataset}.yaml")]
        missing = [f for f in config_files if not os.path.isfile(f)]
        if missing:
            raise SystemExit(f"dataset {dataset!r}: no config file {missing[0]} "
                             "(give --config_files)")
    ns = types.SimpleNamespace(dataset=name, config_files=config_files, max_len=args.max_len,
                               batch_size=args.train_batch_size, device=args.device)
    return ns, extra, info


def bench_backbone(dataset, backbone, args, extra, prism_extra):
    """Evaluation time and memory of ``backbone`` and ``PRISM_<backbone>`` on ``dataset``."""
    ns, data_extra, data_info = dataset_args(dataset, args)
    common = {**data_extra, **extra}
    plain_name, prism_name = backbone, "PRISM_" + backbone
    prism_config = make_config(prism_name, ns, {**common, **prism_extra})
    plain_config = make_config(plain_name, ns, common)
    label = f"[{ns.dataset} {backbone}] "

    log(f"{label}loading")
    start = time.perf_counter()
    init_seed(prism_config["seed"], prism_config["reproducibility"])
    dataset_obj, train_data, _, test_data = load_data(prism_config)
    load_s = time.perf_counter() - start
    if args.threads:  # again, in case anything above changed it
        torch.set_num_threads(args.threads)
    # building the dataloaders writes a few keys into the config that loaded the data (e.g.
    # BERT4Rec's transform names MASK_ITEM_SEQ, POS_ITEMS ...); the plain model needs them too
    for key, value in prism_config.final_config_dict.items():
        if key not in plain_config.final_config_dict:
            plain_config[key] = value
    device = prism_config["device"]
    n_items = test_data._dataset.item_num
    missing = {f: int(m[1:].sum())  # row 0 is the padding item
               for f, m in getattr(dataset_obj, "modality_missing", {}).items()}
    start = time.perf_counter()
    raw = [batch[0] for batch in test_data]
    loader_s = time.perf_counter() - start
    batches = [batch.to(device) for batch in raw]
    del raw
    n_users = sum(len(batch) for batch in batches)
    log(f"{label}loaded in {load_s:.1f} s ({getattr(dataset_obj, 'modality_cache_status', None)}"
        f" modality cache); {n_users} test users in {len(batches)} batches, {n_items - 1} items,"
        f" items lacking a modality: {missing}; on {device}")

    models = {name: build_model(config, train_data)
              for name, config in ((plain_name, plain_config), (prism_name, prism_config))}
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    arms = [(name, models[name], batches, n_items) for name in (plain_name, prism_name)]
    round_times = interleaved_rounds(arms, args.rounds, device,
                                     fresh_caches=not args.warm_caches, label=label)
    del models, arms
    gc.collect()

    memory = {}
    for name, config in ((plain_name, plain_config), (prism_name, prism_config)):
        log(f"{label}peak memory of {name}")
        memory[name] = measure_eval_memory(config, train_data, batches, n_items)

    median = {name: statistics.median(t) for name, t in round_times.items()}
    per_round = [b / a for a, b in zip(round_times[plain_name], round_times[prism_name]) if a > 0]
    row = {
        "dataset": ns.dataset,
        "backbone": backbone,
        "device": str(device),
        "test_users": n_users,
        "items": n_items - 1,
        "batches": len(batches),
        "rounds": len(round_times[plain_name]),
        "eval_s_plain": median[plain_name],
        "eval_s_prism": median[prism_name],
        "time_ratio": median[prism_name] / median[plain_name],
        "median_round_ratio": statistics.median(per_round),
        "peak_mb_plain": memory[plain_name]["peak_mb"],
        "peak_mb_prism": memory[prism_name]["peak_mb"],
        "memory_ratio": memory[prism_name]["peak_mb"] / memory[plain_name]["peak_mb"],
        "retained_mb_plain": memory[plain_name]["retained_mb"],
        "retained_mb_prism": memory[prism_name]["retained_mb"],
        "static_mb_plain": memory[plain_name]["static_mb"],
        "static_mb_prism": memory[prism_name]["static_mb"],
        "params_plain": n_params[plain_name],
        "params_prism": n_params[prism_name],
        "batch_mb": batch_bytes(batches) / MB,
        "load_s": load_s,
        "loader_pass_s": loader_s,
        "missing_modality": missing,
        "round_s_plain": round_times[plain_name],
        "round_s_prism": round_times[prism_name],
    }
    if data_info.get("generated"):
        row["generate_s"] = data_info["generate_s"]
    del batches, train_data, test_data, dataset_obj
    gc.collect()
    return row


def print_report(rows, args, extra, prism_extra):
    device = rows[0]["device"] if rows else args.device
    print("## PRISM evaluation overhead (full-sort ranking of the test split)")
    print()
    print(f"- device: {device}; threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"- eval batch size: {args.eval_batch_size}; max_len: {args.max_len}; top-k: {TOPK}; "
          f"rounds: {args.rounds} timed (+1 warm-up), ABBA order; caches between passes: "
          + ("kept (--warm_caches)" if args.warm_caches else "invalidated (train(), version "
                                                                "bump, eval()) before every pass"))
    seen = set()
    for r in rows:
        if r["dataset"] not in seen:
            seen.add(r["dataset"])
            print(f"- {r['dataset']}: {r['test_users']:,} test users, {r['items']:,} items, "
                  f"{r['batches']} batch{'es' if r['batches'] != 1 else ''}; items lacking a modality: "
                  f"{r['missing_modality']}")
    print(f"- config overrides: both {extra or 'none'}; PRISM only {prism_extra or 'none'}")
    print("- eval s: median seconds of one pass over the test split; time ratio: ratio of the "
          "medians PRISM / plain")
    print("- peak MB: " + ("CUDA allocator peak above the memory allocated before the pass"
                           if device.startswith("cuda") else
                           "peak of live tensor storages created during one pass "
                           "(TorchDispatchMode; parameters, buffers and batches not counted)"))
    print()
    print("| dataset | backbone | eval s plain | eval s PRISM | time ratio | median round ratio "
          "| peak MB plain | peak MB PRISM | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['backbone']} | {r['eval_s_plain']:.3f} | {r['eval_s_prism']:.3f} "
              f"| {r['time_ratio']:.3f} | {r['median_round_ratio']:.3f} "
              f"| {r['peak_mb_plain']:.1f} | {r['peak_mb_prism']:.1f} | {r['memory_ratio']:.3f} |")
    print()
    for r in rows:
        print(f"{r['dataset']} {r['backbone']}: static MB (params + buffers) "
              f"{r['static_mb_plain']:.1f} plain, {r['static_mb_prism']:.1f} PRISM; retained after "
              f"the pass {r['retained_mb_plain']:.1f} / {r['retained_mb_prism']:.1f} MB; params "
              f"{r['params_plain']:,} / {r['params_prism']:,}; batches {r['batch_mb']:.1f} MB; "
              f"data load {r['load_s']:.1f} s, one test dataloader pass {r['loader_pass_s']:.2f} s "
              f"(not in eval s); rounds plain "
              + " ".join(f"{t:.3f}" for t in r["round_s_plain"]) + ", PRISM "
              + " ".join(f"{t:.3f}" for t in r["round_s_prism"]))
    print()
    for r in rows:
        checks = []
        for label, key in (("time ratio", "time_ratio"), ("median round ratio", "median_round_ratio"),
                           ("memory ratio", "memory_ratio")):
            verdict = "met" if r[key] <= args.target else "NOT met"
            checks.append(f"{label} {r[key]:.3f} {verdict}")
        print(f"target <= {args.target:g} ({r['dataset']}, {r['backbone']}): " + "; ".join(checks))


def write_csv(rows, args, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    meta = {"threads": torch.get_num_threads(), "eval_batch_size": args.eval_batch_size,
            "max_len": args.max_len, "torch": torch.__version__, "warm_caches": args.warm_caches}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + list(meta))
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: (" ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v)
                                for k, v in r.items()}, **meta})


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["SASRec", "GRU4Rec", "BERT4Rec"],
                        help="RecBole backbones (SASRec GRU4Rec BERT4Rec NARM STAMP Caser); "
                             "each is compared with PRISM_<backbone>")
    parser.add_argument("--datasets", nargs="+", default=["ml-100k-mm", SYNTHETIC],
                        help=f"'{SYNTHETIC}' (generated) or dataset names with configs/<name>.yaml")
    parser.add_argument("--config_files", nargs="+", default=None,
                        help="config files of the non-synthetic datasets (default configs/<name>.yaml)")
    parser.add_argument("--synthetic_items", type=int, default=100000)
    parser.add_argument("--synthetic_users", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512, help="size of each synthetic modality")
    parser.add_argument("--cache_dir", default=os.path.join(REPO, "dataset"),
                        help="folder of the generated synthetic datasets (git-ignored)")
    parser.add_argument("--eval_batch_size", type=int, default=4096)
    parser.add_argument("--max_len", type=int, default=20, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--train_batch_size", type=int, default=256,
                        help="train_batch_size (only builds the unused train dataloader)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--warm_caches", action="store_true",
                        help="do not invalidate model caches between passes")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to every model")
    parser.add_argument("--prism_extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the PRISM models only")
    parser.add_argument("--target", type=float, default=1.1, help="target for the ratios")
    parser.add_argument("--csv", default=None, help="also write the results to this CSV file")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our options as its own
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        extra, prism_extra = parse_extra(args.extra), parse_extra(args.prism_extra)
        backbones = split_list(args.backbones)
        datasets = split_list(args.datasets)
        for backbone in backbones:  # fail before any work, not after the first backbone
            for name in (backbone, "PRISM_" + backbone):
                try:
                    get_model(name)
                except ValueError as err:
                    raise SystemExit(f"backbone {backbone!r}: {err}")
        rows = [bench_backbone(dataset, backbone, args, extra, prism_extra)
                for dataset in datasets for backbone in backbones]
        print_report(rows, args, extra, prism_extra)
        if args.csv:
            write_csv(rows, args, args.csv)
            print(f"\nwrote {args.csv}")
        return rows
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
