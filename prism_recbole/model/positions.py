r"""``train_positions: all``: a causal sequential model scores every position of its input.

One mixin for every model that can (RecBole's SASRec, GRU4Rec, SASRecF, FDSA, and the models
of this package built on them); :func:`with_all_positions` places it just before the RecBole
backbone in the class's MRO, so that a plug-in such as PRISM still wraps the whole call::

    PRISM_SASRec  ->  PRISM_SASRec(all) = [PRISMPlugin, AllPositionsMixin, SASRec, ...]
    SASRec        ->  SASRec(all)       = [AllPositionsMixin, SASRec, ...]

These backbones end their ``forward`` with ``self.gather_indexes(output, item_seq_len - 1)``.
In training the mixin makes ``gather_indexes`` return the whole output ``h`` [B, L, D]: position
t of a causal model has seen items 1..t only, and is trained to predict the item at t + 1
(``item_id_list[t + 1]``, and the row's ``item_id`` after the last real item; the dataset keeps
one window per M targets, see :mod:`prism_recbole.data.positions`).  Evaluation is unchanged
(the last position, full ranking).  Losses over the T real positions of the batch, each a mean
over those positions (s_t = h_t·v_y, v = the item table the backbone scores with):

* ``ce``: full softmax over the catalogue (the padding item excluded), computed in chunks of
  ``position_chunk_size`` positions with checkpointing, so that no ``[T, n_items]`` tensor is
  held at once;
* ``sampled_softmax``: softmax over the positive and ``position_negatives`` (N) negatives,
  drawn uniformly on the device; ``position_negative_sharing: position`` draws N for every
  position (RecTools' and eSASRec's ``randint(1, n, (B, L, N))``; the N negatives' vectors
  are gathered ``position_chunk_size`` positions at a time with checkpointing, so at most
  chunk x N x D floats are alive), ``batch`` one set shared by the batch's positions
  ([T, N] logits from one [N, D] gather); a negative equal to the position's target is
  masked out.  ``position_sampler: in_batch``
  uses the batch's distinct targets as the candidates instead, with the log-q correction
  ``s - log q(i)`` (q = the item's share of the training targets);
* ``bce``: -log σ(s⁺) - log(1 - σ(s⁻)) with one uniform negative per position (the original
  SASRec's and the PRISM authors' loss; a negative equal to the target is dropped);
* ``gbce``: gSASRec's generalised BCE with N negatives (drawn as for ``sampled_softmax``),
  -(β log σ(s⁺) + Σ log(1 - σ(s⁻))) / (N + 1), β = α(t(1 - 1/α) + 1/α), α = N / (|I| - 1),
  t = ``gbce_t`` (t = 0: BCE; t = 1: fully calibrated).

``position_loss: ~`` follows RecBole's ``loss_type``: CE -> ``ce``, BPR -> ``bce``.

RecBole's BERT4Rec is not causal, and needs no mixin: with ``train_positions: all`` it keeps its
own masked-item loss (``mask_ratio``, ``ft_ratio``, ``loss_type``) and the dataset gives it one
window per M training items, each window ending with its row's target (the original BERT4Rec's
training on whole sequences, instead of RecBole's one row per prefix; see
:mod:`prism_recbole.data.positions`).  The ``position_*`` options do not apply to it.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from prism_recbole.data.positions import position_stride_option, train_positions_option

# RecBole backbones whose forward is causal and ends with gather_indexes(output, len - 1)
ALL_POSITIONS_BACKBONES = ("SASRec", "GRU4Rec", "SASRecF", "FDSA")
# RecBole models trained on masked items: train_positions: all gives them whole windows
MASKED_ITEM_BACKBONES = ("BERT4Rec",)
POSITION_LOSSES = ("ce", "sampled_softmax", "bce", "gbce")
POSITION_SAMPLERS = ("uniform", "in_batch")
NEGATIVE_SHARING = ("position", "batch")


def _ce_chunk(h, weight, y):
    return F.cross_entropy(h @ weight.t(), y, reduction="sum")


def checkpointed_chunk_mean(chunk_sum, h, weight, per_row, chunk_size, *fixed):
    """(1/T) Σ over chunks of ``chunk_sum(*fixed, h_c, weight, *per_row_c)`` (a chunk's summed
    loss), ``chunk_size`` rows of h [T, D] and of each ``per_row`` tensor at a time; with
    gradients each chunk is recomputed in the backward pass (checkpointing), so only one
    chunk's intermediates (logits, gathered vectors) are alive at any time."""
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (*fixed, h[rows], weight, *(t[rows] for t in per_row))
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            total = total + checkpoint(chunk_sum, *args, use_reentrant=False)
        else:
            total = total + chunk_sum(*args)
    return total / max(h.shape[0], 1)


