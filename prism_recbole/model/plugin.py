"""PRISM as a plug-in for RecBole sequential recommenders.

A PRISM model is a class declaration plus a YAML file::

    class PRISM_GRU4Rec(PRISMPlugin, GRU4Rec):
        backbone_name = "GRU4Rec"

for any RecBole backbone that embeds its input sequence with ``self.item_embedding(item_seq)``
inside ``forward``.  Nothing of the backbone is copied:

* ``forward`` marks the sequence tensor it receives (the first 2-D integer tensor argument;
  ``item_seq_len`` is the first 1-D integer tensor after it, if any);
* a forward hook on ``self.item_embedding`` recognises that exact tensor, runs
  :class:`~prism_recbole.model.prism_layer.PRISMLayer` on it and returns
  ``E[s_t] + Σ_m x^m_t + z`` instead of ``E[s_t]``.  Every other call of ``item_embedding``
  (the candidates scored by the loss and by ``full_sort_predict``) is left alone, so by default
  candidates are scored with ID embeddings, as in the authors' code.  Whatever the backbone
  does next (positions, LayerNorm, dropout, GRU, convolution ...) happens on the sum;
* ``calculate_loss`` adds the auxiliary loss to the backbone's own loss.

Backbones that cannot take it: models without an item-sequence embedding (general or
context-aware recommenders), models whose ``forward`` embeds something other than the plain
item sequence, and graph models whose input is a session graph (SR-GNN, GC-SAN; RecBole-GNN's
models): there the "sequence tensor" the hook waits for never reaches ``item_embedding``,
``calculate_loss`` then raises instead of silently training without PRISM.

``prism_gate_input: backbone_state`` (SASRec and GRU4Rec, whose ``forward`` ends with one
``gather_indexes``): the hook adds Σ_m x^m_t only, and ``gather_indexes`` adds z to the
backbone's output, with the gate reading that output (``PRISMLayer.fuse_state``).

After any forward pass ``model.prism_gate_weights`` holds the gate weights ``[B, K]`` of the
batch, in the order ``model.prism_expert_names``.  ``model.prism_active = False`` switches the
PRISM contribution off (the backbone then computes exactly what the plain backbone computes
from the same weights; used by the tests).  ``model.prism_output`` keeps the fused vector, the
gate weights and the expert outputs of the last call; what was added at each position
(``add_emb``) only with ``model.prism_keep_add_emb = True``.
"""
import copy
import functools
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from prism_recbole.config import parse_list_option
from prism_recbole.data.positions import train_positions_option
from prism_recbole.model.decoupled_attention import ATTENTION_MODES, decouple_attention
from prism_recbole.model.prism_layer import (EXPERT_KINDS, FEATURE_TRANSFORMS, FUSION_MODES,
                                             GATE_INPUTS, INTERVENTIONS, REPLACEMENTS,
                                             TRIPLET_DISTANCES, PRISMLayer)

ITEM_SIDES = ("id", "id+modal")
# backbones whose forward ends with exactly one gather_indexes(output, item_seq_len - 1)
GATE_ON_STATE_BACKBONES = ("SASRec", "GRU4Rec")
# backbones whose self.trm_encoder is a causal RecBole TransformerEncoder (prism_attention)
DECOUPLED_ATTENTION_BACKBONES = ("SASRec",)


def _float_option(config, key):
    value = config[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key} must be a number, got {value!r}") from None


def _noise_std_option(config):
    """prism_noise_std: a number, or "match" (noise on the scale of the modality it replaces)."""
    value = config["prism_noise_std"]
    if isinstance(value, str) and value.strip().lower() == "match":
        return "match"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"option prism_noise_std must be a number or 'match', got {value!r}"
        ) from None


def _int_option(config, key, default=None):
    value = config[key]
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != int(number) or number <= 0:
        raise ValueError(f"option {key} must be a positive integer, got {value!r}")
    return int(number)


