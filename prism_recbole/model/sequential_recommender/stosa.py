r"""STOSA: sequential recommendation via stochastic self-attention.

Reference:
    Ziwei Fan, Zhiwei Liu, Yu Wang, Alice Wang, Zahra Nazari, Lei Zheng, Hao Peng, Philip S. Yu.
    "Sequential Recommendation via Stochastic Self-Attention." WWW 2022 (arXiv 2201.06035).
    Authors' code: github.com/zfan20/STOSA (``DistSAModel`` in ``seqmodels.py``,
    ``DistSAEncoder``/``DistSelfAttention`` in ``modules.py``, the loss and the full ranking in
    ``DistSAModelTrainer``, ``trainers.py``).  The PRISM authors' copy is ``STOSA.py`` of
    github.com/YutongLi2024/PRISM.

Every item is a Gaussian :math:`\mathcal N(\mu_i, \mathrm{diag}\,\Sigma_i)`: a mean table
:math:`E^\mu` (``item_mean_embeddings``) and a covariance table :math:`E^\Sigma`
(``item_cov_embeddings``), both ``[n_items, D]``, plus position tables :math:`P^\mu, P^\Sigma`.

Distance
--------
The squared 2-Wasserstein distance between two diagonal Gaussians (the authors'
``wasserstein_distance``; the square root is never taken):

.. math::

    W_2^2\big((\mu_1, \Sigma_1), (\mu_2, \Sigma_2)\big)
        = \lVert \mu_1 - \mu_2 \rVert_2^2
        + \big\lVert \Sigma_1^{1/2} - \Sigma_2^{1/2} \big\rVert_2^2 ,

:math:`\Sigma^{1/2}` elementwise, with :math:`\Sigma` clamped at 1e-24 before the square root
(the authors'; the dtype's smallest normal number under float16).  Between many pairs it is
computed as :math:`\lVert\mu_1\rVert^2 + \lVert\mu_2\rVert^2 - 2\mu_1\cdot\mu_2
+ \sum\Sigma_1 + \sum\Sigma_2 - 2\,\Sigma_1^{1/2}\cdot\Sigma_2^{1/2}` (their
``wasserstein_distance_matmul``): one matrix product per part.

Input (``add_position_mean_embedding`` / ``add_position_cov_embedding``)
-------------------------------------------------------------------------
For the sequence :math:`s_1 \dots s_L` (RecBole's right-padded ``item_id_list``):

.. math::

    x^\mu_t = \mathrm{ELU}\big(\mathrm{Drop}(\mathrm{LN}(E^\mu_{s_t} + P^\mu_t))\big), \qquad
    x^\Sigma_t = \mathrm{ELU}\big(\mathrm{Drop}(\mathrm{LN}(E^\Sigma_{s_t} + P^\Sigma_t))\big) + 1 .

One LayerNorm is shared by the two streams (as in the authors' code).  ELU + 1 > 0 keeps
every covariance positive; the mean stream has the ELU too (without the + 1), as in theirs.

Wasserstein self-attention (``DistSelfAttention``), per head of size :math:`d = D / h`
-------------------------------------------------------------------------------------
.. math::

    Q^\mu = x^\mu W_Q^\mu,\; K^\mu = x^\mu W_K^\mu,\; V^\mu = x^\mu W_V^\mu, \qquad
    Q^\Sigma = \mathrm{ELU}(x^\Sigma W_Q^\Sigma) + 1,\; K^\Sigma, V^\Sigma \text{ alike}

    A_{tj} = \mathrm{softmax}_j\Big(-\frac{W_2^2\big((Q^\mu_t, Q^\Sigma_t), (K^\mu_j, K^\Sigma_j)\big)}
              {\sqrt d}\Big) \quad \text{over } j \le t,\ s_j \ne 0

    \mathrm{ctx}^\mu = \mathrm{Drop}_a(A)\, V^\mu, \qquad
    \mathrm{ctx}^\Sigma = \mathrm{Drop}_a(A)^{\circ 2}\, V^\Sigma

(the covariance of a weighted sum of independent Gaussians: the weights enter squared), then
:math:`h^\mu = \mathrm{LN}(\mathrm{Drop}(\mathrm{ctx}^\mu W_O^\mu) + x^\mu)` and
:math:`h^\Sigma = \mathrm{LN}(\mathrm{Drop}(\mathrm{ctx}^\Sigma W_O^\Sigma) + x^\Sigma)` (one
LayerNorm for both, as theirs).  Causal mask plus padding mask on the keys: position :math:`t`
never sees an item after :math:`t`.

Feed-forward (``DistIntermediate``, one per stream), ELU as in the authors' code:
:math:`f(h) = \mathrm{LN}(\mathrm{Drop}(W_2\,\mathrm{ELU}(W_1 h)) + h)`; the layer outputs
:math:`f^\mu(h^\mu)` and :math:`\mathrm{ELU}(f^\Sigma(h^\Sigma)) + 1` (positive again).
``n_layers`` such layers (``n_heads`` heads, ``inner_size`` = the authors' 4 D).

Scoring and loss
----------------
``forward(item_seq, item_seq_len)`` returns ``(mean, cov)``, each ``[B, L, D]``, the
representation :math:`(\mu^u_t, \Sigma^u_t)` at **every** position :math:`t` (position
:math:`t` has seen :math:`s_1 \dots s_t` only); the user at the end of the sequence is position
``item_seq_len - 1``.  A candidate :math:`i` is :math:`(E^\mu_i, \mathrm{ELU}(E^\Sigma_i) + 1)`
and its score is :math:`-W_2^2(u, i)` (``predict``, ``full_sort_predict``: higher is better).

The loss (``DistSAModelTrainer.bpr_optimization``) with one negative :math:`n` for the target
:math:`p` of a position, :math:`d_{ab} = W_2^2(a, b)`:

.. math::

    \mathcal L = \operatorname{mean}_t\big[-\log\sigma(d_{un} - d_{up})\big]
        + \lambda_{pvn}\, \operatorname{mean}_t\big[\max(0,\ d_{up} - d_{pn})\big]

(``pvn_weight`` = :math:`\lambda_{pvn}`: the positive must be closer to the user than to the
negative).  :math:`-\log\sigma` is computed as ``-logsigmoid`` (theirs:
``-log(sigmoid(x + 1e-24))``, which is infinite once the sigmoid underflows).

Training positions (option ``train_positions``)
-----------------------------------------------
* ``last`` (default, RecBole's): each prefix row is one sample, scored at its last position
  against the row's target and the negative of RecBole's dataloader
  (``train_neg_sample_args``: one uniform negative, set in ``STOSA.yaml``); without a
  negative in the batch one is drawn uniformly on the device.
* ``all`` (the authors' training): every real position :math:`t` predicts item :math:`t + 1`
  (:func:`prism_recbole.model.positions.next_item_targets`), one negative per position drawn
  uniformly from the items 1 .. n-1 on the device, the loss averaged over the real positions;
  the dataset keeps one window per ``MAX_ITEM_LIST_LENGTH`` targets
  (:mod:`prism_recbole.data.positions`).  The model handles this itself
  (``handles_train_positions``).

A drawn negative that equals the target contributes nothing (its term would have no gradient
for the ranking part and would push the user away from the positive in the pvn part); the
mean stays over the real positions.  The authors sample negatives outside the user's history;
here a uniform one (RecBole's dataloader excludes the user's items, the device sampler does not).

Deviations from the authors' code (each ``stosa_legacy_*`` option restores theirs)
---------------------------------------------------------------------------------
* **The mean stream goes through the layers** (``stosa_legacy_mean_skip: False``).  Their
  ``DistSAEncoder.forward`` assigns each layer's mean output to a misspelled
  ``maen_hidden_states``, so every layer receives, and the encoder returns, the *input* mean
  embeddings: the attention reaches only the covariance.  ``True`` reproduces that.
* **One dropout on the covariance input** (``stosa_legacy_double_dropout: False``), as in the
  original STOSA.  The PRISM authors' copy applies it twice,
  :math:`\mathrm{ELU}(\mathrm{Drop}(\mathrm{Drop}(\mathrm{LN}(\cdot)))) + 1`; ``True``
  reproduces that.
* **Not built**: the PRISM authors' ``interest_encoder`` (a second encoder whose output is
  passed around and never used) and the ``user_margins`` table (used only by the commented-out
  margin loss).  The KL distance (``distance_metric: kl``, an ablation of theirs) is not ported;
  its ``kernel_param`` is unused in their code and has no option here.
* **Masking**: masked attention scores are set to the dtype's lowest value instead of adding
  :math:`-2^{32}+1` (same softmax, and it does not overflow under float16); evaluation is
  RecBole's full ranking (history items excluded by RecBole, as their :math:`+10^{24}`).

Initialisation as theirs: every Linear and Embedding weight :math:`\sim\mathcal N(0.01,
\text{initializer\_range}^2)` (the padding rows included; they get no gradient), Linear biases 0,
LayerNorm weight 1 and bias 0.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from prism_recbole.data.positions import train_positions_option
from prism_recbole.model.plugin import _bool_option, _float_option, _int_option, check_known_options
from prism_recbole.model.positions import next_item_targets

DISTANCE_METRICS = ("wasserstein",)
KNOWN_OPTIONS = {"stosa_legacy_mean_skip", "stosa_legacy_double_dropout"}
COV_EPS = 1e-24  # the authors' clamp before the square root


def _sqrt_cov(cov):
    """:math:`\\Sigma^{1/2}` with Σ clamped at 1e-24 (at the smallest normal number of a dtype
    where 1e-24 is 0, e.g. float16: the gradient of sqrt at 0 is infinite)."""
    return torch.sqrt(torch.clamp(cov, min=max(COV_EPS, torch.finfo(cov.dtype).tiny)))


def wasserstein_distance(mean1, cov1, mean2, cov2):
    r"""Squared 2-Wasserstein distance of matching rows, ``[..., D]`` -> ``[...]``:
    :math:`\lVert\mu_1-\mu_2\rVert^2 + \lVert\Sigma_1^{1/2}-\Sigma_2^{1/2}\rVert^2`."""
    mean_part = ((mean1 - mean2) ** 2).sum(-1)
    cov_part = ((_sqrt_cov(cov1) - _sqrt_cov(cov2)) ** 2).sum(-1)
    return mean_part + cov_part


def wasserstein_distance_matmul(mean1, cov1, mean2, cov2):
    r"""Squared 2-Wasserstein distance of every pair, ``[..., n, D]`` x ``[..., m, D]`` ->
    ``[..., n, m]`` (the expanded form, one matrix product per part; as the authors')."""
    mean_part = (
        (mean1 ** 2).sum(-1, keepdim=True)
        + (mean2 ** 2).sum(-1, keepdim=True).transpose(-1, -2)
        - 2 * torch.matmul(mean1, mean2.transpose(-1, -2))
    )
    cov_part = (
        cov1.sum(-1, keepdim=True)
        + cov2.sum(-1, keepdim=True).transpose(-1, -2)
        - 2 * torch.matmul(_sqrt_cov(cov1), _sqrt_cov(cov2).transpose(-1, -2))
    )
    return mean_part + cov_part


def elu_plus_one(x):
    """ELU(x) + 1 > 0: how the model keeps covariances positive."""
    return F.elu(x) + 1


class DistSelfAttention(nn.Module):
    r"""Wasserstein self-attention over (mean, covariance) streams (the authors'
    ``DistSelfAttention``); see the module docstring for the formulas."""

    def __init__(self, n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps):
        super().__init__()
        if hidden_size % n_heads != 0:
            raise ValueError(
                f"The hidden size ({hidden_size}) is not a multiple of the number of attention "
                f"heads ({n_heads})"
            )
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.mean_query = nn.Linear(hidden_size, hidden_size)
        self.cov_query = nn.Linear(hidden_size, hidden_size)
        self.mean_key = nn.Linear(hidden_size, hidden_size)
        self.cov_key = nn.Linear(hidden_size, hidden_size)
        self.mean_value = nn.Linear(hidden_size, hidden_size)
        self.cov_value = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.mean_dense = nn.Linear(hidden_size, hidden_size)
        self.cov_dense = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)  # shared by both streams

    def heads(self, x):
        """``[B, L, D]`` -> ``[B, h, L, d]``."""
        return x.view(*x.shape[:-1], self.n_heads, self.head_size).permute(0, 2, 1, 3)

    def merge(self, x):
        """``[B, h, L, d]`` -> ``[B, L, D]``."""
        x = x.permute(0, 2, 1, 3).contiguous()
        return x.view(*x.shape[:-2], self.n_heads * self.head_size)

    def attention_probs(self, mean, cov, mask):
        r"""Attention weights ``[B, h, L, L]`` (before dropout):
        :math:`\mathrm{softmax}_j(-W_2^2(q_t, k_j) / \sqrt d)` over the keys allowed by
        ``mask`` ``[B, 1, L, L]`` (bool, True = may attend)."""
        q_mean, k_mean = self.heads(self.mean_query(mean)), self.heads(self.mean_key(mean))
        q_cov = self.heads(elu_plus_one(self.cov_query(cov)))
        k_cov = self.heads(elu_plus_one(self.cov_key(cov)))
        scores = -wasserstein_distance_matmul(q_mean, q_cov, k_mean, k_cov) / math.sqrt(self.head_size)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def forward(self, mean, cov, mask):
        probs = self.attn_dropout(self.attention_probs(mean, cov, mask))
        v_mean = self.heads(self.mean_value(mean))
        v_cov = self.heads(elu_plus_one(self.cov_value(cov)))
        mean_context = self.merge(torch.matmul(probs, v_mean))
        cov_context = self.merge(torch.matmul(probs ** 2, v_cov))
        mean_out = self.LayerNorm(self.out_dropout(self.mean_dense(mean_context)) + mean)
        cov_out = self.LayerNorm(self.out_dropout(self.cov_dense(cov_context)) + cov)
        return mean_out, cov_out


