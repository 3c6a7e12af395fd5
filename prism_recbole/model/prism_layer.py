"""The PRISM module: Interaction Expert Layer + Adaptive Fusion Layer, in one place.

PRISM ("Personalized Recommendation via Information Synergy Module", arXiv 2601.10944).
Notation (per batch): B sequences of length L, M modalities, hidden size D, K = M + 2 experts.

    e_t        = E[s_t]                                    ID embedding of the item at position t
    x^m_t      = W_m F_m[s_t] + b_m                        projected modality m of that item   (D)
    r_t        = 1 if position t holds a real item, else 0 (RecBole pads on the right)
    x̄^m        = Σ_t r_t p^m_t x^m_t / Σ_t r_t p^m_t        masked mean (p^m_t = item has modality m)
    ē          = Σ_t r_t e_t / Σ_t r_t                     masked mean of the ID embeddings
    x          = [x̄^1 ; ... ; x̄^M]                         (M·D)

Interaction Expert Layer: experts f_k: M·D -> D (Linear, GELU, Dropout, Linear), one per kind
    k = unique_1 .. unique_M, synergy, redundancy.
    h_k        = f_k(x)                                    clean pass
    h_k^{¬m}   = f_k(x with x̄^m replaced by ε ~ N(0, σ² I))  (training only)

Auxiliary losses (training only), as in the authors' code (I2MoE's losses):
    L_uni_m    = mean_{j≠m} TripletMargin(anchor h, positive h^{¬j}, negative h^{¬m}; margin)
                 (L2 distance; ``prism_triplet_distance: cosine`` normalises h first, an extension)
                 (the unique-m expert must change when m is hidden, and not when another is)
    L_syn      = mean_m mean_b cos(h_syn, h_syn^{¬m})        (push away: needs every modality)
    L_red      = mean_m mean_b (1 - cos(h_red, h_red^{¬m}))  (pull together: any one suffices)
    L_aux      = λ_uni Σ_m L_uni_m + λ_syn L_syn + λ_red L_red

Adaptive Fusion Layer: a gate over the experts, personalised by the user's ID summary ē:
    w          = softmax( MLP([h_1 ; ... ; h_K ; ē]) / τ )  (K weights per user, sum 1)
    z          = Σ_k w_k h_k                               fused vector (D)
    L_bal      = K Σ_k (mean_b w_bk)² - 1                  (extension, ``prism_gate_balance``:
                 Shazeer et al.'s importance loss, the squared coefficient of variation of
                 the experts' mean weights over the batch; 0 when the experts are used
                 equally on average, K - 1 when one takes all; added as λ_bal L_bal; off, 0,
                 in the authors' design)

What the backbone receives: at every real position t, e_t + Σ_m x^m_t + z (z broadcast over the
positions, as the authors' code does); its loss becomes L_rec + L_aux.

Deviations from the authors' code (github.com/YutongLi2024/PRISM), each with an option:
* pooling is a masked mean over the real items of the input prefix (theirs averages all L
  positions, padding included: ``prism_pooling: full_mean`` reproduces that, see below);
* the expert's dropout acts on its hidden activation with rate ``prism_expert_dropout``; theirs
  applies ``Dropout(0.5)`` to a tensor it then throws away, so their effective rate is 0, which
  is our default;
* any number M >= 1 of modalities (theirs hard-codes two).  With M = 1 there is no "other"
  modality, so L_uni is 0;
* noise passes and L_aux run in training only; evaluation runs the clean passes alone and is
  deterministic (theirs runs all passes and draws noise at evaluation too);
* the padding row of every table is zero and missing modalities are zero vectors with a
  missing flag, excluded from the pooling (theirs: random rows).

``prism_pooling: full_mean`` (the authors' pooling, for comparison).  x̄^m = (1/L) Σ_{t<L} x^m_t
over all L positions and ē = (1/L) Σ_t e_t, padding included, as their ``V.mean(dim=1)``.  Like
theirs, a padding position contributes the projection of a fixed random padding vector (drawn
once, N(0, initializer_range²) per value, like their randomly initialised padding row) plus the
bias, and that vector never trains (theirs: ``padding_idx=0``); the ID padding row is RecBole's
(randomly initialised, frozen by ``padding_idx``), as theirs.  What still differs: an item
missing a modality contributes the bias alone (theirs has no missing items); RecBole pads on the
right, theirs on the left (the mean does not depend on where); and their feature tables'
mask row N+1 does not exist here.

Causal PRISM (``train_positions: all``, the model scores every position).  Position t may use
items up to t only, so x̄^m and ē become prefix means x̄^m_t, ē_t (cumulative sums over the
positions: ``pool_prefix``), the experts and the gate run per position on [B, L, ...] (the same
code as for [B, ...]), position t receives Σ_m x^m_t + z_t, and the auxiliary losses average
over the real positions.  At the last real position z_t is what the sequence-level (``last``)
computation gives for the same prefix; evaluation uses the causal computation too, so a model
is evaluated as it was trained.

Where the gate reads from (``gate_input``).  ``id_summary`` (the authors'): the gate reads ē
and z joins the input embeddings, as above.  ``backbone_state`` (an extension): the gate reads
the backbone's own output h (at the last position, or at every position t in the causal mode)
instead of ē, and z joins that output, h' = h + Σ_k w_k h_k; the input embeddings then receive
Σ_m x^m_t alone.  The experts and their losses are unchanged; :meth:`PRISMLayer.fuse_state`
does the fusion once the backbone has run (the plug-in calls it from ``gather_indexes``).

Cost.  The pooling is a weighted ``embedding_bag`` over the projected vectors of the batch's
distinct items (training) or of the whole catalogue, projected once per evaluation (no
gradients, parameters unchanged): memory O(B·L + U·M·D), never ``[B, U]`` or ``[B, L, M, D]``.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLING_MODES = ("masked_mean", "full_mean")
FEATURE_TRANSFORMS = ("none", "center", "whiten")


def transform_table(table: torch.Tensor, missing: torch.Tensor, mode: str = "none",
                    eps: float = 1e-5) -> torch.Tensor:
    """``prism_feature_transform`` (an extension; the authors feed the vectors as they are):
    re-express one modality table F_m [N, d] before PRISM reads it.  Statistics come from the
    rows of real items that have the modality (row 0, padding, and missing rows excluded; those
    rows stay as they are), with no interactions involved.

        center:  F_i <- (F_i - μ) / ||F_i - μ||                 remove the shared direction
        whiten:  F_i <- W (F_i - μ) / ||W (F_i - μ)||,  W = U diag(1/sqrt(λ + eps·λ̄)) Uᵀ
                 (ZCA: Σ = U diag(λ) Uᵀ, the covariance of the rows; λ̄ its mean eigenvalue)

    Rows are L2-normalised again, so the projections W_m see vectors of the scale they are
    initialised for (CLIP's unit vectors).  Why: pre-trained text embeddings are anisotropic
    (WhitenRec, arXiv 2402.10602: mean pairwise cosines above 0.8), which makes every item look
    alike to the projection; WhitenRec whitens them.  ``python -m prism_recbole.feature_stats``
    measures it for a ``.item`` file.
    """
    if mode not in FEATURE_TRANSFORMS:
        raise ValueError(
            f"option prism_feature_transform must be one of {', '.join(FEATURE_TRANSFORMS)}, got {mode!r}"
        )
    if mode == "none":
        return table
    rows = ~missing[: table.shape[0]].clone()
    rows[0] = False
    if int(rows.sum()) < 2:
        raise ValueError(f"prism_feature_transform: {mode} needs at least two items with the modality")
    x = table.double()  # transient: 400 MB for 100k items x 512 values, once at build time
    real = x[rows]
    centred = x - real.mean(dim=0)
    if mode == "whiten":
        eigenvalues, vectors = torch.linalg.eigh(torch.cov(real.T))
        eigenvalues = eigenvalues.clamp(min=0.0)
        scale = (eigenvalues + eps * eigenvalues.mean()).rsqrt()
        centred = centred @ (vectors * scale) @ vectors.T
    out = F.normalize(centred, dim=1).to(table.dtype)
    return torch.where(rows.unsqueeze(1), out, table)


@dataclass
class PRISMOutput:
    add_emb: torch.Tensor  # [B, L, D]  Σ_m x^m_t + z at real positions, 0 elsewhere
    aux_loss: torch.Tensor  # scalar; 0 in evaluation
    gate_weights: torch.Tensor  # [B, K]
    fused: torch.Tensor  # [B, D]  z
    expert_outputs: torch.Tensor  # [B, K, D]  clean h_k
    aux_terms: Optional[dict] = None  # individual loss terms (training only)
    # gate_input backbone_state: what fuse_state needs once the backbone has run:
    # (expert outputs [B, K, D], or [T, K, D] at the real positions in the causal mode,
    #  the pool mask [B, L], whether they are per position)
    deferred: Optional[tuple] = None


class ModalityFeatures(nn.Module):
    """The item vector tables F_m and their projections W_m: item ids -> [.., M, D].

    Tables are initialised from the dataset's dense tables.  ``trainable=True`` fine-tunes
    them (the authors' code does); ``False`` keeps them as buffers (cheaper).  Row 0 and the
    rows of items missing a modality stay out of every result (their projection is zeroed).
    ``pad_std``: the std of the fixed padding vectors of the ``full_mean`` pooling (0: none).
    """

    def __init__(self, tables: List[torch.Tensor], missing: List[torch.Tensor], hidden_size: int,
                 trainable: bool = True, n_rows: Optional[int] = None, pad_std: float = 0.0):
        super().__init__()
        self.n_modalities = len(tables)
        self.trainable = trainable
        n_rows = n_rows or tables[0].shape[0]
        present = torch.zeros(n_rows, self.n_modalities, dtype=torch.bool)
        self.tables = nn.ModuleList() if trainable else None
        for m, (table, miss) in enumerate(zip(tables, missing)):
            full = torch.zeros(n_rows, table.shape[1], dtype=torch.float32)
            full[: table.shape[0]] = table
            present[: miss.shape[0], m] = ~miss
            if trainable:
                self.tables.append(nn.Embedding.from_pretrained(full, freeze=False, padding_idx=0))
            else:
                self.register_buffer(f"table_{m}", full, persistent=False)
            # the authors' padding row: random, never trained (own generator: the global RNG,
            # and so every other initialisation, is untouched)
            pad = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(m)) * pad_std
            self.register_buffer(f"pad_{m}", pad, persistent=False)
        present[0] = False
        self.register_buffer("present", present, persistent=False)  # [n_rows, M]
        self.projections = nn.ModuleList(nn.Linear(t.shape[1], hidden_size) for t in tables)
        self._cache = None  # (key, zeroed [n_rows, M, D], summed [n_rows, D], raw or None)

    def share_tables(self, other):
        """Read the same feature tables as ``other`` (one set of tables, several projections)."""
        if self.trainable:
            self.tables = other.tables
        else:
            for m in range(self.n_modalities):
                setattr(self, f"table_{m}", other.table(m))

    def table(self, m):
        return self.tables[m].weight if self.trainable else getattr(self, f"table_{m}")

    def buffer_names(self):
        """Buffers that DistributedDataParallel must not broadcast: identical on every rank
        (frozen tables, the fixed padding vectors drawn from their own seeded generator)."""
        pads = [f"pad_{m}" for m in range(self.n_modalities)]
        return pads + ([] if self.trainable else [f"table_{m}" for m in range(self.n_modalities)])

    def forward(self, item_ids: Optional[torch.Tensor] = None):
        """item_ids [U] (None: every row) -> (projected [U, M, D] with missing and padding rows
        zeroed, raw [U, M, D]: W_m f + b_m with the fixed padding vector for id 0, present [U, M]).
        The padding vector is projected on its own and put in place after the projection (the
        projection is row-wise), so no copy of a [U, F_m] table slice is made for it."""
        if item_ids is None:
            item_ids = torch.arange(self.present.shape[0], device=self.present.device)
            rows = [self.table(m) for m in range(self.n_modalities)]  # the tables, uncopied
        else:
            rows = [self.table(m)[item_ids] for m in range(self.n_modalities)]
        is_pad = (item_ids == 0).unsqueeze(-1)
        raw = torch.stack([
            torch.where(is_pad, proj(getattr(self, f"pad_{m}")), proj(rows[m]))
            for m, proj in enumerate(self.projections)
        ], dim=1)
        present = self.present[item_ids]
        return raw * present.unsqueeze(-1), raw, present

    def _cache_key(self):
        tensors = list(self.parameters()) + list(self.buffers())  # tables, pads, present
        return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors) + (
            torch.is_autocast_enabled(self.present.device.type),
        )

    def all_rows(self, with_raw=False):
        """(zeroed [n_rows, M, D], Σ_m [n_rows, D], raw or None) for every row of the tables.

        Without gradients (evaluation) the result is kept until a parameter changes (an
        optimizer step or ``load_state_dict`` bumps its version), so an evaluation projects the
        catalogue once, not once per batch."""
        cacheable = not torch.is_grad_enabled()
        if cacheable and self._cache is not None and self._cache[0] == self._cache_key() and (
                self._cache[3] is not None or not with_raw):
            return self._cache[1:]
        zeroed, raw, _ = self()
        rows = (zeroed, zeroed.sum(dim=1), raw if with_raw else None)
        self._cache = (self._cache_key(),) + rows if cacheable else None
        return rows

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)


def pool_mean(table, index, weights):
    """Σ_t w[b,t]·table[index[b,t]] / Σ_t w[b,t] for each row b (0 where all weights are 0).

    ``table`` [U, C], ``index`` [B, L] into its rows, ``weights`` [B, L] >= 0.  A weighted
    ``embedding_bag``: O(B·L) work and memory plus the [B, C] result; nothing of size
    [B, L, C] or [B, U] is built."""
    weights = weights.float()  # normalised in fp32: 1e-12 is 0 in half precision
    weights = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)).to(table.dtype)
    return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")


class Expert(nn.Module):
    """f_k: Linear(M·D -> H), GELU, Dropout(p) on the hidden activation, Linear(H -> D)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        return self.fc2(self.dropout(self.act(self.fc1(x))))


def masked_mean(values, mask=None):
    """Mean of ``values`` (any shape) over the entries where ``mask`` is true (all if None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _triplet(anchor, positive, negative, margin, eps=1e-7, distance="l2"):
    """max(d(a, p) - d(a, n) + margin, 0) per row, d = ||a - b + eps||₂ (torch's triplet loss).

    ``distance="cosine"`` (scale-free): a, p, n are L2-normalised first, so d lies in [0, 2]
    and the margin cannot be met by inflating the experts' output norms."""
    anchor, positive, negative = anchor.float(), positive.float(), negative.float()  # eps is 0 in half
    if distance == "cosine":
        anchor, positive, negative = (F.normalize(t, dim=-1) for t in (anchor, positive, negative))
    d_ap = (anchor - positive + eps).norm(dim=-1)
    d_an = (anchor - negative + eps).norm(dim=-1)
    return (d_ap - d_an + margin).clamp(min=0.0)


def uniqueness_loss(clean, replaced, m, margin, mask=None, distance="l2"):
    """L_uni_m: triplet(anchor h, positives h^{¬j} for j != m, negative h^{¬m}), mean over j."""
    positives = [replaced[j] for j in range(len(replaced)) if j != m]
    if not positives:
        return clean.new_zeros(())
    losses = [masked_mean(_triplet(clean, pos, replaced[m], margin, distance=distance), mask)
              for pos in positives]
    return torch.stack(losses).mean()


def gate_balance_loss(weights):
    """L_bal = K Σ_k (mean_b w_bk)² - 1 for gate weights [N, K] (rows sum to 1): the squared
    coefficient of variation of the experts' mean weights (Shazeer et al., ICLR 2017)."""
    importance = weights.mean(dim=0)
    # var / mean² (= K Σ_k m_k² - 1 since Σ_k m_k = 1), without that form's cancellation
    return importance.var(unbiased=False) / importance.mean().pow(2)


def _cosine(a, b):
    """cos(a, b) over the last dimension, in fp32 (it underflows in half precision)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def synergy_loss(clean, replaced, mask=None):
    """L_syn = mean_m mean_b cos(h, h^{¬m}); minimising it pushes h away from every h^{¬m}."""
    return torch.stack(
        [masked_mean(_cosine(clean, r), mask) for r in replaced]
    ).mean()


def redundancy_loss(clean, replaced, mask=None):
    """L_red = mean_m mean_b (1 - cos(h, h^{¬m})); minimising it pulls h^{¬m} towards h."""
    return torch.stack(
        [masked_mean(1.0 - _cosine(clean, r), mask) for r in replaced]
    ).mean()


EXPERT_KINDS = ("unique", "synergy", "redundancy")
REPLACEMENTS = ("noise", "shuffle", "mean")
TRIPLET_DISTANCES = ("l2", "cosine")


class InteractionExpertLayer(nn.Module):
    """M uniqueness experts, one synergy expert, one redundancy expert, and their losses.

    ``kinds`` keeps a subset of the expert kinds (for ablations); "unique" means one expert per
    modality.  Expert k's loss is computed only for the experts that exist.  Inputs may have
    any leading shape (``[B, M, D]`` per sequence, ``[B, L, M, D]`` per position); ``mask``
    (the leading shape, bool) says which rows the auxiliary losses average over.
    """

    def __init__(self, n_modalities, hidden_size, expert_hidden, dropout, noise_std,
                 margin, lambda_uni, lambda_syn, lambda_red, modality_names=None,
                 kinds=EXPERT_KINDS, replace="noise", triplet_distance="l2"):
        super().__init__()
        if triplet_distance not in TRIPLET_DISTANCES:
            raise ValueError(
                f"option prism_triplet_distance must be one of {', '.join(TRIPLET_DISTANCES)}, "
                f"got {triplet_distance!r}"
            )
        self.triplet_distance = triplet_distance
        if replace not in REPLACEMENTS:
            raise ValueError(
                f"option prism_replace must be one of {', '.join(REPLACEMENTS)}, got {replace!r}"
            )
        self.replace = replace
        unknown = [k for k in kinds if k not in EXPERT_KINDS]
        if unknown or not kinds:
            raise ValueError(
                f"option prism_experts must be a non-empty subset of {list(EXPERT_KINDS)}, "
                f"got {list(kinds)}"
            )
        self.n_modalities = n_modalities
        self.noise_std = noise_std
        self.margin = margin
        self.lambda_uni, self.lambda_syn, self.lambda_red = lambda_uni, lambda_syn, lambda_red
        names = modality_names or [str(m) for m in range(n_modalities)]
        self.expert_names = []
        self.expert_kinds = []  # (kind, modality index or None) per expert
        if "unique" in kinds:
            self.expert_names += [f"unique_{n}" for n in names]
            self.expert_kinds += [("unique", m) for m in range(n_modalities)]
        for kind in ("synergy", "redundancy"):
            if kind in kinds:
                self.expert_names.append(kind)
                self.expert_kinds.append((kind, None))
        self.experts = nn.ModuleList(
            Expert(n_modalities * hidden_size, expert_hidden, hidden_size, dropout)
            for _ in self.expert_names
        )

    def _noise_scale(self, part):
        """noise_std, or with "match" the std of the modality it replaces (over the batch,
        detached), so that the noise sits on the features' scale whatever that scale is."""
        if self.noise_std == "match":
            return part.detach().std()
        return self.noise_std

    def _replacement(self, part):
        """What stands in for a modality's vectors ``part`` [..., D] (``replace``):
        noise: fresh N(0, σ²) noise (the authors'); shuffle: the same modality's vector of
        another row of the batch (a random permutation of the rows), which looks like real
        data; mean: the modality's mean over the batch.  shuffle and mean are detached."""
        if self.replace == "noise":
            return torch.randn_like(part) * self._noise_scale(part)
        rows = part.detach().reshape(-1, part.shape[-1])
        if self.replace == "shuffle":
            return rows[torch.randperm(rows.shape[0], device=rows.device)].view_as(part)
        return rows.mean(dim=0).expand_as(part)

    def _replaced_inputs(self, pooled):
        """[M, ..., M·D]: for each m, the input with modality m replaced (``_replacement``)."""
        inputs = []
        for m in range(self.n_modalities):
            parts = list(pooled.unbind(dim=-2))
            parts[m] = self._replacement(parts[m])
            inputs.append(torch.cat(parts, dim=-1))
        return torch.stack(inputs)

    def forward(self, pooled: torch.Tensor, with_aux: bool, mask=None):
        """pooled: [..., M, D].  Returns (clean outputs [..., K, D], L_aux, terms or None)."""
        x = pooled.flatten(-2)  # [..., M·D]
        if not with_aux:
            return torch.stack([f(x) for f in self.experts], dim=-2), x.new_zeros(()), None
        clean, terms = [], {}
        aux = x.new_zeros(())
        for name, (kind, m), expert in zip(self.expert_names, self.expert_kinds, self.experts):
            # one call per expert on the clean input and M noisy copies stacked, each expert
            # drawing its own noise (as in the authors' code)
            stacked = torch.cat([x.unsqueeze(0), self._replaced_inputs(pooled)], dim=0)
            out = expert(stacked)  # [1 + M, ..., D]
            clean.append(out[0])
            replaced = list(out[1:])
            if kind == "unique":
                terms[name] = uniqueness_loss(out[0], replaced, m, self.margin, mask,
                                              distance=self.triplet_distance)
                aux = aux + self.lambda_uni * terms[name]
            elif kind == "synergy":
                terms[name] = synergy_loss(out[0], replaced, mask)
                aux = aux + self.lambda_syn * terms[name]
            else:
                terms[name] = redundancy_loss(out[0], replaced, mask)
                aux = aux + self.lambda_red * terms[name]
        return torch.stack(clean, dim=-2), aux, terms


class AdaptiveFusionLayer(nn.Module):
    """w = softmax(MLP([h_1 ; ... ; h_K ; ē]) / τ);  z = Σ_k w_k h_k."""

    def __init__(self, n_experts, hidden_size, gate_hidden, dropout, temperature):
        super().__init__()
        self.temperature = temperature
        self.gate = nn.Sequential(
            nn.Linear((n_experts + 1) * hidden_size, gate_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(gate_hidden, n_experts),
        )

    def forward(self, expert_outputs, user_summary):
        """expert_outputs: [..., K, D]; user_summary ē: [..., D] -> (z [..., D], w [..., K])."""
        gate_input = torch.cat([expert_outputs.flatten(-2), user_summary], dim=-1)
        weights = torch.softmax(self.gate(gate_input) / self.temperature, dim=-1)
        fused = (weights.unsqueeze(-1) * expert_outputs).sum(dim=-2)
        return fused, weights


class UniformFusionLayer(nn.Module):
    """Fixed equal weights: w_k = 1/K, z = mean_k h_k (the "uniform" ablation; no parameters)."""

    def forward(self, expert_outputs, user_summary):
        K = expert_outputs.shape[-2]
        weights = expert_outputs.new_full(expert_outputs.shape[:-1], 1.0 / K)
        return expert_outputs.mean(dim=-2), weights


FUSION_LEVELS = ("sequence", "item")
GATE_INPUTS = ("id_summary", "backbone_state")
FUSION_MODES = ("adaptive", "uniform", "none")
# diagnostics at evaluation (PRISMPlugin.prism_intervention; never a training option):
# no_fusion: z = 0 (the experts and the gate switched off, Σ_m x^m_t kept); swap_fusion: each
# user gets another user's z (the batch rolled by one); uniform_gate: w_k = 1/K instead of the gate
INTERVENTIONS = ("no_fusion", "swap_fusion", "uniform_gate")


class PRISMLayer(nn.Module):
    """Modality features -> pooled -> experts -> gate -> what the backbone adds, and L_aux.

    ``fusion_level="sequence"`` (the authors' design) runs the experts once per sequence on the
    pooled vectors x̄ and broadcasts one fused vector z over the positions.  ``"item"`` (an
    extension) runs them once per distinct item of the batch on that item's own vectors
    [x^1_i ; ... ; x^M_i]; the gate still reads the user's summary (the mean expert outputs over
    the user's items, and ē) and position t gets z_t = Σ_k w_k h_k(s_t); a position that
    receives the addition but holds no real item (BERT4Rec's mask token) gets the user's z.
    ``item_features=False`` leaves Σ_m x^m_t out of what is added (when the candidate side
    already carries the modality vectors, or to let the fused vector carry them alone).

    Ablations: ``fusion="uniform"`` replaces the gate by fixed equal weights; ``fusion="none"``
    has no experts, no gate, no auxiliary loss and no noise passes: the backbone gets the item
    features Σ_m x^m_t alone.  ``experts`` keeps a subset of the expert kinds; ``aux_loss=False``
    trains the experts without their auxiliary losses (and without the noise passes).
    """

    def __init__(self, tables, missing, hidden_size, modality_names=None, pooling="masked_mean",
                 expert_hidden=128, expert_dropout=0.0, gate_hidden=None, gate_dropout=0.3,
                 temperature=0.7, noise_std=1.0, margin=1.0, lambda_uni=0.1, lambda_syn=0.1,
                 lambda_red=0.1, trainable_features=True, initializer_range=0.02, n_rows=None,
                 fusion_level="sequence", item_features=True, fusion="adaptive",
                 experts=EXPERT_KINDS, aux_loss=True, causal=False, replace="noise",
                 gate_input="id_summary", triplet_distance="l2", feature_transform="none",
                 gate_balance=0.0):
        super().__init__()
        tables = [transform_table(t, miss, feature_transform) for t, miss in zip(tables, missing)]
        if gate_input not in GATE_INPUTS:
            raise ValueError(
                f"option prism_gate_input must be one of {', '.join(GATE_INPUTS)}, got {gate_input!r}"
            )
        if gate_input == "backbone_state" and fusion_level != "sequence":
            raise ValueError("prism_gate_input: backbone_state needs prism_fusion_level: sequence")
        self.gate_input = gate_input
        gate_balance = float(gate_balance)
        if not gate_balance >= 0.0:  # NaN too
            raise ValueError(f"option prism_gate_balance must be >= 0, got {gate_balance}")
        if gate_balance > 0 and (fusion != "adaptive" or gate_input != "id_summary"):
            raise ValueError(
                "prism_gate_balance regularises the gate of prism_fusion: adaptive with "
                f"prism_gate_input: id_summary; got prism_fusion: {fusion}, "
                f"prism_gate_input: {gate_input}"
            )
        self.gate_balance = gate_balance
        self.intervention = None  # one of INTERVENTIONS while a diagnostic evaluation runs
        if causal and fusion != "none" and (pooling != "masked_mean" or fusion_level != "sequence"):
            raise ValueError(
                "train_positions: all runs PRISM causally (prefix means), which needs "
                "prism_pooling: masked_mean and prism_fusion_level: sequence; got "
                f"prism_pooling: {pooling}, prism_fusion_level: {fusion_level}"
            )
        self.causal = causal
        if fusion not in FUSION_MODES:
            raise ValueError(
                f"option prism_fusion must be one of {', '.join(FUSION_MODES)}, got {fusion!r}"
            )

        if pooling not in POOLING_MODES:
            raise ValueError(
                f"option prism_pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}"
            )
        if fusion_level not in FUSION_LEVELS:
            raise ValueError(
                f"option prism_fusion_level must be one of {', '.join(FUSION_LEVELS)}, "
                f"got {fusion_level!r}"
            )
        if temperature <= 0:
            raise ValueError(f"option prism_temperature must be > 0, got {temperature}")
        self.pooling = pooling
        self.fusion_level = fusion_level
        self.item_features = item_features
        self.fusion = fusion
        self.aux_loss = aux_loss
        self.n_modalities = len(tables)
        self.features = ModalityFeatures(
            tables, missing, hidden_size, trainable_features, n_rows,
            pad_std=initializer_range if pooling == "full_mean" else 0.0,
        )
        if fusion == "none":
            self.interaction_experts = self.adaptive_fusion = None
            self.expert_names = []
        else:
            self.interaction_experts = InteractionExpertLayer(
                self.n_modalities, hidden_size, expert_hidden, expert_dropout, noise_std, margin,
                lambda_uni, lambda_syn, lambda_red, modality_names, kinds=tuple(experts),
                replace=replace, triplet_distance=triplet_distance,
            )
            self.expert_names = self.interaction_experts.expert_names
            if fusion == "adaptive":
                self.adaptive_fusion = AdaptiveFusionLayer(
                    len(self.expert_names), hidden_size, gate_hidden or 2 * hidden_size,
                    gate_dropout, temperature,
                )
            else:
                self.adaptive_fusion = UniformFusionLayer()
        self.initializer_range = initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=initializer_range)
                nn.init.zeros_(module.bias)

    @property
    def fusion_layer(self):
        """The gate, or equal weights while the ``uniform_gate`` diagnostic runs."""
        if self.intervention == "uniform_gate":
            return UniformFusionLayer()
        return self.adaptive_fusion

    def intervene(self, z, pool_mask):
        """What the ``no_fusion`` and ``swap_fusion`` diagnostics make of z: [B, D], [B, 1, D] or,
        per position, [B, L, D].  ``swap_fusion`` gives user b the z of user b-1 (of the batch
        rolled by one; per position, that user's z_t, or its last real position's z where its
        history is shorter).  Other interventions (or none) leave z as it is."""
        if self.intervention == "no_fusion":
            return torch.zeros_like(z)
        if self.intervention != "swap_fusion":
            return z
        if self.fusion_level != "sequence":
            raise ValueError("the swap_fusion diagnostic needs prism_fusion_level: sequence "
                             "(item-level fusion has no per-user fused vector)")
        other = z.roll(1, dims=0)
        if z.dim() == 2 or z.shape[1] == 1:
            return other
        last = (pool_mask.sum(dim=1) - 1).clamp(min=0).roll(1, dims=0)  # [B]
        positions = torch.arange(z.shape[1], device=z.device)
        index = torch.minimum(positions.unsqueeze(0), last.unsqueeze(1))  # [B, L]
        other = other.gather(1, index.unsqueeze(-1).expand_as(other))
        return other * pool_mask.unsqueeze(-1).to(other.dtype)  # this user's real positions only

    def all_item_vectors(self):
        """Σ_m x^m_i for every row of the tables: [n_rows, D] (zero for padding/missing)."""
        return self.features.all_rows()[1]

    def _batch_rows(self, item_seq, need_raw):
        """The projected vectors the batch reads and the index into them:
        (zeroed [R, M, D], Σ_m [R, D], raw [R, M, D] or None, present [R, M], index [B, L]).

        With gradients: the R = U distinct items of the batch, projected here.  Without
        (evaluation): the whole catalogue, projected once per evaluation (see ``all_rows``),
        indexed by the item ids themselves."""
        if torch.is_grad_enabled():
            unique_ids, index = torch.unique(item_seq, return_inverse=True)
            zeroed, raw, present = self.features(unique_ids)
            return zeroed, zeroed.sum(dim=1), raw if need_raw else None, present, index
        zeroed, summed, raw = self.features.all_rows(with_raw=need_raw)
        return zeroed, summed, raw, self.features.present, item_seq

    def pool(self, rows, present, index, id_emb, pool_mask):
        """The user's pooled modality vectors x̄ [B, M, D] and ID summary ē [B, D].

        masked_mean: over the positions of ``pool_mask`` whose item has modality m;
        full_mean: over all L positions, padding included (the authors' pooling)."""
        if self.pooling == "full_mean":
            weights = torch.ones_like(index, dtype=rows.dtype)
            pooled = [pool_mean(rows[:, m], index, weights) for m in range(self.n_modalities)]
            return torch.stack(pooled, dim=1), id_emb.mean(dim=1)
        real = pool_mask.to(rows.dtype)
        has = F.embedding(index, present.to(rows.dtype)) * real.unsqueeze(-1)  # [B, L, M]
        pooled = [pool_mean(rows[:, m], index, has[..., m]) for m in range(self.n_modalities)]
        real = real.unsqueeze(1)  # [B, 1, L]
        user_summary = torch.bmm(real.to(id_emb.dtype), id_emb).squeeze(1) / real.sum(-1).clamp(min=1.0)
        return torch.stack(pooled, dim=1), user_summary

    def pool_prefix(self, rows, present, index, id_emb, pool_mask, with_summary=True):
        """Causal pooling: x̄^m_t and ē_t over the real items at positions <= t, for every t:
        [B, L, M, D] and [B, L, D], by cumulative sums (O(B·L·M·D), no [B, L, L, D]).  At the
        last real position they equal :meth:`pool` of the same prefix.  ``with_summary=False``
        (the gate reads the backbone's state instead): ē_t is not computed, None."""
        real = pool_mask.to(rows.dtype)  # [B, L]
        weights = real.unsqueeze(-1) * present[index].to(rows.dtype)  # [B, L, M]
        sums = torch.cumsum(rows[index] * weights.unsqueeze(-1), dim=1)  # [B, L, M, D]
        pooled = sums / torch.cumsum(weights.float(), dim=1).clamp(min=1e-12).unsqueeze(-1).to(sums.dtype)
        if not with_summary:
            return pooled, None
        summary = torch.cumsum(id_emb * real.unsqueeze(-1), dim=1)
        summary = summary / torch.cumsum(real, dim=1).clamp(min=1.0).unsqueeze(-1)
        return pooled, summary

    def forward(self, item_seq, id_emb, pool_mask, add_mask=None, with_aux=None) -> PRISMOutput:
        """item_seq [B, L] ids; id_emb [B, L, D] = E[item_seq]; pool_mask [B, L] bool: the
        positions whose items are pooled (real items); add_mask [B, L] bool: the positions that
        receive the addition (default: pool_mask)."""
        with_aux = (self.training and self.aux_loss) if with_aux is None else with_aux
        add_mask = pool_mask if add_mask is None else add_mask
        B, L = item_seq.shape
        D = id_emb.shape[-1]
        dtype = id_emb.dtype
        rows, summed, raw, present, index = self._batch_rows(
            item_seq, need_raw=self.pooling == "full_mean" and self.fusion != "none")
        gate_weights = id_emb.new_zeros(B, len(self.expert_names))
        fused = id_emb.new_zeros(B, D)
        expert_outputs = id_emb.new_zeros(B, len(self.expert_names), D)
        aux_loss, terms, per_position, deferred = id_emb.new_zeros(()), None, None, None
        late = self.gate_input == "backbone_state"  # the gate runs in fuse_state

        if self.fusion != "none" and self.causal and pool_mask.any():
            # per position t: x̄_t, ē_t over the prefix; the experts and the gate run on the T
            # real positions only (not B·L: short histories are mostly padding), so the
            # auxiliary losses average over the real positions; z_t is added at position t
            pooled, user_summary = self.pool_prefix(rows, present, index, id_emb, pool_mask,
                                                    with_summary=not late)
            outputs, aux_loss, terms = self.interaction_experts(pooled[pool_mask], with_aux)
            # what a last-position call reports: the values at each sequence's last real position
            last, has = _last_real_rows(pool_mask)
            has = has.to(dtype).unsqueeze(-1)
            expert_outputs = outputs[last] * has.unsqueeze(-1)
            if late:
                deferred = (outputs, pool_mask, True)
            else:
                fused_rows, weight_rows = self.fusion_layer(outputs, user_summary[pool_mask])
                aux_loss, terms = self._add_gate_balance(weight_rows, aux_loss, terms)
                per_position = self.intervene(id_emb.new_zeros(B, L, D).masked_scatter(
                    pool_mask.unsqueeze(-1), fused_rows.to(dtype)), pool_mask)
                fused = fused_rows[last] * has
                gate_weights = weight_rows[last] * has
        elif self.fusion != "none" and self.fusion_level == "sequence":
            pooled, user_summary = self.pool(raw if raw is not None else rows, present, index,
                                             id_emb, pool_mask)
            # a sequence with nothing to pool (e.g. BERT4Rec's all-masked input) has zero
            # experts' input: it stays out of the cosine losses (their gradient at 0 is ~1/eps)
            has_items = pool_mask.any(dim=1) if self.pooling == "masked_mean" else None
            expert_outputs, aux_loss, terms = self.interaction_experts(pooled, with_aux, has_items)
            if late:
                deferred = (expert_outputs, pool_mask, False)
            else:
                fused, gate_weights = self.fusion_layer(expert_outputs, user_summary)
                aux_loss, terms = self._add_gate_balance(gate_weights, aux_loss, terms, has_items)
                per_position = self.intervene(fused.unsqueeze(1), pool_mask)  # z, broadcast over the positions
        elif self.fusion != "none":  # item level: experts on each distinct real item
            if not torch.is_grad_enabled():  # evaluation: only the batch's items, not the catalogue
                unique_ids, index = torch.unique(item_seq, return_inverse=True)
                rows, present = rows[unique_ids], present[unique_ids]
            real_item = present.any(dim=1)  # [R]: not padding / mask token / all-missing
            K = len(self.expert_names)
            item_outputs = rows.new_zeros(rows.shape[0], K, D)
            if real_item.any():
                outputs, aux_loss, terms = self.interaction_experts(rows[real_item], with_aux)
                item_outputs = item_outputs.index_put((real_item.nonzero().squeeze(1),), outputs)
            _, user_summary = self.pool(rows, present, index, id_emb, pool_mask)
            expert_outputs = pool_mean(item_outputs.flatten(1), index, pool_mask).view(B, K, D)
            fused, gate_weights = self.fusion_layer(expert_outputs, user_summary)
            aux_loss, terms = self._add_gate_balance(gate_weights, aux_loss, terms, pool_mask.any(dim=1))
            # z_t = Σ_k w_k h_k(s_t), one [B, L, D] term per expert (never [B, L, K, D]); the
            # user's z where the position holds no real item (BERT4Rec's mask token)
            per_position = (~real_item[index]).unsqueeze(-1).to(dtype) * fused.unsqueeze(1)
            for k in range(K):
                per_position = per_position + gate_weights[:, k, None, None] * item_outputs[:, k][index]
            per_position = self.intervene(per_position, pool_mask)  # no_fusion: zero; swap_fusion raises

        add = F.embedding(index, summed) if self.item_features else None  # Σ_m x^m_t
        if per_position is not None:
            add = per_position if add is None else add.add_(per_position)
        if add is None:  # features only, and they are on the candidate side (id+modal)
            add = id_emb.new_zeros(B, L, D)
        mask = add_mask.unsqueeze(-1).to(dtype)
        if add.shape[1] != L:  # z alone, broadcast over the positions
            add = add.expand(B, L, D) * mask
        else:  # only at the chosen positions (in place: no second [B, L, D] tensor)
            add = add.mul_(mask) if add.dtype == mask.dtype else add * mask
        return PRISMOutput(add, aux_loss, gate_weights, fused, expert_outputs, terms, deferred)

    def _add_gate_balance(self, weights, aux_loss, terms, rows=None):
        """Training with ``prism_gate_balance`` > 0: L_aux += λ_bal L_bal over the gate weights
        ([N, K]: sequences, or positions in the causal mode) of the real rows (``rows`` [N]
        bool; None: all).  Otherwise nothing is computed, not even the row selection."""
        if not (self.training and self.gate_balance > 0):
            return aux_loss, terms
        if rows is not None:
            weights = weights[rows]
        if weights.shape[0] == 0:
            return aux_loss, terms
        balance = gate_balance_loss(weights)
        terms = dict(terms or {}, gate_balance=balance.detach())
        return aux_loss + self.gate_balance * balance, terms

    def fuse_state(self, deferred, state):
        """``gate_input: backbone_state``: h' = h + z with w = softmax(MLP([h_1 ; ... ; h_K ; h]) / τ),
        z = Σ_k w_k h_k.  ``state`` is the backbone's output, [B, D] (the last position) or
        [B, L, D] (every position: causal, each position with its own prefix's experts).
        Returns (h', z [B, D], w [B, K]), the last two at each sequence's last real position."""
        outputs, pool_mask, per_position = deferred
        if state.dim() == 3:  # causal, every position: the experts of each real position
            if not per_position:
                raise RuntimeError("fuse_state got every position's state from a non-causal call")
            fused_rows, weight_rows = self.fusion_layer(outputs, state[pool_mask])
            z = self.intervene(state.new_zeros(state.shape).masked_scatter(
                pool_mask.unsqueeze(-1), fused_rows.to(state.dtype)), pool_mask)
            last, has = _last_real_rows(pool_mask)
            has = has.to(state.dtype).unsqueeze(-1)
            return state + z, fused_rows[last] * has, weight_rows[last] * has
        if per_position:  # causal, the last position: its prefix is the whole sequence
            last, has = _last_real_rows(pool_mask)
            outputs = outputs[last] * has.to(outputs.dtype).view(-1, 1, 1)
        fused, weights = self.fusion_layer(outputs, state)
        return state + self.intervene(fused, pool_mask).to(state.dtype), fused, weights


def _last_real_rows(pool_mask):
    """For rows taken as ``x[pool_mask]`` ([T, ...]): the index of each sequence's last real
    position among them, and whether the sequence has one ([B] each)."""
    counts = pool_mask.sum(dim=1)
    return (counts.cumsum(0) - 1).clamp(min=0), counts > 0