def _bool_option(config, key, default=False):
    value = config[key]
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"option {key} must be true or false, got {value!r}")


def check_known_options(config, prefix, known, model_name):
    """Options starting with ``prefix`` that the model does not know are one error naming them."""
    unknown = sorted(k for k in config.final_config_dict if k.startswith(prefix) and k not in known)
    if unknown:
        raise ValueError(f"Unknown option(s) {', '.join(unknown)} for model {model_name}. "
                         f"Known {model_name} options: {', '.join(sorted(known))}.")


def _choice_option(config, key, choices, default):
    value = config[key]
    if value is None:
        return default
    if value not in choices:
        raise ValueError(f"option {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


class ModalItemEmbedding(nn.Embedding):
    """Item table whose rows are ``E_i + Σ_m x^m_i`` (``prism_item_side: id+modal``).

    Replaces the backbone's ``item_embedding``: every use of it (the input sequence and the
    candidates scored by the loss and by ``full_sort_predict``) then sees the projected modality
    vectors, which helps items with few interactions.  The ID table is the parameter
    ``id_weight``; ``weight`` is computed, once per call of the model while a cache is open.
    """

    def __init__(self, base: nn.Embedding, prism_layer: PRISMLayer):
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.id_weight = base.weight
        self._prism = [prism_layer]  # a list, so the layer is not registered twice
        self._cache = None
        self._caching = False

    @property
    def weight(self):
        if self._caching and self._cache is not None:
            return self._cache
        weight = self.id_weight + self._prism[0].all_item_vectors()
        if self._caching:
            self._cache = weight
        return weight

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)

    @contextmanager
    def cached(self):
        self._caching, self._cache = True, None
        try:
            yield
        finally:
            self._caching, self._cache = False, None


