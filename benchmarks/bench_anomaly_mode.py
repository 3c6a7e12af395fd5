"""What RecBole's process-wide autograd anomaly mode costs a training step.

RecBole 1.2.1's ``recbole/model/sequential_recommender/sine.py`` calls
``torch.autograd.set_detect_anomaly(True)`` at import time, and the
``recbole.model.sequential_recommender`` package imports it, so importing any RecBole
sequential model turns anomaly detection on for the whole process (every backward op is
checked for NaN and every forward op records a Python stack trace).
``prism_recbole.compat`` switches it back off.  This script

1. checks, each in a fresh subprocess, whether anomaly mode is on right after
   ``import prism_recbole`` (must be False) and right after
   ``import recbole.model.sequential_recommender`` without prism_recbole (True: the RecBole
   behaviour);
2. times RecBole's own SASRec (``--model``) on ``--dataset`` with anomaly mode on vs off,
   in one process, with the method of ``bench_prism_overhead.py``: two copies of the model
   built with the same seed, each with its own ``Adam(lr=1e-3)``, the same materialised
   batches (the first ``--batches``, default 30; 0 = one epoch), 3 warm-up steps each, then
   chunks of ``--chunk`` batches alternating between the two settings (who goes first swaps
   every chunk).  One step is ``calculate_loss`` + ``zero_grad`` + ``backward`` + ``step``,
   run inside ``torch.autograd.set_detect_anomaly(flag)``.  It prints seconds per batch for
   each setting, the ratio on/off of the totals and the median of the per-chunk ratios.

Example::

    python benchmarks/bench_anomaly_mode.py --batches 30 --threads 1
"""
import argparse
import os
import subprocess
import sys

import prism_recbole  # noqa: F401  (numpy shims, anomaly mode off) -- must come first
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_prism_overhead import (  # noqa: E402  (shared benchmark helpers)
    WARMUP_STEPS,
    add_common_options,
    build_model,
    interleaved_timing,
    load_data,
    log,
    make_config,
    make_optimizer,
    materialise_batches,
    parse_extra,
    summarise_times,
    train_step,
)

ANOMALY_CHECKS = {
    "import prism_recbole": "import prism_recbole, torch; print(torch.is_anomaly_enabled())",
    "import recbole.model.sequential_recommender (without prism_recbole)": (
        "import torch, recbole.model.sequential_recommender; print(torch.is_anomaly_enabled())"
    ),
}


def anomaly_after(code):
    """``torch.is_anomaly_enabled()`` printed by ``code`` in a fresh Python process."""
    env = dict(os.environ)
    env.pop("PRISM_RECBOLE_KEEP_ANOMALY_MODE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return f"error: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return proc.stdout.strip().splitlines()[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SASRec", help="a RecBole sequential model")
    add_common_options(parser, batches_default=30, chunk_default=5)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our options as its own

    if args.threads:
        torch.set_num_threads(args.threads)
    in_process = torch.is_anomaly_enabled()
    checks = {label: anomaly_after(code) for label, code in ANOMALY_CHECKS.items()}

    config = make_config(args.model, args, parse_extra(args.extra))
    log(f"loading {args.dataset}")
    _, train_data, _, _ = load_data(config)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = materialise_batches(config, train_data, args.batches)
    device = config["device"]

    arms = []
    for label, flag in (("anomaly off", False), ("anomaly on", True)):
        model = build_model(config, train_data)
        model.train()
        optimizer = make_optimizer(model)

        def step(batch, model=model, optimizer=optimizer, flag=flag):
            with torch.autograd.set_detect_anomaly(flag):
                train_step(model, optimizer, batch)

        arms.append((label, step))

    log(f"warm-up: {WARMUP_STEPS} batches per setting")
    for _, step in arms:
        for batch in batches[:WARMUP_STEPS]:
            step(batch)
    chunk_times = interleaved_timing(arms, batches, args.chunk, device)
    timing = summarise_times(chunk_times, "anomaly off", "anomaly on", len(batches))
    after = torch.is_anomaly_enabled()

    print("## Cost of autograd anomaly mode (RecBole's sine.py import side effect)")
    print()
    for label, value in checks.items():
        print(f"- anomaly mode right after `{label}` (fresh process): {value}")
    print(f"- anomaly mode in this process after `import prism_recbole`: {in_process}; "
          f"after the benchmark: {after}")
    print(f"- model: RecBole {args.model}; device: {device}; threads: {torch.get_num_threads()}; "
          f"torch {torch.__version__}")
    print(f"- dataset: {args.dataset}; max_len: {args.max_len}; batch size: {args.batch_size}; "
          f"batches timed: {len(batches)} (an epoch has {len(train_data)}); chunk: {args.chunk}; "
          f"warm-up: {WARMUP_STEPS} per setting")
    print()
    print("| anomaly mode | total s | s/batch |")
    print("|---|---|---|")
    print(f"| off | {timing['seconds_base']:.2f} | {timing['per_batch_base']:.4f} |")
    print(f"| on | {timing['seconds_other']:.2f} | {timing['per_batch_other']:.4f} |")
    print()
    print(f"ratio on/off (totals): {timing['ratio']:.3f}; "
          f"median per-chunk ratio: {timing['median_chunk_ratio']:.3f}")


if __name__ == "__main__":
    main()
