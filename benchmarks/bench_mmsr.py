"""Training cost of MMSR relative to RecBole's SASRec on the same data, in one run.

Prints MMSR's epoch time and peak memory as ratios to SASRec (``--baseline``), for each
``--modality_nodes`` value (``cluster``, ``item`` or both: one MMSR arm each).

Method (the helpers of ``bench_prism_overhead.py``, imported from it):

* One Config per arm (same dataset, config files, ``--max_len``, ``--batch_size`` and
  ``--extra`` for every arm; ``--mmsr_extra`` for the MMSR arms only).  The data is loaded
  once, with the first MMSR arm's config, and the first ``--batches`` training batches (0 =
  one full epoch) are materialised once: every arm trains on the very same batches, in the
  same order.  Each model is built with the same seed and its own ``Adam(lr=1e-3)``, in
  ``train()`` mode.  Each arm keeps its own model defaults (SASRec: hidden size 64, 2 layers;
  MMSR: ``embedding_size`` 128, 1 layer; see ``properties/model/MMSR.yaml``), so the ratio is
  the cost of running MMSR as configured instead of SASRec as configured.
* 3 warm-up steps per arm, not timed; then chunks of ``--chunk`` batches, the arms taking
  turns chunk by chunk (the order reverses every chunk), so noise on a shared machine hits
  every arm.  One step is ``calculate_loss`` + ``zero_grad`` + ``backward`` + ``step``.
  Reported: total seconds, the ratio MMSR / SASRec of the totals, the median of the
  per-chunk ratios, and the epoch time extrapolated to a full epoch (seconds per batch x
  batches per epoch) when fewer batches were timed.
* Peak memory, one arm at a time, each model built afresh and warmed up: on CUDA the
  allocator's peak, on CPU the model of ``bench_prism_overhead.py`` (parameters, gradients,
  Adam state and buffers plus the activations saved for backward in one training step).
  MMSR's graph (``adj`` and its masks) is built inside ``calculate_loss``, so its tensors are
  counted when autograd keeps them.

Example::

    python benchmarks/bench_mmsr.py --batches 30
    python benchmarks/bench_mmsr.py --batches 30 --modality_nodes cluster item --threads 2
    python benchmarks/bench_mmsr.py --mmsr_extra mmsr_legacy_qkv=True
"""
import argparse
import gc
import os
import sys

import prism_recbole  # noqa: F401  (numpy shims, anomaly mode off) -- must come first
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prism_overhead import (  # noqa: E402  (shared benchmark helpers)
    WARMUP_STEPS,
    build_arms,
    add_common_options,
    interleaved_timing,
    load_data,
    log,
    make_config,
    materialise_batches,
    measure_peak_memory,
    parse_extra,
    split_list,
    summarise_times,
)
from recbole.utils import init_seed  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="SASRec", help="RecBole model to compare with")
    parser.add_argument("--modality_nodes", nargs="+", default=[None],
                        help="mmsr_modality_node values, one MMSR arm each "
                             "(default: the YAML default only)")
    parser.add_argument("--mmsr_extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the MMSR arms only")
    add_common_options(parser, batches_default=0, chunk_default=5)
    parser.add_argument("--mem_batches", type=int, default=3,
                        help="training steps watched for peak memory, per model")
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our options as its own

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = parse_extra(args.extra)
    mmsr_extra = {**extra, **parse_extra(args.mmsr_extra)}
    nodes = [None] if args.modality_nodes == [None] else split_list(args.modality_nodes)

    configs = {}
    for node in nodes:
        overrides = dict(mmsr_extra)
        if node is not None:
            overrides["mmsr_modality_node"] = node
        config = make_config("MMSR", args, overrides)
        configs[f"MMSR ({config['mmsr_modality_node']})"] = config
    mmsr_names = list(configs)
    base_config = make_config(args.baseline, args, extra)
    first = configs[mmsr_names[0]]

    log(f"loading {args.dataset}")
    init_seed(first["seed"], first["reproducibility"])
    _, train_data, _, _ = load_data(first)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = materialise_batches(first, train_data, args.batches)
    device = first["device"]
    epoch_batches = len(train_data)
    log(f"{len(batches)} batches (an epoch has {epoch_batches}) on {device}")

    arms_configs = {args.baseline: base_config, **configs}
    models, optimizers, n_params, arms = build_arms(arms_configs, train_data)
    log(f"warm-up: {WARMUP_STEPS} batches per model")
    for _, step in arms:
        for batch in batches[:WARMUP_STEPS]:
            step(batch)
    chunk_times = interleaved_timing(arms, batches, args.chunk, device)
    del models, optimizers, arms
    gc.collect()

    memory = {}
    for name, config in arms_configs.items():
        log(f"peak memory of {name}")
        memory[name] = measure_peak_memory(config, train_data, batches, args.mem_batches)

    # ---- report ------------------------------------------------------------------------------
    n = len(batches)
    what = "one full epoch" if args.batches <= 0 else f"first {n} batches"
    print("## MMSR training cost relative to " + args.baseline)
    print()
    print(f"- device: {device}; threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"- dataset: {args.dataset}; max_len: {args.max_len}; batch size: {args.batch_size}")
    print(f"- batches timed: {n} ({what}; an epoch has {epoch_batches}); chunk: {args.chunk}; "
          f"warm-up: {WARMUP_STEPS} per model")
    print(f"- config overrides: all {extra or 'none'}; MMSR {mmsr_extra or 'none'}")
    print("- peak memory: " + ("CUDA allocator peak (max_memory_allocated)" if device.type == "cuda"
                               else "CPU model = static state (params + grads + Adam state + "
                                    "buffers) + activations saved for backward"))
    print()
    print("| model | timed s | s/batch | epoch s (est.) | time ratio | median chunk ratio "
          "| peak MB | memory ratio | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [args.baseline] + mmsr_names
    for name in rows:
        total = sum(chunk_times[name])
        if name == args.baseline:
            ratio = median = mem_ratio = 1.0
        else:
            summary = summarise_times(chunk_times, args.baseline, name, n)
            ratio, median = summary["ratio"], summary["median_chunk_ratio"]
            mem_ratio = memory[name]["total_mb"] / memory[args.baseline]["total_mb"]
        print(f"| {name} | {total:.2f} | {total / n:.3f} | {total / n * epoch_batches:.1f} "
              f"| {ratio:.3f} | {median:.3f} | {memory[name]['total_mb']:.1f} | {mem_ratio:.3f} "
              f"| {n_params[name]:,} |")
    print()
    for name in rows:
        m = memory[name]
        if "static_mb" in m:
            print(f"memory {name}: static {m['static_mb']:.1f} MB (params {m['params_mb']:.1f}, "
                  f"grads {m['grads_mb']:.1f}, Adam {m['adam_state_mb']:.1f}, buffers "
                  f"{m['buffers_mb']:.1f}) + saved activations {m['activations_mb']:.1f} MB "
                  f"= {m['total_mb']:.1f} MB")


if __name__ == "__main__":
    main()