def chunked_cross_entropy(h, weight, y, chunk_size):
    """Σ_t CE(h_t W^T, y_t) / T, ``chunk_size`` rows at a time, checkpointed: at most one
    chunk's logits [chunk, n] are alive at any time."""
    return checkpointed_chunk_mean(_ce_chunk, h, weight, (y,), chunk_size)


def negative_logits(h, neg_emb):
    """s(h_t, negatives): neg_emb [N, D] shared by all positions, or [T, N, D] per position."""
    if neg_emb.dim() == 2:
        return h @ neg_emb.t()  # [T, N]
    return torch.bmm(neg_emb, h.unsqueeze(-1)).squeeze(-1)  # [T, N]


def sampled_softmax_loss(h, pos_emb, neg_emb, hit, log_q_pos=None, log_q_neg=None):
    """Softmax over [positive, negatives]: h [T, D], pos_emb [T, D], neg_emb [N, D] shared or
    [T, N, D] per position, hit [T, N] bool (a negative that is the target, masked out);
    optional log-q corrections."""
    pos = (h * pos_emb).sum(-1, keepdim=True)  # [T, 1]
    neg = negative_logits(h, neg_emb)  # [T, N]
    if log_q_pos is not None:
        pos, neg = pos - log_q_pos.unsqueeze(-1), neg - log_q_neg.unsqueeze(0)
    neg = neg.masked_fill(hit, torch.finfo(neg.dtype).min)
    logits = torch.cat([pos, neg], dim=-1).float()
    return (torch.logsumexp(logits, dim=-1) - logits[:, 0]).mean()


def bce_loss(pos_logits, neg_logits, keep):
    """Mean over positions of -log σ(s⁺) - log(1 - σ(s⁻)); ``keep`` [T] drops a negative
    that is the target."""
    pos_logits, neg_logits = pos_logits.float(), neg_logits.float()
    return (-F.logsigmoid(pos_logits) - F.logsigmoid(-neg_logits) * keep.float()).mean()


def gbce_beta(n_negatives, n_real_items, t):
    """gSASRec's β = α(t(1 - 1/α) + 1/α), α = N / (|I| - 1)."""
    alpha = n_negatives / (n_real_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(pos_logits, neg_logits, hit, beta):
    """-(β log σ(s⁺) + Σ_i log(1 - σ(s_i))) / (N + 1), mean over positions; pos [T], neg
    [T, N], hit [T, N] (a negative that is the target contributes nothing)."""
    pos_logits, neg_logits = pos_logits.float(), neg_logits.float()
    neg_term = (F.logsigmoid(-neg_logits) * (~hit).float()).sum(-1)
    per_position = -(beta * F.logsigmoid(pos_logits) + neg_term) / (neg_logits.shape[-1] + 1)
    return per_position.mean()


def _per_position_chunk(loss_name, beta, h, weight, y, neg):
    """Sum over the chunk's positions of the sampled loss with per-position negatives."""
    hit = neg == y.unsqueeze(1)
    if loss_name == "sampled_softmax":
        return sampled_softmax_loss(h, weight[y], weight[neg], hit) * h.shape[0]
    pos_logits = (h * weight[y]).sum(-1)
    return gbce_loss(pos_logits, negative_logits(h, weight[neg]), hit, beta) * h.shape[0]


def per_position_sampled_loss(loss_name, h, weight, y, neg, chunk_size, beta=None):
    """Mean over positions of ``sampled_softmax`` or ``gbce`` with negatives ``neg`` [T, N]
    (one set per position), ``chunk_size`` positions at a time; with gradients each chunk's
    [chunk, N, D] gather is recomputed in the backward pass instead of being kept."""
    return checkpointed_chunk_mean(_per_position_chunk, h, weight, (y, neg), chunk_size,
                                   loss_name, beta)


def next_item_targets(item_seq, item_seq_len, last_target):
    """[B, L] targets: position t -> item_seq[t + 1]; the last real position -> the row's
    target; 0 (no target) at padding."""
    targets = torch.zeros_like(item_seq)
    targets[:, :-1] = item_seq[:, 1:]
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)
    targets = targets.masked_fill(positions.unsqueeze(0) >= item_seq_len.unsqueeze(1), 0)
    return targets.scatter(1, (item_seq_len - 1).clamp(min=0).unsqueeze(1), last_target.unsqueeze(1))


