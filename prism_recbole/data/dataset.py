"""Multimodal item vectors from RecBole atomic ``.item`` files.

The config names the modality fields, e.g. ``modalities: [img_emb, txt_emb]``; each is a
``float_seq`` column of the ``.item`` file, parsed by RecBole's own ``_load_feat``.  On top of
RecBole's loading this class

* checks every vector at load time: one length per field, finite values, one row per item,
  a parseable file; each failure is one :class:`AtomicFileError` naming the file, line,
  field and item;
* turns each field once into a dense ``float32`` table ``[item_num, dim]`` whose row ``i``
  is RecBole's internal item id ``i`` (row 0, the padding item, is all zeros), plus a
  boolean ``missing`` vector: items with interactions but no row in ``.item``, and items
  whose cell is empty, get a zero row and ``missing = True`` (the count is logged);
* removes the modality columns from RecBole's ``item_feat`` afterwards, so RecBole does not
  copy ``[batch, dim]`` vectors into every training batch nor move them to the GPU again
  at evaluation (models read the dense tables instead).

**Speed.** RecBole parses ``float_seq`` cells with ``pandas.read_csv(engine="python")`` and one
Python ``float()`` per value (about 8 s and 0.7 GB for 20,000 items x two 512-d fields).  When
the header declares every modality field as ``float_seq``, this class hides the modality
fields from RecBole's load columns and reads them itself in one streaming pass over the file
(the column count of every line is checked in the same pass), with the same number parser
(``numpy`` casts ``str`` to ``float64`` through Python's ``float``), then casts to ``float32``
exactly as before.  RecBole still parses the other loaded item columns; when the item id is
the only one, its column is taken from the same pass and RecBole does not open the file.

**Cache** (``modality_cache: True``, the default).  After a fully validated parse, the
file-order ``float32`` matrices, present flags, dims and item tokens are written next to the
data as ``<dataset>.item.prism-cache.npz`` (plain ``.npy`` members and a JSON member, read
with ``allow_pickle=False``; written to a temporary name and renamed).  It is keyed by a
signature of the ``.item`` file (size, ``mtime_ns``, sha256 of the header line) and of the
options that change the parse (modality fields, separators, encoding, ``seq_len``).  A valid
cache replaces the parse of the modality columns; a stale or corrupt one is logged, ignored
and rewritten.  The dense tables built from it are bitwise those of the parse.

RecBole's own SASRecF / FDSA route float_seq fields through ``FeatureSeqEmbLayer``, which
reduces a dense vector to one scalar (RecBole issues #1983, #2196); this path does not use it.
"""
import hashlib
import json
import os
import uuid
import zipfile
from collections import Counter

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.utils import FeatureSource, FeatureType, set_color

from prism_recbole.config import parse_list_option

try:  # the strings that pandas' read_csv turns into NaN (RecBole then treats the cell as empty)
    from pandas._libs.parsers import STR_NA_VALUES as _NA_STRINGS