class DistFeedForward(nn.Module):
    r"""The authors' ``DistIntermediate``: :math:`\mathrm{LN}(\mathrm{Drop}(W_2\,
    \mathrm{ELU}(W_1 h)) + h)`."""

    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps):
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.dropout(self.dense_2(F.elu(self.dense_1(x)))) + x)


class DistLayer(nn.Module):
    """Attention, then a feed-forward per stream; the covariance leaves through ELU + 1."""

    def __init__(self, n_heads, hidden_size, inner_size, hidden_dropout_prob, attn_dropout_prob,
                 layer_norm_eps):
        super().__init__()
        self.attention = DistSelfAttention(
            n_heads, hidden_size, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        self.mean_feed_forward = DistFeedForward(hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps)
        self.cov_feed_forward = DistFeedForward(hidden_size, inner_size, hidden_dropout_prob, layer_norm_eps)

    def forward(self, mean, cov, mask):
        mean, cov = self.attention(mean, cov, mask)
        return self.mean_feed_forward(mean), elu_plus_one(self.cov_feed_forward(cov))


class DistSAEncoder(nn.Module):
    """``n_layers`` :class:`DistLayer`; with ``legacy_mean_skip`` every layer gets, and the
    encoder returns, the input means (the authors' ``maen_hidden_states`` typo)."""

    def __init__(self, n_layers, legacy_mean_skip=False, **layer_args):
        super().__init__()
        self.layers = nn.ModuleList(DistLayer(**layer_args) for _ in range(n_layers))
        self.legacy_mean_skip = legacy_mean_skip

    def forward(self, mean, cov, mask):
        for layer in self.layers:
            new_mean, cov = layer(mean, cov, mask)
            if not self.legacy_mean_skip:
                mean = new_mean
        return mean, cov


class STOSA(SequentialRecommender):
    r"""STOSA (Fan et al., WWW 2022) on RecBole: see the module docstring for the math."""

    handles_train_positions = True  # scores every position with its own loss (train_positions: all)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check_known_options(config, "stosa_", KNOWN_OPTIONS, "STOSA")
        self.n_layers = _int_option(config, "n_layers")
        self.n_heads = _int_option(config, "n_heads")
        self.hidden_size = _int_option(config, "hidden_size")
        self.inner_size = _int_option(config, "inner_size")
        self.hidden_dropout_prob = _float_option(config, "hidden_dropout_prob")
        self.attn_dropout_prob = _float_option(config, "attn_dropout_prob")
        self.layer_norm_eps = _float_option(config, "layer_norm_eps")
        self.initializer_range = _float_option(config, "initializer_range")
        self.pvn_weight = _float_option(config, "pvn_weight")
        self.distance_metric = str(config["distance_metric"] or "wasserstein").lower()
        if self.distance_metric not in DISTANCE_METRICS:
            raise ValueError(
                f"option distance_metric must be one of {', '.join(DISTANCE_METRICS)} for STOSA "
                f"(the authors' KL variant is not ported), got {config['distance_metric']!r}"
            )
        if str(config["loss_type"]).upper() != "BPR":
            raise ValueError(
                f"STOSA trains with its own Wasserstein ranking loss on one negative per target: "
                f"set loss_type: BPR (got {config['loss_type']!r})"
            )
        self.legacy_mean_skip = _bool_option(config, "stosa_legacy_mean_skip")
        self.legacy_double_dropout = _bool_option(config, "stosa_legacy_double_dropout")
        self.train_positions = train_positions_option(config)

        D = self.hidden_size
        self.item_mean_embeddings = nn.Embedding(self.n_items, D, padding_idx=0)
        self.item_cov_embeddings = nn.Embedding(self.n_items, D, padding_idx=0)
        self.position_mean_embeddings = nn.Embedding(self.max_seq_length, D)
        self.position_cov_embeddings = nn.Embedding(self.max_seq_length, D)
        self.LayerNorm = nn.LayerNorm(D, eps=self.layer_norm_eps)  # shared by both streams
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.item_encoder = DistSAEncoder(
            self.n_layers,
            legacy_mean_skip=self.legacy_mean_skip,
            n_heads=self.n_heads,
            hidden_size=D,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """The authors' ``init_weights``: N(0.01, initializer_range²) for Linear and Embedding."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.01, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # ---- representations ---------------------------------------------------------------------
    def attention_mask(self, item_seq):
        """``[B, 1, L, L]`` bool: query t may attend key j iff j <= t and s_j is not padding."""
        L = item_seq.size(1)
        causal = torch.ones(L, L, dtype=torch.bool, device=item_seq.device).tril()
        return causal.view(1, 1, L, L) & (item_seq != 0).view(-1, 1, 1, L)

    def input_embeddings(self, item_seq):
        r"""``(x^μ, x^Σ)`` ``[B, L, D]``: the encoder's input (module docstring)."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
        # both tables are called with the input tensor itself (a plug-in hooks these calls)
        mean = self.item_mean_embeddings(item_seq) + self.position_mean_embeddings(positions)
        cov = self.item_cov_embeddings(item_seq) + self.position_cov_embeddings(positions)
        mean = F.elu(self.dropout(self.LayerNorm(mean)))
        cov = self.dropout(self.LayerNorm(cov))
        if self.legacy_double_dropout:  # the PRISM authors' copy
            cov = self.dropout(cov)
        return mean, elu_plus_one(cov)

    def forward(self, item_seq, item_seq_len):
        r"""``(mean, cov)``, each ``[B, L, D]``: :math:`(\mu^u_t, \Sigma^u_t)` at every position
        t (causal: t has seen items 1 .. t only; padding positions hold values that are never
        used).  The user after the whole sequence is position ``item_seq_len - 1``
        (:meth:`user_distribution`).  ``cov`` > 0 everywhere."""
        mean, cov = self.input_embeddings(item_seq)
        return self.item_encoder(mean, cov, self.attention_mask(item_seq))

    def user_distribution(self, item_seq, item_seq_len):
        """``(mean, cov)`` ``[B, D]`` at the last real position of each sequence."""
        mean, cov = self.forward(item_seq, item_seq_len)
        return self.gather_indexes(mean, item_seq_len - 1), self.gather_indexes(cov, item_seq_len - 1)

    def item_distribution(self, items=None):
        """``(E^μ_i, ELU(E^Σ_i) + 1)`` of ``items`` (any shape), or of the whole catalogue."""
        if items is None:
            return self.item_mean_embeddings.weight, elu_plus_one(self.item_cov_embeddings.weight)
        return self.item_mean_embeddings(items), elu_plus_one(self.item_cov_embeddings(items))

    # ---- loss ----------------------------------------------------------------------------------
    def stosa_loss(self, user_mean, user_cov, pos_items, neg_items):
        r"""Mean over the rows of :math:`-\log\sigma(d_{un} - d_{up})` plus ``pvn_weight`` x
        the mean of :math:`\max(0, d_{up} - d_{pn})`; user ``[T, D]``, items ``[T]``; a row
        whose negative is its positive contributes 0."""
        pos_mean, pos_cov = self.item_distribution(pos_items)
        neg_mean, neg_cov = self.item_distribution(neg_items)
        d_up = wasserstein_distance(user_mean, user_cov, pos_mean, pos_cov).float()
        d_un = wasserstein_distance(user_mean, user_cov, neg_mean, neg_cov).float()
        d_pn = wasserstein_distance(pos_mean, pos_cov, neg_mean, neg_cov).float()
        keep = (neg_items != pos_items).float()
        n = max(pos_items.numel(), 1)
        rank = (-F.logsigmoid(d_un - d_up) * keep).sum() / n
        pvn = (torch.clamp(d_up - d_pn, min=0) * keep).sum() / n
        return rank + self.pvn_weight * pvn

    def sample_negatives(self, shape, device):
        """Uniform negatives from the items 1 .. n_items - 1, drawn on the device."""
        return torch.randint(1, self.n_items, shape, device=device)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        if self.train_positions == "all":
            mean, cov = self.forward(item_seq, item_seq_len)  # [B, L, D]
            targets = next_item_targets(item_seq, item_seq_len, pos_items)
            real = targets > 0
            pos = targets[real]
            return self.stosa_loss(mean[real], cov[real], pos, self.sample_negatives(pos.shape, pos.device))
        mean, cov = self.user_distribution(item_seq, item_seq_len)
        if self.NEG_ITEM_ID in interaction:
            neg_items = interaction[self.NEG_ITEM_ID]
        else:
            neg_items = self.sample_negatives(pos_items.shape, pos_items.device)
        return self.stosa_loss(mean, cov, pos_items, neg_items)

    # ---- scores: -W_2^2 ------------------------------------------------------------------------
    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        mean, cov = self.user_distribution(item_seq, item_seq_len)
        item_mean, item_cov = self.item_distribution(interaction[self.ITEM_ID])
        return -wasserstein_distance(mean, cov, item_mean, item_cov)  # [B]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        mean, cov = self.user_distribution(item_seq, item_seq_len)
        item_mean, item_cov = self.item_distribution()
        return -wasserstein_distance_matmul(mean, cov, item_mean, item_cov)  # [B, n_items]
