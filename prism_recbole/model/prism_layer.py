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
                 (the unique-m expert must change when m is hidden, and not when another is)
    L_syn      = mean_m mean_b cos(h_syn, h_syn^{¬m})        (push away: needs every modality)
    L_red      = mean_m mean_b (1 - cos(h_red, h_red^{¬m}))  (pull together: any one suffices)
    L_aux      = λ_uni Σ_m L_uni_m + λ_syn L_syn + λ_red L_red

Adaptive Fusion Layer: a gate over the experts, personalised by the user's ID summary ē:
    w          = softmax( MLP([h_1 ; ... ; h_K ; ē]) / τ )  (K weights per user, sum 1)
    z          = Σ_k w_k h_k                               fused vector (D)

What the backbone receives: at every real position t, e_t + Σ_m x^m_t + z (z broadcast over the
positions, as the authors' code does); its loss becomes L_rec + L_aux.

Deviations from the authors' code (github.com/YutongLi2024/PRISM), each with an option:
* pooling is a masked mean over the real items of the input prefix (theirs averages all L
  positions, padding included: ``prism_pooling: full_mean`` reproduces that);
* the expert's dropout acts on its hidden activation with rate ``prism_expert_dropout``; theirs
  applies ``Dropout(0.5)`` to a tensor it then throws away, so their effective rate is 0, which
  is our default;
* any number M >= 1 of modalities (theirs hard-codes two).  With M = 1 there is no "other"
  modality, so L_uni is 0;
* noise passes and L_aux run in training only; evaluation runs the clean passes alone and is
  deterministic (theirs runs all passes and draws noise at evaluation too);
* the padding row of every table is zero and missing modalities are zero vectors with a
  missing flag, excluded from the pooling (theirs: random rows).
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

POOLING_MODES = ("masked_mean", "full_mean")


@dataclass
class PRISMOutput:
    add_emb: torch.Tensor  # [B, L, D]  Σ_m x^m_t + z at real positions, 0 elsewhere
    aux_loss: torch.Tensor  # scalar; 0 in evaluation
    gate_weights: torch.Tensor  # [B, K]
    fused: torch.Tensor  # [B, D]  z
    expert_outputs: torch.Tensor  # [B, K, D]  clean h_k
    aux_terms: Optional[dict] = None  # individual loss terms (training only)


class ModalityFeatures(nn.Module):
    """The item vector tables F_m and their projections W_m: item ids -> [.., M, D].

    Tables are initialised from the dataset's dense tables.  ``trainable=True`` fine-tunes
    them (the authors' code does); ``False`` keeps them as buffers (cheaper).  Row 0 and the
    rows of items missing a modality stay out of every result (their projection is zeroed).
    """

    def __init__(self, tables: List[torch.Tensor], missing: List[torch.Tensor], hidden_size: int,
                 trainable: bool = True, n_rows: Optional[int] = None):
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
        present[0] = False
        self.register_buffer("present", present, persistent=False)  # [n_rows, M]
        self.projections = nn.ModuleList(nn.Linear(t.shape[1], hidden_size) for t in tables)

    def table(self, m):
        return self.tables[m].weight if self.trainable else getattr(self, f"table_{m}")

    def buffer_names(self):
        """Names of large buffers that DistributedDataParallel must not broadcast."""
        return [] if self.trainable else [f"table_{m}" for m in range(self.n_modalities)]

    def forward(self, item_ids: torch.Tensor):
        """item_ids [U] (distinct ids) -> (projected [U, M, D] with missing and padding rows
        zeroed, the same without zeroing, present [U, M])."""
        raw = torch.stack(
            [proj(self.table(m)[item_ids]) for m, proj in enumerate(self.projections)], dim=1
        )
        present = self.present[item_ids]
        return raw * present.unsqueeze(-1), raw, present


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


def uniqueness_loss(clean, replaced, m, margin):
    """L_uni_m: triplet(anchor h, positives h^{¬j} for j != m, negative h^{¬m}), mean over j."""
    positives = [replaced[j] for j in range(len(replaced)) if j != m]
    if not positives:
        return clean.new_zeros(())
    losses = [
        F.triplet_margin_loss(clean, pos, replaced[m], margin=margin, p=2, eps=1e-7)
        for pos in positives
    ]
    return torch.stack(losses).mean()


def synergy_loss(clean, replaced):
    """L_syn = mean_m mean_b cos(h, h^{¬m}); minimising it pushes h away from every h^{¬m}."""
    return torch.stack([F.cosine_similarity(clean, r, dim=-1).mean() for r in replaced]).mean()


def redundancy_loss(clean, replaced):
    """L_red = mean_m mean_b (1 - cos(h, h^{¬m})); minimising it pulls h^{¬m} towards h."""
    return torch.stack(
        [(1.0 - F.cosine_similarity(clean, r, dim=-1)).mean() for r in replaced]
    ).mean()


EXPERT_KINDS = ("unique", "synergy", "redundancy")


class InteractionExpertLayer(nn.Module):
    """M uniqueness experts, one synergy expert, one redundancy expert, and their losses.

    ``kinds`` keeps a subset of the expert kinds (for ablations); "unique" means one expert per
    modality.  Expert k's loss is computed only for the experts that exist.
    """

    def __init__(self, n_modalities, hidden_size, expert_hidden, dropout, noise_std,
                 margin, lambda_uni, lambda_syn, lambda_red, modality_names=None,
                 kinds=EXPERT_KINDS):
        super().__init__()
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

    def _replaced_inputs(self, pooled):
        """[M, B, M·D]: for each m, the input with modality m replaced by fresh noise."""
        inputs = []
        for m in range(self.n_modalities):
            parts = list(pooled.unbind(dim=1))
            parts[m] = torch.randn_like(parts[m]) * self._noise_scale(parts[m])
            inputs.append(torch.cat(parts, dim=-1))
        return torch.stack(inputs)

    def forward(self, pooled: torch.Tensor, with_aux: bool):
        """pooled: [B, M, D].  Returns (clean outputs [B, K, D], L_aux, terms or None)."""
        x = pooled.flatten(1)  # [B, M·D]
        if not with_aux:
            return torch.stack([f(x) for f in self.experts], dim=1), x.new_zeros(()), None
        clean, terms = [], {}
        aux = x.new_zeros(())
        for name, (kind, m), expert in zip(self.expert_names, self.expert_kinds, self.experts):
            # one call per expert on [(1 + M)·B, M·D]: the clean input and M noisy copies,
            # each expert drawing its own noise (as in the authors' code)
            stacked = torch.cat([x.unsqueeze(0), self._replaced_inputs(pooled)], dim=0)
            out = expert(stacked)  # [1 + M, B, D]
            clean.append(out[0])
            replaced = list(out[1:])
            if kind == "unique":
                terms[name] = uniqueness_loss(out[0], replaced, m, self.margin)
                aux = aux + self.lambda_uni * terms[name]
            elif kind == "synergy":
                terms[name] = synergy_loss(out[0], replaced)
                aux = aux + self.lambda_syn * terms[name]
            else:
                terms[name] = redundancy_loss(out[0], replaced)
                aux = aux + self.lambda_red * terms[name]
        return torch.stack(clean, dim=1), aux, terms


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
        """expert_outputs: [B, K, D]; user_summary ē: [B, D] -> (z [B, D], w [B, K])."""
        gate_input = torch.cat([expert_outputs.flatten(1), user_summary], dim=-1)
        weights = torch.softmax(self.gate(gate_input) / self.temperature, dim=-1)
        fused = torch.einsum("bk,bkd->bd", weights, expert_outputs)
        return fused, weights


class UniformFusionLayer(nn.Module):
    """Fixed equal weights: w_k = 1/K, z = mean_k h_k (the "uniform" ablation; no parameters)."""

    def forward(self, expert_outputs, user_summary):
        B, K = expert_outputs.shape[:2]
        weights = expert_outputs.new_full((B, K), 1.0 / K)
        return expert_outputs.mean(dim=1), weights


FUSION_LEVELS = ("sequence", "item")
FUSION_MODES = ("adaptive", "uniform", "none")


class PRISMLayer(nn.Module):
    """Modality features -> pooled -> experts -> gate -> what the backbone adds, and L_aux.

    ``fusion_level="sequence"`` (the authors' design) runs the experts once per sequence on the
    pooled vectors x̄ and broadcasts one fused vector z over the positions.  ``"item"`` (an
    extension) runs them once per distinct item of the batch on that item's own vectors
    [x^1_i ; ... ; x^M_i]; the gate still reads the user's summary (the mean expert outputs over
    the user's items, and ē) and position t gets z_t = Σ_k w_k h_k(s_t).
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
                 experts=EXPERT_KINDS, aux_loss=True):
        super().__init__()
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
        self.features = ModalityFeatures(tables, missing, hidden_size, trainable_features, n_rows)
        if fusion == "none":
            self.interaction_experts = self.adaptive_fusion = None
            self.expert_names = []
        else:
            self.interaction_experts = InteractionExpertLayer(
                self.n_modalities, hidden_size, expert_hidden, expert_dropout, noise_std, margin,
                lambda_uni, lambda_syn, lambda_red, modality_names, kinds=tuple(experts),
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

    def all_item_vectors(self):
        """Σ_m x^m_i for every row of the tables: [n_rows, D] (zero for padding/missing)."""
        ids = torch.arange(self.features.present.shape[0], device=self.features.present.device)
        return self.features(ids)[0].sum(dim=1)

    def forward(self, item_seq, id_emb, pool_mask, add_mask=None, with_aux=None) -> PRISMOutput:
        """item_seq [B, L] ids; id_emb [B, L, D] = E[item_seq]; pool_mask [B, L] bool: the
        positions whose items are pooled (real items); add_mask [B, L] bool: the positions that
        receive the addition (default: pool_mask)."""
        with_aux = (self.training and self.aux_loss) if with_aux is None else with_aux
        add_mask = pool_mask if add_mask is None else add_mask
        B, L = item_seq.shape
        dtype = id_emb.dtype
        if self.fusion == "none":  # the item features alone: no experts, gate or aux loss
            unique_ids, inverse = torch.unique(item_seq, return_inverse=True)
            x = self.features(unique_ids)[0]
            add = x.sum(dim=1)[inverse] * add_mask.unsqueeze(-1).to(dtype)
            zeros = id_emb.new_zeros(B, 0)
            return PRISMOutput(add, id_emb.new_zeros(()), zeros, id_emb.new_zeros(B, id_emb.shape[-1]),
                               id_emb.new_zeros(B, 0, id_emb.shape[-1]), None)
        # Each distinct item of the batch is projected once (U <= B·L rows), and the pooling
        # is a [B, U] x [U, D] product with the number of times each item occurs in each
        # sequence, so no [B, L, M, D] tensor is ever built.
        unique_ids, inverse = torch.unique(item_seq, return_inverse=True)  # [U], [B, L]
        x, x_raw, present = self.features(unique_ids)  # [U, M, D], [U, M, D], [U, M]
        occurrences = id_emb.new_zeros(B, unique_ids.numel())
        if self.pooling == "masked_mean":
            occurrences.scatter_add_(1, inverse, pool_mask.to(dtype))
            real = pool_mask.to(dtype).unsqueeze(1)  # [B, 1, L]
            user_summary = torch.bmm(real, id_emb).squeeze(1) / real.sum(-1).clamp(min=1.0)  # ē
        else:  # full_mean: the authors' unmasked mean over all L positions, padding included
            occurrences.scatter_add_(1, inverse, torch.ones_like(id_emb[..., 0]))
            user_summary = id_emb.mean(dim=1)

        if self.fusion_level == "sequence":
            if self.pooling == "masked_mean":
                # [M, B, U]: how often each item that has modality m occurs in each sequence
                weights = occurrences.unsqueeze(0) * present.t().to(dtype).unsqueeze(1)
                pooled = torch.bmm(weights, x.transpose(0, 1))  # [M, B, D], no big permute
                pooled = (pooled / weights.sum(-1, keepdim=True).clamp(min=1.0)).transpose(0, 1)
            else:
                pooled = torch.einsum("bu,umd->bmd", occurrences, x_raw) / L
            expert_outputs, aux_loss, terms = self.interaction_experts(pooled, with_aux)
            fused, gate_weights = self.adaptive_fusion(expert_outputs, user_summary)
            per_position = fused.unsqueeze(1)  # z, broadcast over the positions
        else:  # item level: experts on each distinct real item of the batch
            real_item = present.any(dim=1)  # [U]: not padding / mask token / all-missing
            item_outputs = x.new_zeros(unique_ids.numel(), len(self.expert_names), x.shape[-1])
            if real_item.any():
                outputs, aux_loss, terms = self.interaction_experts(x[real_item], with_aux)
                item_outputs = item_outputs.index_put((real_item.nonzero().squeeze(1),), outputs)
            else:
                aux_loss, terms = x.new_zeros(()), None
            counts = occurrences.sum(1).clamp(min=1.0)
            expert_outputs = torch.einsum("bu,ukd->bkd", occurrences, item_outputs) / counts[:, None, None]
            fused, gate_weights = self.adaptive_fusion(expert_outputs, user_summary)
            per_position = torch.einsum("bk,blkd->bld", gate_weights, item_outputs[inverse])

        add = per_position
        if self.item_features:
            add = x.sum(dim=1)[inverse] + add  # Σ_m x^m_t + z
        add = add * add_mask.unsqueeze(-1).to(dtype)  # only at the chosen positions
        return PRISMOutput(add, aux_loss, gate_weights, fused, expert_outputs, terms)
