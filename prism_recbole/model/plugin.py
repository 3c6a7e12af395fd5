"""PRISM as a plug-in for RecBole sequential recommenders.

A PRISM model is ``class PRISM_X(PRISMPlugin, X)`` for a RecBole backbone ``X`` that embeds its
input sequence with ``self.item_embedding(item_seq)`` inside ``forward``.  Nothing of the
backbone is copied:

* ``forward`` marks the sequence tensor it was given;
* a forward hook on ``self.item_embedding`` recognises that exact tensor, runs
  :class:`~prism_recbole.model.prism_layer.PRISMLayer` on it and returns
  ``E[s_t] + Σ_m x^m_t + z`` instead of ``E[s_t]``; every other call of ``item_embedding``
  (the candidates scored by the loss and by ``full_sort_predict``) is left alone, so
  candidates are scored with ID embeddings, as in the authors' code;
* ``calculate_loss`` adds the auxiliary loss to the backbone's own loss.

After any forward pass ``model.prism_gate_weights`` holds the gate weights ``[B, K]`` of the
batch, in the order ``model.prism_expert_names``.
"""
import torch

from prism_recbole.model.prism_layer import PRISMLayer

_FLOAT_OPTIONS = [
    "prism_expert_dropout", "prism_gate_dropout", "prism_temperature", "prism_noise_std",
    "prism_margin", "prism_lambda_uni", "prism_lambda_syn", "prism_lambda_red",
]


def _float_option(config, key):
    value = config[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key} must be a number, got {value!r}") from None


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


def _bool_option(config, key):
    value = config[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"option {key} must be true or false, got {value!r}")


class PRISMPlugin:
    """Mixin placed before a RecBole ``SequentialRecommender`` backbone (see module docs)."""

    backbone_name = None  # the RecBole class name; its YAML defaults are loaded first

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
        hidden_size = self.item_embedding.embedding_dim
        self.prism_modalities = list(modalities)
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
            noise_std=_float_option(config, "prism_noise_std"),
            margin=_float_option(config, "prism_margin"),
            lambda_uni=_float_option(config, "prism_lambda_uni"),
            lambda_syn=_float_option(config, "prism_lambda_syn"),
            lambda_red=_float_option(config, "prism_lambda_red"),
            trainable_features=not _bool_option(config, "prism_freeze_features"),
            initializer_range=float(config["initializer_range"] or 0.02),
            n_rows=self.item_embedding.num_embeddings,
        )
        self.prism_expert_names = list(self.prism.expert_names)
        # frozen feature tables are identical on every rank: DDP must not broadcast them
        self._ddp_params_and_buffers_to_ignore = [
            f"prism.features.{name}" for name in self.prism.features.buffer_names()
        ] + ["prism.features.present"]
        self.item_embedding.register_forward_hook(self._prism_embedding_hook)
        self._prism_sequence = None
        self._prism_sequence_len = None
        self._prism_aux_loss = None
        self.prism_gate_weights = None
        self.prism_output = None

    def prism_real_mask(self, item_seq, item_seq_len=None):
        """Positions that hold a real item: not padding (RecBole pads with id 0 on the right)
        and, when the backbone's forward receives ``item_seq_len``, before that length."""
        mask = item_seq > 0
        if item_seq_len is not None:
            positions = torch.arange(item_seq.size(1), device=item_seq.device)
            mask = mask & (positions.unsqueeze(0) < item_seq_len.unsqueeze(1))
        return mask

    def forward(self, item_seq, *args, **kwargs):
        item_seq_len = kwargs.get("item_seq_len")
        if item_seq_len is None and args and torch.is_tensor(args[0]) and args[0].dim() == 1:
            item_seq_len = args[0]
        self._prism_sequence = item_seq
        self._prism_sequence_len = item_seq_len
        try:
            return super().forward(item_seq, *args, **kwargs)
        finally:
            self._prism_sequence = None
            self._prism_sequence_len = None

    def _prism_embedding_hook(self, module, inputs, output):
        if self._prism_sequence is None or inputs[0] is not self._prism_sequence:
            return None  # a candidate look-up, not the input sequence
        item_seq = inputs[0]
        out = self.prism(item_seq, output, self.prism_real_mask(item_seq, self._prism_sequence_len))
        self._prism_aux_loss = out.aux_loss
        self.prism_gate_weights = out.gate_weights.detach()
        self.prism_output = out
        return output + out.add_emb

    def calculate_loss(self, interaction):
        self._prism_aux_loss = None
        loss = super().calculate_loss(interaction)
        if self._prism_aux_loss is None:
            raise RuntimeError(
                f"{type(self).__name__}: the backbone's forward did not embed the input "
                "sequence with self.item_embedding(item_seq), so PRISM was not applied"
            )
        return loss + self._prism_aux_loss
