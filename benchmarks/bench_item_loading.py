"""Loading a large multimodal ``.item`` file: RecBole's parse vs ours, cold and cached.

For each ``--items`` size the script writes a synthetic dataset into a temporary folder: a
``.item`` file with two 512-d ``float_seq`` fields (``img_emb``, ``txt_emb``; values like
L2-normalised CLIP vectors, six decimals, about 195 MB of text per 20,000 items) and a
``.inter`` file with 10 interactions for each of ``max(2000, items / 10)`` users.  Then it
runs three cases, each in a fresh Python subprocess, one after the other:

* ``recbole``: RecBole's own ``SequentialDataset`` (``prism_recbole`` imported first for the
  numpy shim; model SASRec; ``load_col`` with both fields; no ``modalities``), i.e. RecBole
  parsing the same file;
* ``cold``: ``prism_recbole.data.create_dataset`` with ``modalities: [img_emb, txt_emb]``,
  the cache file absent (it is deleted first): our parse, validation, tables, cache write;
* ``cached``: the same again, now reading the cache.

Wall time is the dataset construction only (imports and config excluded).  Peak memory is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end minus its value right before the
dataset is built (after imports and config), i.e. the growth of the process's resident-set
high-water mark caused by loading; it counts numpy, pandas and Python objects alike.
"float32 tables" is ``items x (512 + 512) x 4`` bytes.  Targets, printed as met / not met:
cold <= RecBole's parse time; cached <= 3 s at 100k items; peak <= 2 x the float32 tables.

Example::

    python benchmarks/bench_item_loading.py --items 20000 100000
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 512
FIELDS = ("img_emb", "txt_emb")


def generate(folder, name, n_items, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    vocab = np.array([f"{v:.6f}" for v in rng.normal(0, 0.045, 65536)], dtype=object)
    with open(os.path.join(folder, name, name + ".item"), "w") as f:
        f.write("item_id:token\t" + "\t".join(f"{fld}:float_seq" for fld in FIELDS) + "\n")
        for i in range(1, n_items + 1):
            cells = [" ".join(vocab[rng.integers(0, 65536, DIM)].tolist()) for _ in FIELDS]
            f.write(f"i{i}\t" + "\t".join(cells) + "\n")
    n_users = max(2000, n_items // 10)
    with open(os.path.join(folder, name, name + ".inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(1, n_users + 1):
            for t, item in enumerate(rng.integers(1, n_items + 1, 10)):
                f.write(f"u{u}\ti{item}\t{u * 100 + t}\n")


CHILD = r"""
import json, resource, sys, time
import prism_recbole  # numpy shim first
from prism_recbole.config import Config
from recbole.config import Config as RecBoleConfig
from recbole.data.dataset import SequentialDataset
from prism_recbole.data import create_dataset
case, data_path, name = sys.argv[1:4]
sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
fields = ["img_emb", "txt_emb"]
common = {"data_path": data_path, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
          "TIME_FIELD": "timestamp", "train_neg_sample_args": None, "show_progress": False, "state": "ERROR", "gpu_id": "",
          "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
          "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"] + fields}}
if case == "recbole":
    config = RecBoleConfig(model="SASRec", dataset=name, config_dict=dict(common))
else:
    config = Config(model="SASRec", dataset=name, config_dict=dict(common, modalities=fields))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
dataset = SequentialDataset(config) if case == "recbole" else create_dataset(config)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
status = getattr(dataset, "modality_cache_status", None)
print("RESULT " + json.dumps({"wall": wall, "peak_mb": peak / 1024, "items": dataset.item_num - 1,
                              "status": status}))
"""


def run_case(case, data_path, name):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", CHILD, case, data_path, name], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="prism-bench-items-")
    rows = []
    try:
        for n in args.items:
            name = f"bench{n}"
            t = time.perf_counter()
            generate(root, name, n)
            item_file = os.path.join(root, name, name + ".item")
            size_mb = os.path.getsize(item_file) / 2**20
            print(f"[{n} items] wrote {size_mb:.0f} MB .item in {time.perf_counter() - t:.1f} s",
                  flush=True)
            cache = item_file + ".prism-cache.npz"
            if os.path.exists(cache):
                os.remove(cache)
            results = {}
            for case in ("recbole", "cold", "cached"):
                results[case] = r = run_case(case, root, name)
                print(f"[{n} items] {case:8s} {r['wall']:7.2f} s  peak +{r['peak_mb']:7.0f} MB"
                      f"  (cache: {r['status']})", flush=True)
            assert results["cold"]["status"] == "written" and results["cached"]["status"] == "read"
            rows.append((n, size_mb, n * len(FIELDS) * DIM * 4 / 2**20, results))
            shutil.rmtree(os.path.join(root, name))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    def met(ok):
        return "met" if ok else "NOT met"

    print()
    print("| items | .item MB | float32 tables MB | RecBole parse s / peak MB | cold s / peak MB "
          "| cached s / peak MB | cold <= RecBole | cached <= 3 s | peak <= 2x tables (cold / cached) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, size_mb, table_mb, r in rows:
        rb, cold, cached = r["recbole"], r["cold"], r["cached"]
        cached_target = met(cached["wall"] <= 3.0) if n >= 100000 else f"{met(cached['wall'] <= 3.0)} (target is for 100k)"
        print(f"| {n} | {size_mb:.0f} | {table_mb:.0f} | {rb['wall']:.2f} / {rb['peak_mb']:.0f} "
              f"| {cold['wall']:.2f} / {cold['peak_mb']:.0f} | {cached['wall']:.2f} / {cached['peak_mb']:.0f} "
              f"| {met(cold['wall'] <= rb['wall'])} | {cached_target} "
              f"| {met(cold['peak_mb'] <= 2 * table_mb)} / {met(cached['peak_mb'] <= 2 * table_mb)} |")


if __name__ == "__main__":
    main()