def scored_targets(item_seq, item_seq_len, last_target, stride):
    """:func:`next_item_targets` with only the last ``stride`` real positions of each row
    scored (0 elsewhere): with ``position_stride`` S < M the earlier positions of a window
    were scored by the window before it (see :mod:`prism_recbole.data.positions`)."""
    targets = next_item_targets(item_seq, item_seq_len, last_target)
    if stride >= item_seq.shape[1]:
        return targets
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)
    return targets.masked_fill(positions.unsqueeze(0) < (item_seq_len - stride).unsqueeze(1), 0)


def _option(config, key, default=None):
    value = config[key] if key in config else None
    return default if value is None else value


class AllPositionsMixin:
    """Scores every position in training when ``train_positions: all`` (see module docs)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_positions = train_positions_option(config)
        self.position_stride = position_stride_option(config)
        loss = _option(config, "position_loss")
        if loss is None:
            loss = "bce" if str(config["loss_type"]).upper() == "BPR" else "ce"
        loss = str(loss).lower()
        if loss not in POSITION_LOSSES:
            raise ValueError(
                f"option position_loss must be one of {', '.join(POSITION_LOSSES)}, got {loss!r}"
            )
        sampler = str(_option(config, "position_sampler", "uniform")).lower()
        if sampler not in POSITION_SAMPLERS:
            raise ValueError(
                f"option position_sampler must be one of {', '.join(POSITION_SAMPLERS)}, "
                f"got {sampler!r}"
            )
        if sampler == "in_batch" and loss != "sampled_softmax":
            raise ValueError("option position_sampler: in_batch needs position_loss: sampled_softmax")
        self.position_loss = loss
        self.position_sampler = sampler
        sharing = str(_option(config, "position_negative_sharing", "position")).lower()
        if sharing not in NEGATIVE_SHARING:
            raise ValueError(
                f"option position_negative_sharing must be one of {', '.join(NEGATIVE_SHARING)}, "
                f"got {sharing!r}"
            )
        self.position_negative_sharing = sharing
        self.position_negatives = self._positive_int(config, "position_negatives", 256)
        self.position_chunk_size = self._positive_int(config, "position_chunk_size", 4096)
        self.gbce_t = float(_option(config, "gbce_t", 0.75))
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ValueError(f"option gbce_t must be in [0, 1], got {self.gbce_t}")
        self._all_positions = False
        if sampler == "in_batch":
            self.register_buffer("position_log_q", self._target_log_frequency(dataset), persistent=False)

    @staticmethod
    def _positive_int(config, key, default):
        value = _option(config, key, default)
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number <= 0 or str(number) != str(value).strip():
            raise ValueError(f"option {key} must be a positive integer, got {value!r}")
        return number

    def _target_log_frequency(self, dataset):
        """log q(i): item i's share of the training targets (every position of the windows)."""
        inter = dataset.inter_feat
        seq, seq_len, last = inter[self.ITEM_SEQ], inter[self.ITEM_SEQ_LEN], inter[self.ITEM_ID]
        targets = scored_targets(seq, seq_len, last, self.position_stride)
        counts = torch.bincount(targets[targets > 0], minlength=self.n_items).float()
        return torch.log((counts + 1.0) / (counts.sum() + self.n_items))  # add-one: no log 0

    # ---- RecBole's hooks -----------------------------------------------------------------
    def gather_indexes(self, output, gather_index):
        if self._all_positions:
            return output
        return super().gather_indexes(output, gather_index)

    def position_item_weight(self):
        """The item table candidates are scored with (the backbone's, as its own loss does)."""
        return self.item_embedding.weight

    def calculate_loss(self, interaction):
        if self.train_positions != "all":
            return super().calculate_loss(interaction)
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        self._all_positions = True
        try:
            output = self.forward(item_seq, item_seq_len)
        finally:
            self._all_positions = False
        if output.dim() != 3 or output.shape[:2] != item_seq.shape:
            raise RuntimeError(
                f"{type(self).__name__}: train_positions: all expects the backbone's forward to "
                f"end with gather_indexes(output, item_seq_len - 1); got output {tuple(output.shape)}"
            )
        targets = scored_targets(item_seq, item_seq_len, interaction[self.POS_ITEM_ID],
                                 self.position_stride)
        real = targets > 0
        return self.positions_loss(output[real], targets[real])

    def positions_loss(self, h, y):
        """The loss of ``position_loss`` for hidden states h [T, D] and targets y [T]."""
        weight = self.position_item_weight()
        n = weight.shape[0]
        if self.position_loss == "ce":  # the padding item is no class
            return chunked_cross_entropy(h, weight[1:], y - 1, self.position_chunk_size)
        if self.position_loss == "bce":
            neg = torch.randint(1, n, y.shape, device=y.device)
            pos_logits = (h * weight[y]).sum(-1)
            neg_logits = (h * weight[neg]).sum(-1)
            return bce_loss(pos_logits, neg_logits, neg != y)
        if self.position_sampler == "in_batch":
            candidates, index = torch.unique(y, return_inverse=True)
            logits = (h @ weight[candidates].t()).float() - self.position_log_q[candidates]
            return F.cross_entropy(logits, index)
        beta = gbce_beta(self.position_negatives, n - 1, self.gbce_t)
        if self.position_negative_sharing == "position":
            neg = torch.randint(1, n, (y.shape[0], self.position_negatives), device=y.device)
            return per_position_sampled_loss(self.position_loss, h, weight, y, neg,
                                             self.position_chunk_size, beta)
        neg = torch.randint(1, n, (self.position_negatives,), device=y.device)
        hit = neg.unsqueeze(0) == y.unsqueeze(1)  # [T, N]
        if self.position_loss == "sampled_softmax":
            return sampled_softmax_loss(h, weight[y], weight[neg], hit)
        pos_logits = (h * weight[y]).sum(-1)
        return gbce_loss(pos_logits, h @ weight[neg].t(), hit, beta)


