"""Training cost of PRISM_<Backbone> relative to the plain RecBole backbone.

Prints, for each backbone (``--backbones SASRec``; the PRISM model is looked up by name as
``"PRISM_" + backbone``), the epoch-time ratio and the peak-memory ratio PRISM / plain,
measured side by side in one process.

Method
------
* Setup.  One Config per model (same dataset, config files, ``--max_len``, ``--batch_size``
  and ``--extra`` overrides for both).  The data is loaded once, with the PRISM model's
  config, and the training batches are materialised once into a list (the first
  ``--batches`` batches, or one full epoch when it is 0), already moved to the device:
  both models train on the very same ``Interaction`` objects, in the same order.  Both
  models are built with the same seed, each with its own ``Adam(lr=1e-3)``, in
  ``train()`` mode.
* Warm-up.  3 training steps per model, not timed.
* Time.  The batches are cut into chunks of ``--chunk`` batches.  The models take turns
  chunk by chunk (A chunk 1, B chunk 1, B chunk 2, A chunk 2, A chunk 3 ... : who goes first
  swaps every chunk), so drift and noise on a shared machine hit both equally.  One step is
  ``calculate_loss`` + ``zero_grad`` + ``backward`` + ``step``; on CUDA the device is
  synchronised before each clock reading.  Reported: total seconds per model over the
  epoch (or the N batches), seconds per batch, the ratio PRISM / plain of the totals, and
  the median over chunks of the per-chunk ratios (robust to a noisy chunk).
* Peak memory, measured after the timing, one model at a time (not interleaved), each
  model built afresh with the same seed and warmed up with 3 steps so that its Adam state
  exists, then ``--mem_batches`` more training steps are watched.

  - CUDA: ``torch.cuda.reset_peak_memory_stats()`` before those steps and
    ``torch.cuda.max_memory_allocated()`` after, minus what was allocated before the
    model was built (the shared batches): the allocator's peak for this model's training.
  - CPU: there is no allocator peak counter, so the figure is a *model* of peak memory,
    not an allocator reading: the static training state (bytes of the unique storages of
    parameters, gradients (one per trainable parameter), Adam state ``exp_avg``,
    ``exp_avg_sq``, ``step``, and buffers) plus the activations saved for backward during
    one forward pass (``calculate_loss``), caught with
    ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
    ``untyped_storage().data_ptr()`` and counted as whole storage ``nbytes``; storages
    already counted as static state (a weight saved by a matmul) are not counted twice.
    The activation figure is the maximum over the watched batches.  Both parts and their
    sum are printed.  Temporaries freed during forward/backward are not included.

A Markdown table (backbone | epoch s plain | epoch s PRISM | time ratio | median chunk
ratio | peak MB plain | peak MB PRISM | memory ratio) is printed with the device, threads,
dataset, max_len, batch size, number of batches and torch version, followed by whether
each ratio meets the target (``--target``, default: ratio <= 1.3).  Progress goes to stderr.

Example::

    python benchmarks/bench_prism_overhead.py --batches 20 --threads 1
    python benchmarks/bench_prism_overhead.py --extra prism_freeze_features=True --csv out.csv

RecBole's ``Config`` reads ``--key=value`` items of ``sys.argv`` itself, so this script
parses its own options first and then clears ``sys.argv`` before any Config is built.
"""
import argparse
import csv
import gc
import itertools
import os
import statistics
import sys
import time

import prism_recbole  # noqa: F401  (numpy shims, anomaly mode off) -- must come first
import torch
import yaml
from recbole.utils import init_seed

from prism_recbole.config import Config
from prism_recbole.quick_start import build_model, load_data
from prism_recbole.utils import get_model

WARMUP_STEPS = 3
MB = 1024 ** 2


# --------------------------------------------------------------------------- options


