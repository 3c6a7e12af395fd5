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

RecBole's own SASRecF / FDSA route float_seq fields through ``FeatureSeqEmbLayer``, which
reduces a dense vector to one scalar (RecBole issues #1983, #2196); this path does not use it.
"""
import os
from collections import Counter

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.utils import FeatureSource, FeatureType, set_color

from prism_recbole.config import parse_list_option


class AtomicFileError(ValueError):
    """A malformed atomic file or a bad item vector; the message names file, line and field."""


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


class ModalityFeaturesMixin:
    """Adds validated dense modality tables to a RecBole dataset (see module docstring)."""

    def _get_preset(self):
        super()._get_preset()
        self.modalities = parse_list_option(self.config["modalities"])
        self.modality_features = {}  # field -> FloatTensor [item_num, dim]
        self.modality_missing = {}  # field -> BoolTensor [item_num]
        self.modality_dims = {}  # field -> int
        self._item_file = None
        self._item_rows = {}  # token -> line number in the .item file
        self._modality_present = {}  # field -> set of tokens that have a vector

    # ---- loading ------------------------------------------------------------------------
    def _load_feat(self, filepath, source):
        if source == FeatureSource.ITEM and self.modalities:
            check_column_counts(filepath, self.config["field_separator"], self.config["encoding"])
        try:
            df = super()._load_feat(filepath, source)
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
        if source == FeatureSource.ITEM and self.modalities:
            self._item_file = filepath
            if df is not None:
                self._check_modality_columns(df, filepath)
        return df

    def _check_modality_columns(self, df, filepath):
        iid = self.iid_field
        if iid not in df.columns:
            raise AtomicFileError(f"{filepath}: no '{iid}' column; cannot key item vectors")
        tokens = df[iid].values
        lines = np.arange(len(df)) + 2  # line 1 is the header
        duplicated = df[iid].duplicated(keep=False).values
        if duplicated.any():
            dup_token = tokens[np.flatnonzero(duplicated)[0]]
            dup_lines = lines[tokens == dup_token][:2]
            raise AtomicFileError(
                f"{filepath}, lines {dup_lines[0]} and {dup_lines[1]}: item '{dup_token}' has "
                "more than one row; each item must have exactly one row in the .item file"
            )
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
            nonempty = lengths > 0
            if not nonempty.any():
                raise AtomicFileError(
                    f"{filepath}: modality field '{field}' is empty for every item"
                )
            dim = Counter(lengths[nonempty].tolist()).most_common(1)[0][0]
            wrong = np.flatnonzero(nonempty & (lengths != dim))
            if wrong.size:
                i = wrong[0]
                raise AtomicFileError(
                    f"{filepath}, line {lines[i]}: item '{tokens[i]}' has a '{field}' vector "
                    f"of length {lengths[i]}, but the other '{field}' vectors have length {dim}"
                )
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
            self._del_col(self.item_feat, field)

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
