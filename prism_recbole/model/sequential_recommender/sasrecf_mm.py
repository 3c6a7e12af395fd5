r"""SASRecF_MM: RecBole's SASRecF fed with the dense modality vectors that PRISM uses.

RecBole's SASRecF / FDSA embed item features with ``FeatureSeqEmbLayer``.  On a ``float_seq``
field that layer multiplies every value ``x_i`` by ``Embedding(2, H)[1]`` and pools, so a
512-d CLIP vector becomes one scalar times one vector, and SASRecF's ``concat_layer`` is
built for ``dataset.num(field) = 2`` embeddings per field while the layer returns one, a
shape error (RecBole issues #1554, #1983, #2196; ``docs/recbole-on-todays-stack.md`` 3.3).

This class is RecBole's :class:`~recbole.model.sequential_recommender.sasrecf.SASRecF`
unchanged except for its feature part:

* ``feature_embed_layer`` is a :class:`DenseFeatureSeqEmbLayer`: item ids ``[B, L]`` -> the
  rows of the dense tables ``dataset.modality_features[field]`` (frozen buffers, not saved:
  they are rebuilt from the data, as PRISM and MMSR do) -> one ``Linear(dim_m, H)`` per
  modality -> ``[B, L, M, H]``, returned as RecBole's layer returns it,
  ``({"item": None}, {"item": tensor})``; padding and items missing a modality give zeros;
* ``concat_layer`` is rebuilt for ``1 + M`` embeddings per position.

``forward``, the Transformer, the losses and the scoring (ID embeddings of the candidates)
are SASRecF's own.  ``selected_features`` lists the modality fields to use (default: all of
``modalities``); ``pooling_mode`` keeps RecBole's meaning for a ``float_seq`` field, with one
embedding per vector position instead of one per field: ``sum`` is
``Σ_i x_i W_i = W x`` (a Linear), ``mean`` divides by the vector length; ``max`` is refused
(it needs a ``[B, L, dim, H]`` tensor).
"""
import torch
import torch.nn as nn
from recbole.model.sequential_recommender.sasrecf import SASRecF

from prism_recbole.config import parse_list_option

POOLING_MODES = ("sum", "mean")


class _ConfigView:
    """Read-only view of a RecBole Config with a few keys replaced (for the parent's
    ``__init__``, which must not build RecBole's feature layer on our fields)."""

    def __init__(self, config, **overrides):
        self._config = config
        self._overrides = overrides

    def __getitem__(self, key):
        if key in self._overrides:
            return self._overrides[key]
        return self._config[key]

    def __contains__(self, key):
        return key in self._overrides or key in self._config

    def __getattr__(self, name):
        return getattr(self._config, name)


def without_selected_features(config):
    """The config the RecBole parent is built with: no features for RecBole's own layer."""
    return _ConfigView(config, selected_features=[])


def dense_feature_options(model_name, config, dataset):
    """``(fields, pooling_mode)`` for a dense-feature adapter; clear errors otherwise."""
    modalities = parse_list_option(config["modalities"])
    tables = getattr(dataset, "modality_features", None) or {}
    if not modalities or any(f not in tables for f in modalities):
        raise ValueError(
            f"{model_name} needs item modality vectors: set the option 'modalities' to the "
            "float_seq fields of the .item file, e.g. modalities: [img_emb, txt_emb]"
        )
    fields = parse_list_option(config["selected_features"]) or list(modalities)
    others = [f for f in fields if f not in modalities]
    if others:
        base = model_name[: -len("_MM")] if model_name.endswith("_MM") else model_name
        raise ValueError(
            f"{model_name} reads only modality fields; selected_features names "
            f"{', '.join(others)}, not in modalities [{', '.join(modalities)}] (leave "
            f"selected_features unset to use every modality; for token features use "
            f"RecBole's {base})"
        )
    if len(set(fields)) != len(fields):
        raise ValueError(f"selected_features names a field twice: {fields}")
    pooling = config["pooling_mode"] or "sum"
    if pooling not in POOLING_MODES:
        raise ValueError(
            f"option pooling_mode must be one of {', '.join(POOLING_MODES)} for {model_name}, "
            f"got {pooling!r} (max over the positions of a dense vector is not supported)"
        )
    return fields, pooling