def recbole_backbone(model_class):
    """The first class of RecBole itself in ``model_class``'s MRO (the backbone)."""
    for cls in model_class.__mro__:
        if cls.__module__.startswith("recbole."):
            return cls
    return None


def is_masked_item_model(model_class):
    """RecBole's own masked-item model (BERT4Rec itself, not a class built on it)."""
    return recbole_backbone(model_class) is model_class and model_class.__name__ in MASKED_ITEM_BACKBONES


def with_all_positions(model_class):
    """``model_class`` with :class:`AllPositionsMixin` just before its RecBole backbone, or a
    clear error when the model cannot score every position."""
    if issubclass(model_class, AllPositionsMixin):
        return model_class
    if getattr(model_class, "handles_train_positions", False):
        return model_class  # scores every position with its own loss (e.g. STOSA)
    if is_masked_item_model(model_class):
        return model_class  # its own masked-item loss, on whole windows (see module docs)
    backbone = recbole_backbone(model_class)
    if backbone is None or backbone.__name__ not in ALL_POSITIONS_BACKBONES:
        raise ValueError(
            f"train_positions: all needs a causal model whose forward scores every position "
            f"({', '.join(ALL_POSITIONS_BACKBONES)} and the models built on them, e.g. "
            f"PRISM_SASRec, PRISM_GRU4Rec, SASRecF_MM) or RecBole's own "
            f"{', '.join(MASKED_ITEM_BACKBONES)}; {model_class.__name__} "
            f"{'is built on ' + backbone.__name__ if backbone else 'has no RecBole backbone'}, "
            "which does not. Use train_positions: last for this model."
        )
    name = model_class.__name__
    if model_class is backbone:
        bases = (AllPositionsMixin, model_class)
    else:
        bases = (model_class, AllPositionsMixin, backbone)
    key = f"_AllPositions_{model_class.__module__.replace('.', '_')}_{name}"
    if key not in globals():  # module-level, so that the class pickles by name
        globals()[key] = type(name, bases, {"__module__": __name__, "__qualname__": key})
    return globals()[key]


def model_class_for(config, model_class):
    """The class to build for ``config``: ``model_class``, or its every-position version."""
    if train_positions_option(config) == "all":
        return with_all_positions(model_class)
    return model_class