except ImportError:  # pragma: no cover - older/newer pandas layout
    _NA_STRINGS = {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
        "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
_NA_STRINGS = frozenset(_NA_STRINGS)

CACHE_FORMAT = "prism-recbole modality cache 1"
CACHE_SUFFIX = ".prism-cache.npz"
CHUNK_ROWS = 1024


class AtomicFileError(ValueError):
    """A malformed atomic file or a bad item vector; the message names file, line and field."""


def check_one_row_per_item(filepath, tokens, lines):
    """A second row for an item is an error naming both lines."""
    duplicated = pd.Series(tokens, dtype=object).duplicated(keep=False).values
    if duplicated.any():
        dup_token = tokens[np.flatnonzero(duplicated)[0]]
        dup_lines = lines[tokens == dup_token][:2]
        raise AtomicFileError(
            f"{filepath}, lines {dup_lines[0]} and {dup_lines[1]}: item '{dup_token}' has "
            "more than one row; each item must have exactly one row in the .item file"
        )


def common_vector_length(filepath, field, lengths, lines, tokens):
    """The length shared by the non-empty vectors of ``field`` (the most common one); any
    other length is an error naming the line, the item and both lengths.
    Returns ``(dim, nonempty mask)``."""
    nonempty = lengths > 0
    if not nonempty.any():
        raise AtomicFileError(f"{filepath}: modality field '{field}' is empty for every item")
    dim = Counter(lengths[nonempty].tolist()).most_common(1)[0][0]
    wrong = np.flatnonzero(nonempty & (lengths != dim))
    if wrong.size:
        i = wrong[0]
        raise AtomicFileError(
            f"{filepath}, line {lines[i]}: item '{tokens[i]}' has a '{field}' vector "
            f"of length {lengths[i]}, but the other '{field}' vectors have length {dim}"
        )
    return int(dim), nonempty


def check_column_counts(filepath, field_separator="\t", encoding="utf-8"):
    """Every non-empty line must have as many columns as the header (pandas pads or drops)."""
    with open(filepath, "r", encoding=encoding) as f:
        expected = f.readline().rstrip("\r\n").count(field_separator)
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if line and line.count(field_separator) != expected:
                raise AtomicFileError(
                    f"{filepath}, line {line_no}: {line.count(field_separator) + 1} "
                    f"columns, but the header declares {expected + 1}"
                )


def locate_bad_value(filepath, field_separator="\t", seq_separator=" ", encoding="utf-8"):
    """Scan an atomic file for the first line that RecBole cannot parse; return a message."""
    with open(filepath, "r", encoding=encoding) as f:
        header = f.readline().rstrip("\r\n").split(field_separator)
        fields = []
        for col in header:
            name, _, ftype = col.partition(":")
            fields.append((name, ftype))
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cells = line.split(field_separator)
            if len(cells) != len(fields):
                return (
                    f"{filepath}, line {line_no}: {len(cells)} columns, "
                    f"but the header declares {len(fields)}"
                )
            for (name, ftype), cell in zip(fields, cells):
                if ftype not in ("float", "float_seq"):
                    continue
                values = cell.split(seq_separator) if ftype == "float_seq" else [cell]
                for value in filter(None, values):
                    try:
                        float(value)
                    except ValueError:
                        return (
                            f"{filepath}, line {line_no}: field '{name}' ({ftype}) holds "
                            f"'{value[:40]}', which is not a number"
                        )
    return None


def _column_count_message(filepath, line_no, n_cells, n_header):
    return f"{filepath}, line {line_no}: {n_cells} columns, but the header declares {n_header}"


def read_header(filepath, encoding="utf-8"):
    """The header line as RecBole reads it (``readline()[:-1]``)."""
    with open(filepath, "r", encoding=encoding) as f:
        return f.readline()[:-1]


def parse_header(head, field_separator):
    """``[(name, FeatureType), ...]`` or None when RecBole would reject the header."""
    fields = []
    for field_type in head.split(field_separator):
        parts = field_type.split(":")
        if len(parts) != 2:
            return None
        try:
            fields.append((parts[0], FeatureType(parts[1])))
        except ValueError:
            return None
    return fields


class ItemVectors:
    """The modality columns of a ``.item`` file in file order (one entry per data line).

    ``tokens``: the raw item id cells; ``lines``: their line numbers (None when read from the
    cache); per field: ``chunks`` (list of float32 ``[rows, dim]`` blocks, rows without a
    vector are zero), ``present`` (bool per row) and ``dims``.
    """

    def __init__(self, tokens, lines, chunks, present, dims):
        self.tokens = tokens
        self.lines = lines
        self.chunks = chunks
        self.present = present
        self.dims = dims

    def __len__(self):
        return len(self.tokens)


class _FieldAccumulator:
    """Collects one modality column: float32 chunks, lengths, first non-finite row."""

    def __init__(self, seq_separator, seq_len):
        self.sep = seq_separator
        self.seq_len = seq_len
        self.lengths = []
        self.dim = None  # provisional: the first non-empty length
        self.leading_empty = 0  # rows flushed before any vector gave the width
        self.pending = []
        self.chunks = []
        self.first_nonfinite = None  # (row, bad value)

    def add(self, cell, row):
        """Parse one cell like RecBole (NaN-like cell = empty; ``float()`` per value)."""
        if cell in _NA_STRINGS:
            vec = None
        else:
            parts = cell.split(self.sep)
            if "" in parts:
                parts = [p for p in parts if p]
            if parts:
                vec = np.array(parts, dtype=np.float64)  # ValueError on a non-number
                if self.seq_len is not None:
                    vec = vec[: self.seq_len]
            else:
                vec = None
        n = 0 if vec is None else len(vec)
        self.lengths.append(n)
        if n:
            if self.dim is None:
                self.dim = n
                if self.leading_empty:  # the empty rows seen so far, now that the width is known
                    self.chunks.append(np.zeros((self.leading_empty, n), dtype=np.float32))
                    self.leading_empty = 0
            if self.first_nonfinite is None and not np.isfinite(vec).all():
                self.first_nonfinite = (row, vec[~np.isfinite(vec)][0])
        self.pending.append(vec)
        if len(self.pending) == CHUNK_ROWS:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        if self.dim is None:  # only empty cells so far: their block is made once the width is known
            self.leading_empty += len(self.pending)
            self.pending = []
            return
        block = np.zeros((len(self.pending), self.dim or 0), dtype=np.float32)
        for i, vec in enumerate(self.pending):
            if vec is not None and len(vec) == self.dim:
                block[i] = vec
        self.chunks.append(block)
        self.pending = []


def parse_item_vectors(filepath, header_fields, iid_field, modalities, field_separator="\t",
                       seq_separator=" ", encoding="utf-8", seq_len=None):
    """One streaming pass over a ``.item`` file: item tokens and modality vectors.

    Every non-empty line must have as many columns as the header (checked here, in the same
    pass).  A value that is not a number raises :class:`AtomicFileError` with the message of
    :func:`locate_bad_value`.  Lengths, duplicates and finiteness are checked by
    :func:`validate_item_vectors`.
    """
    names = [name for name, _ in header_fields]
    n_cols = len(names)
    iid_pos = names.index(iid_field)
    seq_len = seq_len or {}
    accs = [(names.index(field), _FieldAccumulator(seq_separator, seq_len.get(field)))
            for field in modalities]
    tokens, lines = [], []
    with open(filepath, "r", encoding=encoding) as f:
        f.readline()
        row = 0
        try:
            for line_no, line in enumerate(f, start=2):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                cells = line.split(field_separator)
                if len(cells) != n_cols:
                    raise AtomicFileError(_column_count_message(filepath, line_no, len(cells), n_cols))
                tokens.append(cells[iid_pos])
                lines.append(line_no)
                for pos, acc in accs:
                    acc.add(cells[pos], row)
                row += 1
        except ValueError as err:
            if isinstance(err, AtomicFileError):
                raise
            where = locate_bad_value(filepath, field_separator, seq_separator, encoding)
            raise AtomicFileError(where or f"{filepath}: {err}") from None
    for _, acc in accs:
        acc.flush()
    chunks, present, dims = {}, {}, {}
    lengths = {}
    for field, (_, acc) in zip(modalities, accs):
        lengths[field] = np.asarray(acc.lengths, dtype=np.int64)
        chunks[field] = acc.chunks
        dims[field] = acc.dim
    vectors = ItemVectors(tokens, np.asarray(lines, dtype=np.int64), chunks, present, dims)
    vectors._lengths = lengths
    vectors._first_nonfinite = {field: acc.first_nonfinite for field, (_, acc) in zip(modalities, accs)}
    return vectors


def validate_item_vectors(vectors, filepath, modalities):
    """The checks of the old full-RecBole path, same order and messages; sets dims/present."""
    tokens = np.array(vectors.tokens, dtype=object)
    lines = vectors.lines
    check_one_row_per_item(filepath, tokens, lines)
    for field in modalities:
        lengths = vectors._lengths[field]
        dim, nonempty = common_vector_length(filepath, field, lengths, lines, tokens)
        bad = vectors._first_nonfinite[field]
        if bad is not None:
            i, value = bad
            raise AtomicFileError(
                f"{filepath}, line {lines[i]}: item '{tokens[i]}' has a non-finite "
                f"value ({value}) in its '{field}' vector"
            )
        vectors.dims[field] = int(dim)
        vectors.present[field] = nonempty
    del vectors._lengths, vectors._first_nonfinite


# ---- the cache -----------------------------------------------------------------------------
def cache_path_for(item_path):
    return item_path + CACHE_SUFFIX


def item_file_signature(filepath, header, modalities, field_separator, seq_separator,
                        encoding, seq_len):
    """What the cache is keyed by: the file's size, mtime and header, and the parse options."""
    st = os.stat(filepath)
    return {
        "format": CACHE_FORMAT,
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "header_sha256": hashlib.sha256(header.encode("utf-8")).hexdigest(),
        "fields": list(modalities),
        "field_separator": field_separator,
        "seq_separator": seq_separator,
        "encoding": encoding,
        "seq_len": {f: int(seq_len[f]) for f in modalities if seq_len and f in seq_len},
    }


def _member(field, kind):
    return f"{kind}-{modality_index(field)}.npy"


def modality_index(field):
    return hashlib.sha256(field.encode("utf-8")).hexdigest()[:16]


def write_cache(path, signature, vectors, modalities):
    """Write ``vectors`` (validated) to ``path`` atomically: temporary name, then rename."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    meta = {
        "signature": signature,
        "n_rows": len(vectors),
        "dims": {f: vectors.dims[f] for f in modalities},
        "tokens": list(vectors.tokens),
    }
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr("meta.json", json.dumps(meta))
            for field in modalities:
                dim = vectors.dims[field]
                with zf.open(_member(field, "present"), "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(vectors.present[field], dtype=bool),
                                              allow_pickle=False)
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                          "fortran_order": False, "shape": (len(vectors), dim)}
                with zf.open(_member(field, "vectors"), "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_2_0(f, header)
                    for chunk in vectors.chunks[field]:
                        f.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_cache(path, signature, modalities):
    """``(ItemVectors, None)`` from a valid cache, or ``(None, reason)``."""
    if not os.path.exists(path):
        return None, "absent"
    try:
        with zipfile.ZipFile(path, "r") as zf:
            meta = json.loads(zf.read("meta.json").decode("utf-8"))
            if meta.get("signature") != signature:
                return None, "stale (the .item file or the parse options changed)"
            n_rows = int(meta["n_rows"])
            tokens = meta["tokens"]
            if not isinstance(tokens, list) or len(tokens) != n_rows or not all(
                isinstance(t, str) for t in tokens
            ):
                return None, "corrupt (bad token list)"
            chunks, present, dims = {}, {}, {}
            for field in modalities:
                dim = int(meta["dims"][field])
                with zf.open(_member(field, "present")) as f:
                    flags = np.lib.format.read_array(f, allow_pickle=False)
                with zf.open(_member(field, "vectors")) as f:
                    matrix = np.lib.format.read_array(f, allow_pickle=False)
                if (flags.dtype != bool or flags.shape != (n_rows,) or matrix.dtype != np.float32
                        or matrix.shape != (n_rows, dim)):
                    return None, f"corrupt (bad arrays for '{field}')"
                chunks[field], present[field], dims[field] = [matrix], flags, dim
    except Exception as err:  # noqa: BLE001  (any unreadable cache is rebuilt, never trusted)
        return None, f"corrupt ({type(err).__name__}: {err})"
    return ItemVectors(tokens, None, chunks, present, dims), None


class ModalityFeaturesMixin:
    """Adds validated dense modality tables to a RecBole dataset (see module docstring)."""

    def _get_preset(self):
        super()._get_preset()
        self.modalities = parse_list_option(self.config["modalities"])
        self.modality_features = {}  # field -> FloatTensor [item_num, dim]
        self.modality_missing = {}  # field -> BoolTensor [item_num]
        self.modality_dims = {}  # field -> int
        self.modality_cache_status = None  # "written", "read", "off", "unwritable" (fast path)
        self._item_file = None
        self._item_rows = {}  # token -> line number in the .item file
        self._modality_present = {}  # field -> set of tokens that have a vector
        self._item_vectors = None  # ItemVectors of the fast path (file order)
        self._item_feat_ids = None  # internal ids of the item_feat rows before RecBole's merge
        self._hide_modalities = False

    # ---- loading ------------------------------------------------------------------------
    def _get_load_and_unload_col(self, source):
        load_col, unload_col = super()._get_load_and_unload_col(source)
        if self._hide_modalities and source == FeatureSource.ITEM:
            hidden = set(self.modalities)
            if load_col is None:
                unload_col = set(unload_col or ()) | hidden
            else:
                load_col = set(load_col) - hidden
        return load_col, unload_col

    def _load_feat(self, filepath, source):
        if source == FeatureSource.ITEM and self.modalities:
            plan = self._fast_path_plan(filepath)
            if plan is not None:
                return self._load_item_feat_fast(filepath, *plan)
            check_column_counts(filepath, self.config["field_separator"], self.config["encoding"])
        df = self._recbole_load_feat(filepath, source)
        if source == FeatureSource.ITEM and self.modalities:
            self._item_file = filepath
            if df is not None:
                self._check_modality_columns(df, filepath)
        return df

    def _recbole_load_feat(self, filepath, source):
        try:
            return super()._load_feat(filepath, source)
        except pd.errors.ParserError as err:
            raise AtomicFileError(f"{filepath}: malformed atomic file: {err}") from None
        except ValueError as err:
            where = locate_bad_value(
                filepath,
                self.config["field_separator"],
                self.config["seq_separator"],
                self.config["encoding"],
            )
            raise AtomicFileError(where or f"{filepath}: {err}") from None

    def _fast_path_plan(self, filepath):
        """``(header, header_fields, other_columns)`` when this class can read the modality
        columns itself, else None (then RecBole parses them and the checks name the problem)."""
        encoding = self.config["encoding"]
        header = read_header(filepath, encoding)
        header_fields = parse_header(header, self.config["field_separator"])
        if header_fields is None:
            return None
        types = dict(header_fields)
        if len(types) != len(header_fields) or self.iid_field not in types:
            return None
        if any(types.get(field) != FeatureType.FLOAT_SEQ for field in self.modalities):
            return None
        load_col, unload_col = super()._get_load_and_unload_col(FeatureSource.ITEM)

        def loaded(name):
            return (load_col is None or name in load_col) and not (unload_col and name in unload_col)

        if not all(loaded(field) for field in self.modalities) or not loaded(self.iid_field):
            return None
        others = [name for name, _ in header_fields if loaded(name) and name not in self.modalities]
        return header, header_fields, others

    def _load_item_feat_fast(self, filepath, header, header_fields, others):
        config = self.config
        fsep, ssep, encoding = config["field_separator"], config["seq_separator"], config["encoding"]
        seq_len = {f: config["seq_len"][f] for f in self.modalities
                   if config["seq_len"] and f in config["seq_len"]}
        use_cache = config["modality_cache"]
        use_cache = True if use_cache is None else bool(use_cache)
        signature = item_file_signature(filepath, header, self.modalities, fsep, ssep, encoding, seq_len)
        cache_file = cache_path_for(filepath)
        vectors = None
        if use_cache:
            vectors, reason = read_cache(cache_file, signature, self.modalities)
            if vectors is None and reason != "absent":
                self.logger.warning(f"modality cache {cache_file} is {reason}; ignored, rebuilding it")
        parsed = vectors is None
        if parsed:
            vectors = parse_item_vectors(filepath, header_fields, self.iid_field, self.modalities,
                                         fsep, ssep, encoding, seq_len)
        # the other loaded item columns: RecBole parses them (the modality fields hidden), or,
        # when the item id is the only one, its column comes from the same pass
        iid_type = dict(header_fields)[self.iid_field]
        if others == [self.iid_field] and iid_type == FeatureType.TOKEN:
            self.field2source[self.iid_field] = FeatureSource.ITEM
            self.field2type[self.iid_field] = iid_type
            self.field2seqlen[self.iid_field] = 1
            column = np.array(vectors.tokens, dtype=object)
            column[np.isin(column, list(_NA_STRINGS))] = np.nan
            df = pd.DataFrame({self.iid_field: column})
        else:
            self._hide_modalities = True
            try:
                df = self._recbole_load_feat(filepath, FeatureSource.ITEM)
            finally:
                self._hide_modalities = False
            if df is not None and self.iid_field in df.columns:
                theirs = df[self.iid_field].fillna("").astype(str).values
                ours = np.array(vectors.tokens, dtype=object)
                ours[np.isin(ours, list(_NA_STRINGS))] = ""
                if len(theirs) != len(ours) or not (theirs == ours).all():
                    raise AtomicFileError(
                        f"{filepath}: pandas and a line-by-line read disagree on the item id "
                        "column (quoted cells or embedded line breaks are not supported in a "
                        ".item file with modality fields)"
                    )
        if parsed:
            validate_item_vectors(vectors, filepath, self.modalities)
            if use_cache:
                try:
                    write_cache(cache_file, signature, vectors, self.modalities)
                    self.modality_cache_status = "written"
                except OSError as err:
                    self.modality_cache_status = "unwritable"
                    self.logger.warning(f"could not write the modality cache {cache_file}: {err}")
            else:
                self.modality_cache_status = "off"
        else:
            self.modality_cache_status = "read"
            self.logger.info(f"modality vectors read from the cache {cache_file}")
        self._item_file = filepath
        self._item_vectors = vectors
        self._item_rows = dict.fromkeys(vectors.tokens)
        self.modality_dims = dict(vectors.dims)
        return df

    def _check_modality_columns(self, df, filepath):
        iid = self.iid_field
        if iid not in df.columns:
            raise AtomicFileError(f"{filepath}: no '{iid}' column; cannot key item vectors")
        tokens = df[iid].values
        lines = np.arange(len(df)) + 2  # line 1 is the header
        check_one_row_per_item(filepath, tokens, lines)
        self._item_rows = dict(zip(tokens, lines))
        for field in self.modalities:
            if field not in df.columns:
                raise AtomicFileError(
                    f"{filepath}: modality field '{field}' (config option 'modalities') is not "
                    f"a loaded column of this file; loaded columns: {', '.join(df.columns)}"
                )
            if self.field2type[field] != FeatureType.FLOAT_SEQ:
                raise AtomicFileError(
                    f"{filepath}: modality field '{field}' must be declared as "
                    f"'{field}:float_seq' in the header, not '{self.field2type[field].value}'"
                )
            vectors = df[field].values
            lengths = np.fromiter((len(v) for v in vectors), dtype=np.int64, count=len(vectors))
            dim, nonempty = common_vector_length(filepath, field, lengths, lines, tokens)
            for i in np.flatnonzero(nonempty):
                if not np.isfinite(vectors[i]).all():
                    bad = vectors[i][~np.isfinite(vectors[i])][0]
                    raise AtomicFileError(
                        f"{filepath}, line {lines[i]}: item '{tokens[i]}' has a non-finite "
                        f"value ({bad}) in its '{field}' vector"
                    )
            self.modality_dims[field] = int(dim)
            self._modality_present[field] = set(tokens[nonempty].tolist())

    # ---- dense tables -------------------------------------------------------------------
    def _data_processing(self):
        super()._data_processing()
        if self.modalities:
            self._build_modality_tables()

    def _user_item_feat_preparation(self):
        # the rows that survived RecBole's filtering, before it merges item_feat onto all ids
        if self.item_feat is not None and self._item_vectors is not None:
            self._item_feat_ids = np.asarray(self.item_feat[self.iid_field].values).copy()
        super()._user_item_feat_preparation()

    def _build_modality_tables(self):
        if self.item_feat is None:
            path = os.path.join(self.dataset_path, f"{self.dataset_name}.item")
            raise AtomicFileError(
                f"{path}: the config names modality fields {self.modalities}, but no item "
                "features were loaded (is the file there, and is it in load_col?)"
            )
        id2token = self.field2id_token[self.iid_field]
        n_items = len(id2token)
        ids = self.item_feat[self.iid_field].values
        if len(ids) != n_items or not np.array_equal(ids, np.arange(n_items)):
            raise RuntimeError("item_feat is not ordered by internal item id")  # RecBole invariant
        no_row = np.array([tok not in self._item_rows for tok in id2token])
        no_row[0] = False  # [PAD]
        if self._item_vectors is not None:
            self._build_tables_from_vectors(n_items, no_row)
            return
        for field in self.modalities:
            dim = self.modality_dims[field]
            vectors = self.item_feat[field].values
            table = np.zeros((n_items, dim), dtype=np.float32)
            present = np.zeros(n_items, dtype=bool)
            for i in range(1, n_items):
                vec = vectors[i]
                if len(vec) == dim:
                    table[i] = vec
                    present[i] = True
            self._set_modality_table(field, table, present, no_row)
            self._del_col(self.item_feat, field)

    def _build_tables_from_vectors(self, n_items, no_row):
        """Scatter the file-order rows of the fast path / cache into id-ordered tables."""
        vectors = self._item_vectors
        token2id = self.field2token_id[self.iid_field]
        row_ids = np.fromiter((token2id.get(tok, -1) if isinstance(tok, str) else -1
                               for tok in vectors.tokens), dtype=np.int64, count=len(vectors))
        kept = np.zeros(n_items, dtype=bool)
        if self._item_feat_ids is not None:
            kept[self._item_feat_ids[(self._item_feat_ids >= 0) & (self._item_feat_ids < n_items)]] = True
        kept[0] = False
        usable = row_ids >= 0
        usable[usable] = kept[row_ids[usable]]
        for field in self.modalities:
            dim = vectors.dims[field]
            table = np.zeros((n_items, dim), dtype=np.float32)
            present = np.zeros(n_items, dtype=bool)
            chunks = vectors.chunks.pop(field)  # freed before the next field's table
            start, chunk, block = 0, None, None
            for chunk in chunks:
                for lo in range(0, len(chunk), CHUNK_ROWS):  # bounded temporaries
                    block = chunk[lo:lo + CHUNK_ROWS]
                    stop = start + len(block)
                    sel = usable[start:stop] & vectors.present[field][start:stop]
                    ids = row_ids[start:stop][sel]
                    table[ids] = block[sel]
                    present[ids] = True
                    start = stop
            del chunks, chunk, block
            self._set_modality_table(field, table, present, no_row)
            if field in self.item_feat.columns:
                self._del_col(self.item_feat, field)
        self._item_vectors = None

    def _set_modality_table(self, field, table, present, no_row):
        n_items, dim = table.shape
        missing = ~present
        n_empty = int((missing & ~no_row).sum() - 1)  # minus [PAD]
        n_no_row = int(no_row.sum())
        self.modality_features[field] = torch.from_numpy(table)
        self.modality_missing[field] = torch.from_numpy(missing)
        message = (
            f"modality '{field}': {dim}-d vectors for {int(present.sum())} of "
            f"{n_items - 1} items"
        )
        if n_no_row or n_empty:
            message += (
                f"; zero vector + missing flag for {n_no_row} item(s) with no row in "
                f"{self._item_file} and {n_empty} item(s) with an empty cell"
            )
        self.logger.info(set_color(message, "blue"))

    def modality_table(self, field):
        """``(features [item_num, dim], missing [item_num])`` for one modality field."""
        if field not in self.modality_features:
            raise KeyError(
                f"no modality table for '{field}'; modalities of this dataset: {self.modalities}"
            )
        return self.modality_features[field], self.modality_missing[field]


class PrismDataset(ModalityFeaturesMixin, Dataset):
    """RecBole's :class:`~recbole.data.dataset.Dataset` with dense modality tables."""


class PrismSequentialDataset(ModalityFeaturesMixin, SequentialDataset):
    """RecBole's :class:`~recbole.data.dataset.SequentialDataset` with dense modality tables."""
