"""S3-Rec's Amazon Toys, Amazon Sports and Yelp sequences to RecBole atomic files.

    python -m atomic_data.s3rec --name toys            # -> dataset/toys/toys.{inter,item}
    python -m atomic_data.s3rec --name sports          # -> dataset/sports/
    python -m atomic_data.s3rec --name yelp            # -> dataset/yelp-s3rec/ (not dataset/yelp,
                                                       #    the Yelp Open Dataset pipeline's folder)
    python -m atomic_data.s3rec --name toys --src DIR --out DIR --dim 64 --seed 0

Input (``--src``, default ``$PRISM_S3REC_DIR``, else ``shared/data/s3rec`` in or next to the
repository): S3-Rec's ``<Name>.txt`` (``user item item ...``, oldest first) and
``<Name>_item2attributes.json`` (``{"item": [attribute, ...]}``), unchanged from
aHuiWang/CIKM2020-S3Rec ``data/`` (see that folder's ``SOURCE.md``).

Output, in ``<out>/<dataset>/`` (see ``atomic_data/S3REC.md``):

* ``<dataset>.inter``: ``user_id:token item_id:token timestamp:float``; the ids are S3-Rec's
  integers, rows in file order; ``timestamp`` is the item's position in the user's line
  (1, 2, ...), so RecBole's leave-one-out by time (``order: TO``) keeps S3-Rec's order and
  split (last item test, second to last valid). Repeated items (Yelp) are kept, as S3-Rec does.
* ``<dataset>.item``: one row per item, by id: ``item_id:token``, ``attrs:token_seq`` (S3-Rec's
  attribute ids, in its order: for RecBole's SASRecF / FDSA, ``selected_features: [attrs]``),
  and two dense views of the attributes, ``freq_emb:float_seq`` and ``rare_emb:float_seq``
  (``modalities: [freq_emb, rare_emb]``).

The two views: an attribute carried by every item is dropped (a constant); an attribute
carried by at least ``--freq-share`` of the items (default 1 %, rounded up to a whole number
of items) is *frequent* (category-like), the others are *rare* (brands, niche categories).
Attribute ``a`` has a fixed random vector ``r_a`` (row ``a`` of a ``[max id + 1, dim]``
standard normal matrix drawn by ``numpy.random.default_rng(seed)``); an item's view is the sum
of ``r_a`` over its distinct attributes of that kind, L2-normalised, written with ``%.6g``.
An item with no attribute of a kind gets an empty cell: that modality is missing for it.

The counts of users, items and interactions are checked against the published ones (an
error if they differ; ``--skip-count-check`` for other inputs, e.g. a slice). Files are
written to a temporary name and renamed; a file whose content would not change is left
untouched (its mtime too, so the modality cache next to it stays valid). Reruns give
byte-identical files.
"""
import json
import math
import os
import sys
from collections import Counter

import numpy as np