class PRISMPlugin:
    """Mixin placed before a RecBole ``SequentialRecommender`` backbone (see module docs)."""

    backbone_name = None  # the RecBole class name; its YAML defaults are loaded first
    prism_active = True
    # keep what PRISM added ([B, L, D]) in model.prism_output.add_emb after a call (inspection)
    prism_keep_add_emb = False
    # the backbone's embedding tables that embed the input sequence, one PRISM addition each
    # (STOSA: a mean and a covariance stream); the first one's gate weights are reported
    prism_streams = ("item_embedding",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        modalities = config["modalities"] or []
        tables = getattr(dataset, "modality_features", None)
        if not modalities or not tables:
            raise ValueError(
                f"{type(self).__name__} needs item modality vectors: set the option "
                "'modalities' to the float_seq fields of the .item file, "
                "e.g. modalities: [img_emb, txt_emb]"
            )
        first = getattr(self, self.prism_streams[0])
        hidden_size = first.embedding_dim
        self.prism_modalities = list(modalities)
        self.prism_item_side = _choice_option(config, "prism_item_side", ITEM_SIDES, "id")
        item_features = _bool_option(config, "prism_item_features", True)
        fusion = _choice_option(config, "prism_fusion", FUSION_MODES, "adaptive")
        if fusion == "none" and not item_features and self.prism_item_side == "id":
            raise ValueError(
                "prism_fusion: none with prism_item_features: false leaves no modality "
                "information at all; use the plain backbone instead"
            )
        self.prism = PRISMLayer(
            tables=[dataset.modality_features[f] for f in modalities],
            missing=[dataset.modality_missing[f] for f in modalities],
            hidden_size=hidden_size,
            modality_names=modalities,
            pooling=config["prism_pooling"],
            expert_hidden=_int_option(config, "prism_expert_hidden"),
            expert_dropout=_float_option(config, "prism_expert_dropout"),
            gate_hidden=_int_option(config, "prism_gate_hidden", 2 * hidden_size),
            gate_dropout=_float_option(config, "prism_gate_dropout"),
            temperature=_float_option(config, "prism_temperature"),
            noise_std=_noise_std_option(config),
            margin=_float_option(config, "prism_margin"),
            lambda_uni=_float_option(config, "prism_lambda_uni"),
            lambda_syn=_float_option(config, "prism_lambda_syn"),
            lambda_red=_float_option(config, "prism_lambda_red"),
            trainable_features=not _bool_option(config, "prism_freeze_features"),
            initializer_range=float(config["initializer_range"] or 0.02),
            n_rows=first.num_embeddings,
            fusion_level=_choice_option(config, "prism_fusion_level", ("sequence", "item"), "sequence"),
            # with id+modal the item table itself carries Σ_m x^m: do not add it twice
            item_features=item_features and self.prism_item_side == "id",
            fusion=fusion,
            experts=parse_list_option(config["prism_experts"]) or list(EXPERT_KINDS),
            aux_loss=_bool_option(config, "prism_aux_loss", True),
            # train_positions: all trains every position: z_t may use items up to t only
            causal=train_positions_option(config) == "all",
            replace=_choice_option(config, "prism_replace", REPLACEMENTS, "noise"),
            gate_input=_choice_option(config, "prism_gate_input", GATE_INPUTS, "id_summary"),
            triplet_distance=_choice_option(config, "prism_triplet_distance", TRIPLET_DISTANCES, "l2"),
            feature_transform=_choice_option(config, "prism_feature_transform", FEATURE_TRANSFORMS, "none"),
            gate_balance=_float_option(config, "prism_gate_balance"),
        )
        if self.prism.gate_input == "backbone_state" and self.backbone_name not in GATE_ON_STATE_BACKBONES:
            raise ValueError(
                f"prism_gate_input: backbone_state is available for "
                f"{', '.join('PRISM_' + b for b in GATE_ON_STATE_BACKBONES)} only, not {type(self).__name__}"
            )
        if self.prism_item_side == "id+modal":
            if len(self.prism_streams) > 1:
                raise ValueError(
                    f"prism_item_side: id+modal is not available for {type(self).__name__}, "
                    f"whose input has {len(self.prism_streams)} embedding streams"
                )
            self.item_embedding = ModalItemEmbedding(self.item_embedding, self.prism)
        # prism_attention: decoupled: PRISM's addition enters the attention scores only
        self.prism_attention = _choice_option(config, "prism_attention", ATTENTION_MODES, "input")
        self._prism_side = None
        if self.prism_attention != "input":
            if self.backbone_name not in DECOUPLED_ATTENTION_BACKBONES:
                raise ValueError(
                    f"prism_attention: {self.prism_attention} is available for "
                    f"{', '.join('PRISM_' + b for b in DECOUPLED_ATTENTION_BACKBONES)} only, "
                    f"not {type(self).__name__}"
                )
            self._prism_side = decouple_attention(
                self.trm_encoder, float(config["layer_norm_eps"] or 1e-12), self._init_weights)
        self.prism_id_dropout = _float_option(config, "prism_id_dropout")
        if not 0.0 <= self.prism_id_dropout < 1.0:
            raise ValueError(f"option prism_id_dropout must be in [0, 1), got {self.prism_id_dropout}")
        self.prism_expert_names = list(self.prism.expert_names)
        # more streams (STOSA's covariance): the same experts, gate and feature tables, their
        # own projections W_m, b_m; the auxiliary loss is averaged over the streams
        self.prism_extra_streams = nn.ModuleList()
        for _ in self.prism_streams[1:]:
            layer = copy.deepcopy(self.prism)
            layer.interaction_experts = self.prism.interaction_experts
            layer.adaptive_fusion = self.prism.adaptive_fusion
            layer.features.share_tables(self.prism.features)
            for proj in layer.features.projections:
                nn.init.normal_(proj.weight, mean=0.0, std=self.prism.initializer_range)
                nn.init.zeros_(proj.bias)
            self.prism_extra_streams.append(layer)
        # frozen feature tables are identical on every rank: DDP must not broadcast them
        prefixes = ["prism"] + [f"prism_extra_streams.{i}" for i in range(len(self.prism_extra_streams))]
        self._ddp_params_and_buffers_to_ignore = [
            f"{prefix}.features.{name}" for prefix in prefixes
            for name in self.prism.features.buffer_names() + ["present"]
        ]
        for stream, name in enumerate(self.prism_streams):
            getattr(self, name).register_forward_hook(functools.partial(self._prism_embedding_hook, stream))
        self._prism_stream_outputs = {}
        self._prism_sequence = None
        self._prism_sequence_len = None
        self._prism_batch = None
        self._prism_aux_loss = None
        self._prism_id_keep = None
        self.prism_gate_weights = None
        self.prism_output = None

    # ---- which positions -----------------------------------------------------------------
    def prism_pool_mask(self, item_seq, item_seq_len=None):
        """Positions whose items are pooled: real items, i.e. not padding (RecBole pads with id
        0 on the right) and, when the backbone's forward receives ``item_seq_len``, before it."""
        mask = item_seq > 0
        if item_seq_len is not None:
            positions = torch.arange(item_seq.size(1), device=item_seq.device)
            mask = mask & (positions.unsqueeze(0) < item_seq_len.unsqueeze(1))
        return mask

    def prism_add_mask(self, item_seq, item_seq_len=None):
        """Positions that receive the PRISM addition (default: the pooled positions)."""
        return self.prism_pool_mask(item_seq, item_seq_len)

    # ---- the hook ------------------------------------------------------------------------
    @staticmethod
    def prism_find_sequence(args, kwargs):
        """(item_seq, item_seq_len) among the backbone forward's arguments."""
        item_seq, item_seq_len, start = kwargs.get("item_seq"), kwargs.get("item_seq_len"), 0
        if item_seq is None:
            for i, arg in enumerate(args):
                if torch.is_tensor(arg) and arg.dim() == 2 and not arg.is_floating_point():
                    item_seq, start = arg, i + 1
                    break
        if item_seq_len is None:
            for arg in args[start:]:
                if torch.is_tensor(arg) and arg.dim() == 1 and not arg.is_floating_point():
                    item_seq_len = arg
                    break
        return item_seq, item_seq_len

    def forward(self, *args, **kwargs):
        item_seq, item_seq_len = self.prism_find_sequence(args, kwargs)
        if item_seq_len is None and self._prism_batch is not None and item_seq is self._prism_batch[0]:
            item_seq_len = self._prism_batch[1]  # e.g. Caser: forward(user, item_seq)
        self._prism_sequence, self._prism_sequence_len = item_seq, item_seq_len
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._prism_sequence = self._prism_sequence_len = None
            if self._prism_side is not None:
                self._prism_side.value = None

    def _prism_embedding_hook(self, stream, module, inputs, output):
        if not self.prism_active or self._prism_sequence is None or inputs[0] is not self._prism_sequence:
            return None  # switched off, or a candidate look-up rather than the input sequence
        item_seq, item_seq_len = inputs[0], self._prism_sequence_len
        layer = self.prism if stream == 0 else self.prism_extra_streams[stream - 1]
        if self.training and self.prism_id_dropout > 0:
            # DropoutNet-style: some positions keep their content vectors but lose their ID
            # embedding (one draw per position, shared by the streams of a call)
            if stream == 0 or self._prism_id_keep is None:
                self._prism_id_keep = (torch.rand(item_seq.shape, device=output.device)
                                       >= self.prism_id_dropout).unsqueeze(-1)
            output = output * self._prism_id_keep.to(output.dtype)
        out = layer(
            item_seq, output,
            self.prism_pool_mask(item_seq, item_seq_len),
            self.prism_add_mask(item_seq, item_seq_len),
        )
        self._prism_stream_outputs[stream] = out
        if len(self._prism_stream_outputs) == len(self.prism_streams):
            outputs = self._prism_stream_outputs.values()
            self._prism_aux_loss = sum(o.aux_loss for o in outputs) / len(self.prism_streams)
        if stream == 0:
            self.prism_gate_weights = out.gate_weights.detach()
            self.prism_output = out
        add_emb = out.add_emb
        if not self.prism_keep_add_emb:  # one [B, L, D] tensor less kept after the call
            out.add_emb = None
        if self._prism_side is not None:  # the layers' attention scores read it
            self._prism_side.value = add_emb
            if self.prism_attention == "decoupled":  # ... and the input does not
                return output
        if output.dtype == add_emb.dtype:  # in place: the embedding's backward does not need it
            return output.add_(add_emb)
        return output + add_emb

    def gather_indexes(self, output, gather_index):
        """The backbone's last step; with ``prism_gate_input: backbone_state`` z joins its
        result here, the gate reading it (every position in the all-positions training)."""
        out = super().gather_indexes(output, gather_index)
        prism_output = self.prism_output if self.prism_active else None
        if prism_output is None or prism_output.deferred is None:
            return out
        state, fused, weights = self.prism.fuse_state(prism_output.deferred, out)
        prism_output.deferred = None  # applied once
        prism_output.fused, prism_output.gate_weights = fused, weights
        self.prism_gate_weights = weights.detach()
        return state

    # ---- diagnostics ---------------------------------------------------------------------
    @contextmanager
    def prism_intervention(self, name):
        """Evaluate with one part of PRISM changed (:data:`~prism_recbole.model.prism_layer.INTERVENTIONS`):
        ``no_fusion`` (z = 0), ``swap_fusion`` (another user's z), ``uniform_gate`` (w_k = 1/K).
        How much the ranking drops tells how much the model uses that part (the group report's
        ``--interventions``).  ``None`` changes nothing."""
        if name is not None and name not in INTERVENTIONS:
            raise ValueError(f"unknown PRISM intervention {name!r}; known: {', '.join(INTERVENTIONS)}")
        if name is not None and self.prism.fusion == "none":
            raise ValueError(f"the {name} intervention needs experts and a gate; "
                             f"{type(self).__name__} has prism_fusion: none")
        layers = [self.prism, *self.prism_extra_streams]
        for layer in layers:
            layer.intervention = name
        try:
            yield
        finally:
            for layer in layers:
                layer.intervention = None

    # ---- RecBole's entry points ----------------------------------------------------------
    @contextmanager
    def _prism_call(self, interaction):
        """Around one call of the model: remember the batch's sequence and lengths (for
        backbones whose forward does not receive the lengths), cache the id+modal table, and
        check afterwards that PRISM was applied (training and prediction alike: a backbone
        that rebuilt its sequence tensor would otherwise be evaluated without PRISM)."""
        self._prism_aux_loss = None
        self.prism_output = None
        self._prism_stream_outputs = {}
        self._prism_id_keep = None
        try:
            self._prism_batch = (interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        except KeyError:
            self._prism_batch = None
        try:
            if isinstance(getattr(self, "item_embedding", None), ModalItemEmbedding):
                with self.item_embedding.cached():
                    yield
            else:
                yield
        finally:
            self._prism_batch = None
        if self.prism_active and len(self._prism_stream_outputs) < len(self.prism_streams):
            missed = [n for i, n in enumerate(self.prism_streams) if i not in self._prism_stream_outputs]
            raise RuntimeError(
                f"{type(self).__name__}: the backbone's forward did not embed the input "
                f"sequence with self.{missed[0]}(item_seq), so PRISM was not applied"
            )

    def calculate_loss(self, interaction):
        with self._prism_call(interaction):
            loss = super().calculate_loss(interaction)
        if not self.prism_active:
            return loss
        return loss + self._prism_aux_loss

    def predict(self, interaction):
        with self._prism_call(interaction):
            return super().predict(interaction)

    def full_sort_predict(self, interaction):
        with self._prism_call(interaction):
            return super().full_sort_predict(interaction)