class DenseFeatureSeqEmbLayer(nn.Module):
    """Drop-in for RecBole's ``FeatureSeqEmbLayer`` on dense item vectors.

    ``forward(None, item_seq [B, L])`` returns ``({"item": None}, {"item": [B, L, M, H]})``:
    for modality ``m``, ``Linear_m(F_m[item] * scale)`` (``scale`` is 1 for ``sum``,
    ``1 / dim_m`` for ``mean``), zero for the padding item and for items missing ``m``.
    The tables are buffers that ``state_dict`` does not hold (the model is rebuilt from the
    dataset, which supplies them again).
    """

    def __init__(self, tables, missing, hidden_size, field_names, pooling_mode="sum", n_rows=None):
        super().__init__()
        self.field_names = list(field_names)
        self.pooling_mode = pooling_mode
        n_rows = n_rows or tables[0].shape[0]
        present = torch.zeros(n_rows, len(tables), dtype=torch.bool)
        self.scales = []
        for m, (table, miss) in enumerate(zip(tables, missing)):
            full = torch.zeros(n_rows, table.shape[1], dtype=torch.float32)
            full[: table.shape[0]] = table.float()
            present[: miss.shape[0], m] = ~miss.bool()
            self.register_buffer(f"table_{m}", full, persistent=False)
            self.scales.append(1.0 if pooling_mode == "sum" else 1.0 / table.shape[1])
        present[0] = False  # the padding item
        self.register_buffer("present", present, persistent=False)  # [n_rows, M]
        self.projections = nn.ModuleList(nn.Linear(t.shape[1], hidden_size) for t in tables)

    def table(self, m):
        return getattr(self, f"table_{m}")

    def buffer_names(self):
        """Buffers identical on every rank, which DistributedDataParallel must not broadcast."""
        return [f"table_{m}" for m in range(len(self.projections))] + ["present"]

    def embed(self, item_seq):
        """item ids (any shape ``S``) -> ``[*S, M, H]``."""
        out = []
        for m, proj in enumerate(self.projections):
            x = self.table(m)[item_seq]
            if self.scales[m] != 1.0:
                x = x * self.scales[m]
            out.append(proj(x))
        out = torch.stack(out, dim=-2)
        return out * self.present[item_seq].unsqueeze(-1).to(out.dtype)

    def forward(self, user_idx, item_idx):
        return {"item": None}, {"item": self.embed(item_idx)}


def install_dense_features(model, config, dataset, fields, pooling):
    """Replace ``model.feature_embed_layer`` (built by the RecBole parent) with the dense one."""
    model.selected_features = list(fields)
    model.pooling_mode = pooling
    model.modalities = parse_list_option(config["modalities"])
    model.feature_embed_layer = DenseFeatureSeqEmbLayer(
        tables=[dataset.modality_features[f] for f in fields],
        missing=[dataset.modality_missing[f] for f in fields],
        hidden_size=model.hidden_size,
        field_names=fields,
        pooling_mode=pooling,
        n_rows=model.n_items,
    )
    model.feature_embed_layer.projections.apply(model._init_weights)
    # the layer's weights are in state_dict: nothing to pickle next to it (RecBole's parent
    # lists its feature layer, and with it the whole dataset, as an "other parameter")
    model.other_parameter_name = []
    model._ddp_params_and_buffers_to_ignore = [
        f"feature_embed_layer.{name}" for name in model.feature_embed_layer.buffer_names()
    ]


class SASRecF_MM(SASRecF):
    r"""SASRecF on the dense modality vectors (see the module docstring)."""

    recbole_defaults = "SASRecF"  # prism_recbole.config loads RecBole's SASRecF.yaml first

    def __init__(self, config, dataset):
        fields, pooling = dense_feature_options(type(self).__name__, config, dataset)
        super().__init__(without_selected_features(config), dataset)
        install_dense_features(self, config, dataset, fields, pooling)
        self.num_feature_field = len(fields)
        self.concat_layer = nn.Linear(self.hidden_size * (1 + self.num_feature_field), self.hidden_size)
        self.concat_layer.apply(self._init_weights)