def split_list(values):
    """``["SASRec,GRU4Rec", "BERT4Rec"]`` -> ``["SASRec", "GRU4Rec", "BERT4Rec"]``."""
    out = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def parse_extra(items):
    """``["prism_freeze_features=True", "dropout_prob=0.2"]`` -> a config dict (YAML values)."""
    extra = {}
    for item in split_list(items) if items else []:
        if "=" not in item:
            raise SystemExit(f"--extra expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        extra[key.strip()] = yaml.safe_load(value)
    return extra


def add_common_options(parser, batches_default, chunk_default):
    """Options shared with ``bench_anomaly_mode.py``."""
    parser.add_argument("--dataset", default="ml-100k-mm")
    parser.add_argument("--config_files", nargs="+", default=["configs/ml-100k-mm.yaml"])
    parser.add_argument("--max_len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    parser.add_argument("--batch_size", type=int, default=256, help="train_batch_size")
    parser.add_argument("--batches", type=int, default=batches_default,
                        help="number of training batches to time (0 = one full epoch)")
    parser.add_argument("--chunk", type=int, default=chunk_default,
                        help="batches per chunk; the models alternate chunk by chunk")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides passed to every model")
    return parser


def make_config(model, args, extra):
    """The Config of ``model`` with the benchmark's options; checks the device it got."""
    config_dict = {
        "state": "ERROR",
        "show_progress": False,
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "train_batch_size": args.batch_size,
    }
    if args.device == "cpu":
        config_dict["gpu_id"] = ""  # RecBole picks cuda whenever it can unless told otherwise
    config_dict.update(extra)
    config = Config(model=model, dataset=args.dataset, config_file_list=args.config_files,
                    config_dict=config_dict)
    if config["device"].type != args.device:
        raise SystemExit(f"asked for device {args.device}, RecBole's config gave {config['device']}")
    return config


# --------------------------------------------------------------------------- training


def log(message):
    print(message, file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def materialise_batches(config, train_data, n_batches):
    """The first ``n_batches`` training batches (all when 0), seeded, moved to the device."""
    init_seed(config["seed"], config["reproducibility"])
    source = iter(train_data)
    if n_batches > 0:
        source = itertools.islice(source, n_batches)
    return [batch.to(config["device"]) for batch in source]


def make_optimizer(model):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def train_step(model, optimizer, batch):
    """One training step: loss, zero_grad, backward, step."""
    loss = model.calculate_loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def chunks_of(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def interleaved_timing(arms, batches, chunk, device, label=""):
    """Time each arm on the same batches, alternating chunk by chunk.

    Args:
        arms (list[tuple[str, callable]]): ``(name, step)``; ``step(batch)`` runs one
            training step of that arm.
        batches (list): the batches; every arm runs all of them, in order.
        chunk (int): batches per chunk.  Chunk ``c`` runs the arms in the given order when
            ``c`` is even and reversed when it is odd.

    Returns:
        dict: name -> list of seconds, one per chunk.
    """
    chunks = chunks_of(batches, max(1, chunk))
    times = {name: [] for name, _ in arms}
    for c, chunk_batches in enumerate(chunks):
        order = arms if c % 2 == 0 else arms[::-1]
        for name, step in order:
            sync(device)
            start = time.perf_counter()
            for batch in chunk_batches:
                step(batch)
            sync(device)
            times[name].append(time.perf_counter() - start)
        log(f"{label}chunk {c + 1}/{len(chunks)} ({len(chunk_batches)} batches): "
            + ", ".join(f"{name} {times[name][-1]:.3f}s" for name, _ in arms))
    return times


def summarise_times(chunk_times, base, other, n_batches):
    """Totals, seconds per batch, ratio of totals and median per-chunk ratio other/base."""
    total_base, total_other = sum(chunk_times[base]), sum(chunk_times[other])
    per_chunk = [o / b for b, o in zip(chunk_times[base], chunk_times[other]) if b > 0]
    return {
        "seconds_base": total_base,
        "seconds_other": total_other,
        "per_batch_base": total_base / n_batches,
        "per_batch_other": total_other / n_batches,
        "ratio": total_other / total_base,
        "median_chunk_ratio": statistics.median(per_chunk),
    }


# --------------------------------------------------------------------------- memory


def _storage_key(tensor):
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
        return id(tensor), tensor.numel() * tensor.element_size()


def static_state_bytes(model, optimizer):
    """Bytes of parameters, gradients, Adam state and buffers (unique storages).

    Gradients are counted as one tensor the size of each trainable parameter, as backward
    allocates them, whether or not ``zero_grad`` has set them to None at the moment.

    Returns:
        tuple: (dict part -> bytes, set of storage pointers counted).
    """
    seen = set()
    parts = {"params": 0, "grads": 0, "adam_state": 0, "buffers": 0}

    def add(part, tensor):
        ptr, nbytes = _storage_key(tensor)
        if ptr not in seen:
            seen.add(ptr)
            parts[part] += nbytes

    for p in model.parameters():
        add("params", p)
        if p.requires_grad:
            if p.grad is not None:
                add("grads", p.grad)
            else:
                parts["grads"] += p.numel() * p.element_size()
    for state in optimizer.state.values():
        for value in state.values():  # exp_avg, exp_avg_sq, step
            if torch.is_tensor(value):
                add("adam_state", value)
    for b in model.buffers():
        add("buffers", b)
    return parts, seen


def saved_activation_bytes(model, optimizer, batch, exclude):
    """Train one step; return the bytes of the storages saved for backward by its forward.

    Storages in ``exclude`` (the static state: a weight saved by a matmul) are skipped.
    """
    saved = {}

    def pack(tensor):
        ptr, nbytes = _storage_key(tensor)
        if ptr not in exclude:
            saved[ptr] = nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.calculate_loss(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return sum(saved.values())


def measure_peak_memory(config, train_data, batches, mem_batches):
    """Peak training memory of a freshly built model (see the module docstring).

    Returns:
        dict: ``total_mb`` and, on CPU, ``static_mb`` (with its parts) and ``activations_mb``.
    """
    device = config["device"]
    warm, watched = batches[:WARMUP_STEPS], batches[:max(1, mem_batches)]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        sync(device)
        baseline = torch.cuda.memory_allocated(device)
    model = build_model(config, train_data)
    model.train()
    optimizer = make_optimizer(model)
    for batch in warm:
        train_step(model, optimizer, batch)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        for batch in watched:
            train_step(model, optimizer, batch)
        sync(device)
        result = {"total_mb": (torch.cuda.max_memory_allocated(device) - baseline) / MB}
    else:
        activations = 0
        for batch in watched:
            parts, static_ptrs = static_state_bytes(model, optimizer)
            activations = max(activations,
                              saved_activation_bytes(model, optimizer, batch, static_ptrs))
        parts, _ = static_state_bytes(model, optimizer)
        static = sum(parts.values())
        result = {
            "static_mb": static / MB,
            "activations_mb": activations / MB,
            "total_mb": (static + activations) / MB,
            **{f"{k}_mb": v / MB for k, v in parts.items()},
        }
    del model, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- benchmark


def build_arms(configs, train_data):
    """One model (train mode) and Adam per ``{name: config}``; returns the models, the
    optimizers, the trainable-parameter counts and ``[(name, step function)]``."""
    models, optimizers = {}, {}
    for name, config in configs.items():
        models[name] = build_model(config, train_data)
        models[name].train()
        optimizers[name] = make_optimizer(models[name])
    n_params = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
                for name, m in models.items()}

    def stepper(name):
        return lambda batch: train_step(models[name], optimizers[name], batch)

    return models, optimizers, n_params, [(name, stepper(name)) for name in configs]


def bench_backbone(backbone, args, extra):
    """Time and memory of ``backbone`` and ``PRISM_<backbone>``; returns one result row."""
    plain_name, prism_name = backbone, "PRISM_" + backbone
    try:
        prism_config = make_config(prism_name, args, extra)
    except ValueError as err:
        raise SystemExit(f"cannot build {prism_name} (backbone {backbone!r}): {err}")
    plain_config = make_config(plain_name, args, extra)

    log(f"[{backbone}] loading {args.dataset}")
    init_seed(prism_config["seed"], prism_config["reproducibility"])
    _, train_data, _, _ = load_data(prism_config)
    if args.threads:  # again, in case anything above changed it
        torch.set_num_threads(args.threads)
    batches = materialise_batches(prism_config, train_data, args.batches)
    # building the dataloaders writes a few keys into the config that loaded the data (e.g.
    # BERT4Rec's transform names MASK_ITEM_SEQ, POS_ITEMS ...); the plain model needs them too
    for key, value in prism_config.final_config_dict.items():
        if key not in plain_config.final_config_dict:
            plain_config[key] = value
    device = prism_config["device"]
    full_epoch = len(train_data)
    log(f"[{backbone}] {len(batches)} batches (an epoch has {full_epoch}) on {device}")

    models, optimizers, n_params, arms = build_arms(
        {plain_name: plain_config, prism_name: prism_config}, train_data)
    log(f"[{backbone}] warm-up: {WARMUP_STEPS} batches per model")
    for name, step in arms:
        for batch in batches[:WARMUP_STEPS]:
            step(batch)
    chunk_times = interleaved_timing(arms, batches, args.chunk, device, label=f"[{backbone}] ")
    timing = summarise_times(chunk_times, plain_name, prism_name, len(batches))
    del models, optimizers, arms
    gc.collect()

    memory = {}
    for name, config in ((plain_name, plain_config), (prism_name, prism_config)):
        log(f"[{backbone}] peak memory of {name}")
        memory[name] = measure_peak_memory(config, train_data, batches, args.mem_batches)

    return {
        "backbone": backbone,
        "device": str(device),
        "n_batches": len(batches),
        "epoch_batches": full_epoch,
        "params_plain": n_params[plain_name],
        "params_prism": n_params[prism_name],
        "epoch_s_plain": timing["seconds_base"],
        "epoch_s_prism": timing["seconds_other"],
        "s_per_batch_plain": timing["per_batch_base"],
        "s_per_batch_prism": timing["per_batch_other"],
        "time_ratio": timing["ratio"],
        "median_chunk_ratio": timing["median_chunk_ratio"],
        "n_chunks": len(chunk_times[plain_name]),
        "peak_mb_plain": memory[plain_name]["total_mb"],
        "peak_mb_prism": memory[prism_name]["total_mb"],
        "memory_ratio": memory[prism_name]["total_mb"] / memory[plain_name]["total_mb"],
        **{f"{k}_plain": v for k, v in memory[plain_name].items() if k != "total_mb"},
        **{f"{k}_prism": v for k, v in memory[prism_name].items() if k != "total_mb"},
    }


def print_report(rows, args, extra):
    device = rows[0]["device"] if rows else args.device
    n_batches = rows[0]["n_batches"] if rows else args.batches
    epoch_batches = rows[0]["epoch_batches"] if rows else "?"
    what = "one full epoch" if args.batches <= 0 else f"first {n_batches} batches"
    print("## PRISM training overhead")
    print()
    print(f"- device: {device}; threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"- dataset: {args.dataset}; max_len: {args.max_len}; batch size: {args.batch_size}")
    print(f"- batches timed: {n_batches} ({what}; an epoch has {epoch_batches}); "
          f"chunk: {args.chunk}; warm-up: {WARMUP_STEPS} per model")
    print(f"- config overrides: {extra or 'none'}")
    print("- peak memory: " + ("CUDA allocator peak (max_memory_allocated)" if device.startswith("cuda")
                               else "CPU model = static state (params + grads + Adam state + "
                                    "buffers) + activations saved for backward"))
    print()
    print("| backbone | epoch s plain | epoch s PRISM | time ratio | median chunk ratio "
          "| peak MB plain | peak MB PRISM | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['epoch_s_plain']:.2f} | {r['epoch_s_prism']:.2f} "
              f"| {r['time_ratio']:.3f} | {r['median_chunk_ratio']:.3f} "
              f"| {r['peak_mb_plain']:.1f} | {r['peak_mb_prism']:.1f} | {r['memory_ratio']:.3f} |")
    print()
    for r in rows:
        print(f"{r['backbone']}: {r['s_per_batch_plain'] * 1000:.1f} ms/batch plain, "
              f"{r['s_per_batch_prism'] * 1000:.1f} ms/batch PRISM; trainable params "
              f"{r['params_plain']:,} plain, {r['params_prism']:,} PRISM")
        if "static_mb_plain" in r:
            for side in ("plain", "prism"):
                print(f"  memory {side}: static {r[f'static_mb_{side}']:.1f} MB "
                      f"(params {r[f'params_mb_{side}']:.1f}, grads {r[f'grads_mb_{side}']:.1f}, "
                      f"Adam {r[f'adam_state_mb_{side}']:.1f}, buffers {r[f'buffers_mb_{side}']:.1f})"
                      f" + saved activations {r[f'activations_mb_{side}']:.1f} MB"
                      f" = {r[f'peak_mb_{side}']:.1f} MB")
    print()
    for r in rows:
        checks = []
        for label, key in (("time ratio", "time_ratio"), ("median chunk ratio", "median_chunk_ratio"),
                           ("memory ratio", "memory_ratio")):
            verdict = "met" if r[key] <= args.target else "NOT met"
            checks.append(f"{label} {r[key]:.3f} {verdict}")
        print(f"target <= {args.target:g} ({r['backbone']}): " + "; ".join(checks))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["SASRec"],
                        help="RecBole backbones; each is compared with PRISM_<backbone>")
    add_common_options(parser, batches_default=0, chunk_default=10)
    parser.add_argument("--mem_batches", type=int, default=3,
                        help="training steps watched for peak memory, per model")
    parser.add_argument("--target", type=float, default=1.3, help="target for the ratios")
    parser.add_argument("--csv", default=None, help="also write the results to this CSV file")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our options as its own

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = parse_extra(args.extra)
    backbones = split_list(args.backbones)
    for backbone in backbones:  # fail before any training, not after the first backbone
        for name in (backbone, "PRISM_" + backbone):
            try:
                get_model(name)
            except ValueError as err:
                raise SystemExit(f"backbone {backbone!r}: {err}")
    rows = [bench_backbone(backbone, args, extra) for backbone in backbones]
    print_report(rows, args, extra)
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields + ["threads", "dataset", "max_len",
                                                            "batch_size", "torch"])
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "threads": torch.get_num_threads(), "dataset": args.dataset,
                                 "max_len": args.max_len, "batch_size": args.batch_size,
                                 "torch": torch.__version__})
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