from atomic_data.common import (
    DEFAULT_OUT,
    DatasetPaths,
    RawInputError,
    atomic_write,
    print_summary,
    remove_stale_temps,
    save_summary,
    step_main,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_SRC = "PRISM_S3REC_DIR"

#: --name -> (S3-Rec file stem, output dataset name, published (users, items, interactions))
DATASETS = {
    "toys": ("Toys_and_Games", "toys", (19412, 11924, 167597)),
    "sports": ("Sports_and_Outdoors", "sports", (35598, 18357, 296337)),
    "yelp": ("Yelp", "yelp-s3rec", (30431, 20033, 316354)),
}
ALIASES = {"yelp-s3rec": "yelp"}

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
FREQ_FIELD, RARE_FIELD, ATTR_FIELD = "freq_emb", "rare_emb", "attrs"
ITEM_HEADER = f"item_id:token\t{ATTR_FIELD}:token_seq\t{FREQ_FIELD}:float_seq\t{RARE_FIELD}:float_seq"
DEFAULT_DIM = 64
DEFAULT_SEED = 0
DEFAULT_FREQ_SHARE = 0.01


def source_candidates():
    """Where the S3-Rec files are looked for, in order (``$PRISM_S3REC_DIR`` alone when set)."""
    env = os.environ.get(ENV_SRC)
    if env:
        return [env]
    return [os.path.join(REPO, "shared", "data", "s3rec"),
            os.path.join(os.path.dirname(REPO), "shared", "data", "s3rec")]


def default_source():
    candidates = source_candidates()
    return next((c for c in candidates if os.path.isdir(c)), candidates[0])


def source_files(src, name):
    stem = DATASETS[name][0]
    return os.path.join(src, f"{stem}.txt"), os.path.join(src, f"{stem}_item2attributes.json")


def _require(path, src_given):
    if os.path.isfile(path):
        return
    where = ("--src" if src_given else
             f"--src or ${ENV_SRC} (looked in: {', '.join(source_candidates())})")
    raise RawInputError(
        f"{path}: no such file; S3-Rec's data/ folder (aHuiWang/CIKM2020-S3Rec) must hold it; "
        f"point {where} at that folder"
    )


# ---- reading ----------------------------------------------------------------------------

def read_sequences(path):
    """``[(user, [item, ...]), ...]`` in file order; ids stay strings of S3-Rec's integers."""
    sequences, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            bad = next((p for p in parts if not p.isdigit()), None)
            if bad is not None:
                raise RawInputError(f"{path}, line {line_no}: {bad[:40]!r} is not an integer id")
            if len(parts) < 2:
                raise RawInputError(f"{path}, line {line_no}: user {parts[0]} has no items")
            user = str(int(parts[0]))
            if user in seen:
                raise RawInputError(f"{path}, lines {seen[user]} and {line_no}: user {user} appears twice")
            seen[user] = line_no
            sequences.append((user, [str(int(p)) for p in parts[1:]]))
    if not sequences:
        raise RawInputError(f"{path}: no sequences")
    return sequences


def read_attributes(path):
    """``{item: [attribute, ...]}`` with integer attribute ids, S3-Rec's order kept."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except ValueError as err:
        raise RawInputError(f"{path}: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise RawInputError(f"{path}: expected an object {{item: [attribute, ...]}}")
    attributes = {}
    for item, values in raw.items():
        if not str(item).isdigit():
            raise RawInputError(f"{path}: item key {str(item)[:40]!r} is not an integer id")
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise RawInputError(f"{path}: item {item}: attributes must be a list of non-negative integers")
        attributes[str(int(item))] = values
    return attributes


# ---- views ------------------------------------------------------------------------------

def split_attributes(items, attributes, freq_share):
    """``(frequency Counter, constant set, frequent set, rare set, min count)`` over ``items``."""
    counts = Counter(a for item in items for a in set(attributes.get(item, ())))
    n_items = len(items)
    constant = {a for a, c in counts.items() if c == n_items}
    min_count = max(1, math.ceil(freq_share * n_items - 1e-9))
    frequent = {a for a, c in counts.items() if c >= min_count and a not in constant}
    rare = {a for a, c in counts.items() if c < min_count and a not in constant}
    return counts, constant, frequent, rare, min_count


def attribute_vectors(max_attr, dim, seed):
    """Row ``a``: the fixed random vector of attribute ``a`` (standard normal)."""
    return np.random.default_rng(seed).standard_normal((max_attr + 1, dim))


def view_vector(attrs, kind, table):
    """Sum of the vectors of ``attrs`` that are in ``kind``, L2-normalised; None if none."""
    chosen = sorted({a for a in attrs if a in kind})
    if not chosen:
        return None
    vec = table[chosen].sum(axis=0)
    norm = np.linalg.norm(vec)
    if not np.isfinite(norm) or norm == 0.0:  # pragma: no cover - measure zero
        return None
    return vec / norm


def _fmt_vector(vec):
    return "" if vec is None else " ".join(f"{x:.6g}" for x in vec)


# ---- writing ----------------------------------------------------------------------------

def write_if_changed(path, text):
    """Write ``text`` atomically unless the file already holds exactly it; True if written."""
    data = text.encode("utf-8")
    if os.path.isfile(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    with atomic_write(path, "wb") as f:
        f.write(data)
    return True


def convert(name, src=None, out=DEFAULT_OUT, dim=DEFAULT_DIM, seed=DEFAULT_SEED,
            freq_share=DEFAULT_FREQ_SHARE, check_counts=True, dataset=None, quiet=False):
    """Convert one S3-Rec dataset; returns the summary dict."""
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise ValueError(f"unknown S3-Rec dataset {name!r}; one of {', '.join(DATASETS)}")
    if dim < 1:
        raise ValueError(f"--dim must be at least 1, got {dim}")
    if not 0.0 < freq_share <= 1.0:
        raise ValueError(f"--freq-share must be in (0, 1], got {freq_share}")
    src_given = src is not None
    src = src if src_given else default_source()
    seq_path, attr_path = source_files(src, name)
    _require(seq_path, src_given)
    _require(attr_path, src_given)
    stem, default_dataset, published = DATASETS[name]
    paths = DatasetPaths(out, dataset or default_dataset)

    sequences = read_sequences(seq_path)
    attributes = read_attributes(attr_path)
    items = sorted({i for _, seq in sequences for i in seq}, key=int)
    n_inter = sum(len(seq) for _, seq in sequences)
    counts = (len(sequences), len(items), n_inter)
    if check_counts and counts != published:
        raise RawInputError(
            f"{seq_path}: {counts[0]} users, {counts[1]} items, {counts[2]} interactions, but "
            f"S3-Rec published {published[0]}, {published[1]}, {published[2]} for {stem}; "
            "is this S3-Rec's unchanged file? (--skip-count-check for other inputs)"
        )

    attr_counts, constant, frequent, rare, min_count = split_attributes(items, attributes, freq_share)
    max_attr = max((a for v in attributes.values() for a in v), default=0)
    table = attribute_vectors(max_attr, dim, seed)

    inter_lines = [INTER_HEADER]
    for user, seq in sequences:
        inter_lines.extend(f"{user}\t{item}\t{pos}" for pos, item in enumerate(seq, start=1))
    item_lines = [ITEM_HEADER]
    missing = Counter()
    for item in items:
        attrs = attributes.get(item, [])
        vec_f = view_vector(attrs, frequent, table)
        vec_r = view_vector(attrs, rare, table)
        missing["attrs"] += not attrs
        missing[FREQ_FIELD] += vec_f is None
        missing[RARE_FIELD] += vec_r is None
        item_lines.append(f"{item}\t{' '.join(map(str, attrs))}\t{_fmt_vector(vec_f)}\t{_fmt_vector(vec_r)}")

    os.makedirs(paths.folder, exist_ok=True)
    remove_stale_temps(paths.folder)
    written = [os.path.basename(p) for p, lines in ((paths.inter, inter_lines), (paths.item, item_lines))
               if write_if_changed(p, "\n".join(lines) + "\n")]

    summary = {
        "source": {"sequences": os.path.abspath(seq_path), "attributes": os.path.abspath(attr_path)},
        "users": counts[0], "items": counts[1], "interactions": counts[2],
        "published (users, items, interactions)": list(published),
        "counts match the published ones": counts == published,
        "attributes": len(attr_counts),
        "attributes on every item (dropped from the views)": sorted(constant),
        f"frequent attributes (on >= {min_count} items, {FREQ_FIELD})": len(frequent),
        f"rare attributes (on < {min_count} items, {RARE_FIELD})": len(rare),
        "items without attributes": missing["attrs"],
        f"items missing {FREQ_FIELD}": missing[FREQ_FIELD],
        f"items missing {RARE_FIELD}": missing[RARE_FIELD],
        "dim": dim, "seed": seed, "freq_share": freq_share,
    }
    save_summary(paths, "s3rec", summary)
    if not quiet:
        check = ("match the published ones" if counts == published
                 else f"published: {published[0]:,} / {published[1]:,} / {published[2]:,}")
        print_summary(f"S3-Rec {stem} -> {paths.folder}", [
            ("users / items / interactions", f"{counts[0]:,} / {counts[1]:,} / {counts[2]:,} ({check})"),
            ("attributes", f"{len(attr_counts):,} ({len(constant)} on every item, dropped from the views)"),
            (f"{FREQ_FIELD} (frequent)", f"{len(frequent):,} attributes on >= {min_count} items "
                                         f"({freq_share:g} of the items); {missing[FREQ_FIELD]:,} items miss it"),
            (f"{RARE_FIELD} (rare)", f"{len(rare):,} attributes on < {min_count} items; "
                                     f"{missing[RARE_FIELD]:,} items miss it"),
            ("items without attributes", f"{missing['attrs']:,}"),
            ("vectors", f"{dim}-d, L2-normalised, seed {seed}"),
            ("written", ", ".join(written) if written else "nothing (files already up to date)"),
        ])
    return summary


def add_arguments(parser):
    parser.add_argument("--name", required=True, choices=sorted(DATASETS) + sorted(ALIASES),
                        help="S3-Rec dataset (output folder: toys, sports, yelp-s3rec)")
    parser.add_argument("--src", default=None,
                        help=f"folder of S3-Rec's files (default: ${ENV_SRC}, else shared/data/s3rec "
                             "in or next to the repository)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output root (default: %(default)s)")
    parser.add_argument("--dataset", default=None,
                        help="output dataset name (default: toys, sports, yelp-s3rec)")
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM, help="vector size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the attribute vectors (default: %(default)s)")
    parser.add_argument("--freq-share", type=float, default=DEFAULT_FREQ_SHARE,
                        help="an attribute on at least this share of the items is frequent "
                             "(default: %(default)s)")
    parser.add_argument("--skip-count-check", action="store_true",
                        help="do not require S3-Rec's published user/item/interaction counts")


def run_from_args(args):
    convert(args.name, src=args.src, out=args.out, dim=args.dim, seed=args.seed,
            freq_share=args.freq_share, check_counts=not args.skip_count_check, dataset=args.dataset)


def main(argv=None):
    return step_main("python -m atomic_data.s3rec", __doc__, add_arguments, run_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
