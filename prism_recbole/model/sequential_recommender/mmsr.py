r"""MMSR: graph-based adaptive multi-modal fusion for sequential recommendation.

Reference:
    Hengchang Hu, Wei Guo, Yong Liu, Min-Yen Kan. "Adaptive Multi-Modalities Fusion in
    Sequential Recommendation Systems." CIKM 2023 (arXiv 2308.15980).
    Authors' code: github.com/HoldenHu/MMSR (their model class is ``VLGraph``).

Graph (one per input sequence, built on the device for the whole batch)
-----------------------------------------------------------------------
For the prefix :math:`s_1 \dots s_n` of a user, the *modality-enriched sequence graph* has

* one **item node** per distinct item (a repeated item is one node);
* for each modality :math:`m` (the fields of ``modalities``, any number :math:`M \ge 1`), the
  **modality nodes** linked to the items: with ``mmsr_modality_node: cluster`` (authors' code)
  the item vectors of :math:`m` are clustered by k-means at set-up and item :math:`i` is linked
  to its ``mmsr_link_k`` nearest centroids, so a modality node is a *modality code* shared by
  the items of the sequence that map to it; with ``mmsr_modality_node: item`` (the abstract's
  reading) every item has its own node per modality.  An item whose vector of :math:`m` is
  missing (empty cell, no row) has no node of :math:`m`.  Distinct nodes collapse, so the graph
  has at most :math:`n (1 + \sum_m k_m)` nodes.

Relations, stored as ids in ``adj [B, N, N]`` (uint8; 0 = no edge), numbered as the authors do:

=====  ============================================================  ===============
id     meaning                                                        attention
=====  ============================================================  ===============
1      self-loop of every node                                        both
2 / 3  sequential ``u -> v`` / ``v -> u`` seen (same type, t -> t+1)  homogeneous
4      both directions seen                                           homogeneous
5, 6   item -> modality-1 node / back                                 heterogeneous
7, 8   item -> modality-2 node / back                                 heterogeneous
9, 10  modality-1 node -> modality-2 node / back (same item)          heterogeneous
=====  ============================================================  ===============

With :math:`M` modalities the cross-type pairs :math:`(a, b)`, :math:`a < b` over the types
item, modality 1, ..., modality M, are numbered in that order: pair :math:`p` gets
:math:`5 + 2p` for :math:`a \to b` and :math:`6 + 2p` back (the table above for :math:`M = 2`).
Sequential edges join the nodes of one type at positions :math:`t` and :math:`t+1` (item to
item; every node of :math:`m` at :math:`t` to every node of :math:`m` at :math:`t+1`); the
heterogeneous edges join the nodes that belong to the same position.

Nodes are laid out by type (``graph.blocks``): the item nodes of each row first, then the
nodes of modality 1, ... each block padded to the largest count in the batch (with ``item``
modality nodes, block :math:`m` is laid out like the item block: column :math:`j` holds the
node of item node :math:`j`).  How the cost is kept down, without changing the result:

* the graph is built for the whole batch with ``torch.unique`` and ``index_put_`` (no Python
  loop over users or positions); ``adj`` takes :math:`B N^2` bytes and no
  :math:`[B, N, N, D]` tensor is formed (the authors build one for the content attention);
* homogeneous edges never leave a type block, so that attention runs block by block;
* the heterogeneous attention is a masked :math:`N \times N` product (cluster nodes), or,
  with ``item`` nodes, where each modality node belongs to one item, an attention over the
  :math:`1 + M` nodes of each item;
* only the last item's node is read out, so the last layer computes the second attention
  step, the gate and the output for that node only (the first step still runs over all
  nodes: its neighbours need it); ``node_states`` runs the full layer;
* :math:`W_{in}` is applied to the distinct node ids of the batch and to the small type and
  position tables, not to every node.

Node input (authors' ``auxiliary_info: [node_type, pos]``)
----------------------------------------------------------
.. math::

    h^0_v = W_{in} \big[\, E_v \;;\; T_{\tau(v)} \;;\;
            \tfrac{1}{|\mathrm{pos}(v)|} \textstyle\sum_{t \in \mathrm{pos}(v)} P_t \,\big]

:math:`E_v` is the item's ID embedding (also the table candidates are scored against), a
trainable code embedding (cluster; initialised from the centroid, ``mmsr_code_init``) or the
projected item vector :math:`W_m F_m[i] + b_m` (item); :math:`T` the node-type embedding,
:math:`P` the position embedding and :math:`\mathrm{pos}(v)` the positions where :math:`v`
occurs.

One propagation layer (``HeteAttenLayer`` with ``fusion_type: asy_mask``)
------------------------------------------------------------------------
Type-specific projections :math:`Q_v = h_v W_Q^{\tau(v)}`, :math:`K_v = h_v W_K^{\tau(v)}`,
:math:`V_v = h_v W_V^{\tau(v)}`.

* homogeneous (content) attention over the nodes :math:`u` with relation
  :math:`r = \mathrm{adj}_{vu} \in \{1,2,3,4\}`, computed on some node states :math:`x`:
  :math:`e_{vu}(x) = \mathrm{LeakyReLU}(a_r^\top (x_v \odot x_u))`,
  :math:`\alpha(x) = \mathrm{dropout}(\mathrm{softmax}_u\, e(x))`;
* heterogeneous attention over the nodes with relation 1 or :math:`\ge 5`, computed on
  queries and keys :math:`(q, k)`: :math:`s_{vu} = \mathrm{LeakyReLU}(q_v \cdot k_u)`,
  :math:`\beta(q, k) = \mathrm{dropout}(\mathrm{softmax}_u\, s)`;
* first step: :math:`\mathrm{homo} = \alpha(V)\,V` and :math:`\mathrm{hete} = \beta(Q, K)\,V`;
* both orders, *non-invasive* (the fused states only give attention weights, the values
  are always :math:`V`):

  - heterogeneous then homogeneous: :math:`o^{BA} = \alpha(\mathrm{hete})\,V`;
  - homogeneous then heterogeneous:
    :math:`o^{AB} = \beta(\mathrm{homo}\,W_Q^{\tau}, \mathrm{homo}\,W_K^{\tau})\,V`;

* update gate, per node: :math:`g_v = \mathrm{softmax}(f(o^{AB}_v), f(o^{BA}_v))` with
  :math:`f = \mathrm{Linear}(D, 1) \circ \mathrm{ReLU} \circ \mathrm{Linear}(D, D)` shared by
  both, :math:`h^1_v = g_{v,AB}\, o^{AB}_v + g_{v,BA}\, o^{BA}_v` (the two weights sum to 1);
  then dropout (``hidden_dropout_prob``) and padding nodes set to 0.  ``n_layers`` applies the
  same layer again (the authors reuse one layer).

Readout and loss: the user vector is :math:`h^1` of the node of the last item :math:`s_n`;
:math:`\hat y_i = h^1_{s_n} \cdot E_i` against the item ID table (tied with the input);
RecBole's CE over all items (default) or BPR.  Only that node's final state is used, so the
last layer computes only its row (``MMSRLayer.forward(..., readout)``); after a forward pass
``model.mmsr_gate_weights [B, 2]`` holds its gate (order AB, BA).  ``model.node_states(item_seq,
item_seq_len)`` returns every node's final state and gate ``[B, N, 2]`` with the graph (node
types: 0 padding, 1 item, 1 + m modality m), e.g. to report which order each node picked.

Deviations from the authors' code (each ``mmsr_legacy_*`` option restores theirs)
---------------------------------------------------------------------------------
* **K and V projections are used** (``mmsr_legacy_qkv: False``).  Their ``get_qkv_hidden``
  allocates ``W_K`` and ``W_V`` but returns the query projection three times, so
  :math:`K = V = Q`.  ``True`` reproduces that (and allocates no ``W_K``/``W_V``).
* **Both orders compose the two attentions** (``mmsr_legacy_order: False``).  In their code
  the homogeneous-then-heterogeneous branch takes its weights from :math:`Q, K` of the layer
  input (the homogeneous output is only passed as values, which the non-invasive step then
  discards), so :math:`o^{AB}` is plain heterogeneous attention with a fresh dropout mask.
  ``True`` reproduces that; the homogeneous output is then not computed at all.
* **Sequential modality edges of a repeated item are kept** (``mmsr_legacy_repeat_edges:
  False``).  Their graph builder ``continue``\ s when two consecutive items are the same, which
  also skips the modality edges of that step (with ``link_k > 1``, the edges between the codes
  of the repeated item).  ``True`` skips them too.
* **Metrics and model selection are RecBole's.**  Their NDCG divides by the ideal DCG of
  :math:`k` relevant items although there is one target (their NDCG is too small by 2.95 at
  @5, 7.04 at @20), and they select the best epoch per metric on the test set.  Here NDCG is
  RecBole's, the best epoch is chosen on validation, the split is RecBole's ``eval_args``.
* **Modality codes** come from a k-means written here (k-means++ seeding and Lloyd
  iterations, in float64, with a generator seeded by ``seed``) on the item vectors given in
  the ``.item`` file; the authors fit scikit-learn's MiniBatchKMeans on the output of an
  autoencoder to 128-d.  Code embeddings start from the centroid (projected onto the
  principal axes of the vectors when their dimension is not ``embedding_size``), min-max
  scaled to :math:`\pm 1/\sqrt{D}` as theirs.
* **Any number of modalities** (theirs: image and text).  The authors' image/text label swap
  (their "image" nodes are text codes) does not arise: modalities are named by their field.
* **Position table** has ``MAX_ITEM_LIST_LENGTH`` rows, one per sequence position (theirs
  has 150 rows indexed up to the node count, which overflows with many codes); the graph and
  its tensors are built on the model's device (theirs hard-code ``.cuda()``).
"""
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from prism_recbole.model.plugin import _bool_option, _choice_option, _float_option, _int_option, check_known_options

MODALITY_NODES = ("cluster", "item")
CODE_INITS = ("centroid", "random")
KNOWN_OPTIONS = {
    "mmsr_modality_node", "mmsr_n_clusters", "mmsr_link_k", "mmsr_kmeans_iters",
    "mmsr_code_init", "mmsr_leaky_alpha", "mmsr_legacy_qkv", "mmsr_legacy_order",
    "mmsr_legacy_repeat_edges",
}
NO_EDGE_SCORE = -9e15  # the authors' fill value: exp() of it is 0, a row of it stays finite
SELF, OUT, IN, BOTH = 1, 2, 3, 4
FIRST_HETERO = 5


def no_edge_score(dtype):
    """The score of a non-edge in a tensor of ``dtype``: the authors' -9e15 where it fits
    (float32/64, bfloat16: unchanged results), else the dtype's lowest finite value (float16
    under autocast, where -9e15 overflows).  Either way ``exp`` of it relative to any real
    score is 0, and a softmax over a row of non-edges only is uniform, as before."""
    return max(NO_EDGE_SCORE, torch.finfo(dtype).min)


# --------------------------------------------------------------------------- modality codes


def kmeans(x, n_clusters, n_iter=100, seed=0):
    """k-means++ seeding then Lloyd iterations, in float64; deterministic for a given seed.

    Args:
        x (Tensor): ``[n, d]`` points.
        n_clusters (int): wanted number of centroids; fewer are returned when ``x`` has
            fewer distinct points.
        n_iter (int): at most this many Lloyd iterations (stops when the assignment is stable).
        seed (int): seed of the local generator (the global random state is not touched).

    Returns:
        Tensor: ``[k, d]`` centroids (float64), ``k <= n_clusters``.
    """
    x = x.double()
    generator = torch.Generator().manual_seed(int(seed))
    n = x.size(0)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    dist2 = (x - x[first]).pow(2).sum(1)
    while len(chosen) < min(n_clusters, n):
        total = dist2.sum()
        if total <= 0:  # every point coincides with a centroid already
            break
        nxt = int(torch.multinomial(dist2 / total, 1, generator=generator))
        chosen.append(nxt)
        dist2 = torch.minimum(dist2, (x - x[nxt]).pow(2).sum(1))
    centroids = x[chosen].clone()
    assign = None
    for _ in range(n_iter):
        new_assign = squared_distances(x, centroids).argmin(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=len(centroids)).double()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0  # an empty cluster keeps its centroid
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centroids


def squared_distances(x, centroids):
    """``[n, k]`` squared Euclidean distances (float64), without an ``[n, k, d]`` tensor."""
    x, centroids = x.double(), centroids.double()
    d2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(1)
    return d2.clamp_min(0)


def nearest_centroids(x, centroids, k):
    """``[n, k]`` indices of the ``k`` nearest centroids of each point, nearest first."""
    d2 = squared_distances(x, centroids)
    # stable order for ties: sort by (distance, centroid index)
    return torch.sort(d2, dim=1, stable=True).indices[:, :k]


def principal_projection(x, dim):
    """Map ``[*, d]`` points to ``[*, dim]`` along the principal axes of ``x`` (zero-padded)."""
    x = x.double()
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:dim]
    # a sign convention, so the result does not depend on the SVD routine
    signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
    basis = basis * torch.where(signs == 0, 1.0, signs).double()

    def project(points):
        out = (points.double() - mean) @ basis.T
        if out.size(1) < dim:
            out = F.pad(out, (0, dim - out.size(1)))
        return out

    return project


def min_max_scale(array, bound):
    """The authors' ``normalize_array``: one global min-max rescaling into ``[-bound, bound]``."""
    low, high = array.min(), array.max()
    if high <= low:
        return torch.zeros_like(array)
    return (array - low) * (2 * bound) / (high - low) - bound


# --------------------------------------------------------------------------- the graph


class MSGraph(NamedTuple):
    """A batch of modality-enriched sequence graphs (see the module docstring).

    Attributes:
        adj: ``[B, N, N]`` uint8 relation ids, 0 where there is no edge.
        node_type: ``[B, N]`` 0 padding, 1 item, ``1 + m`` modality ``m`` (1-based).
        node_id: ``[B, N]`` item id (item nodes and ``item`` modality nodes) or code id
            (``cluster`` modality nodes); -1 for padding.
        blocks: ``(start, size)`` of each type's block of node columns, item first.
        slot_node: ``[B, L, S]`` node index of each slot (slot 0: the item at ``t``, then
            the ``k_m`` links of each modality), -1 where there is none.
        last_node: ``[B]`` node index of the last item of each sequence.
    """

    adj: torch.Tensor
    node_type: torch.Tensor
    node_id: torch.Tensor
    blocks: Tuple[Tuple[int, int], ...]
    slot_node: torch.Tensor
    last_node: torch.Tensor

    @property
    def node_mask(self):
        return self.node_type > 0


class MSGraphBuilder(nn.Module):
    """Builds :class:`MSGraph` from ``item_seq [B, L]`` and ``item_seq_len [B]``, batched.

    No Python loop over users, positions or nodes: the loops below run over node types
    (1 + M) only.  Distinct nodes come from one ``torch.unique`` per type over
    ``row * id_space + id``; edges are written with ``index_put_``.

    Args:
        links (list[Tensor]): per modality, ``[n_items, k_m]`` long: the modality nodes of
            item ``i`` (code ids, or ``i`` itself in ``item`` mode), -1 where there is none
            (missing vector, padding item 0).
        n_nodes (list[int]): per modality, the size of its node-id space.
        n_items (int): number of item ids (including padding 0).
        legacy_repeat_edges (bool): skip the sequential modality edges of a step whose two
            items are equal (the authors' builder).
        item_aligned (bool): ``item`` modality nodes (each ``links[m]`` is ``[n_items, 1]``
            holding ``i`` or -1): lay every modality block out like the item block, column
            ``j`` of block ``m`` being the node of item node ``j`` (a padding column where
            that item has no vector of ``m``).  The nodes of one item then sit at the same
            column of every block, which the heterogeneous attention uses (see
            :class:`AttentionMasks`).  The graph is the same, only the padding differs.
    """

    def __init__(self, links: List[torch.Tensor], n_nodes: List[int], n_items: int,
                 legacy_repeat_edges: bool = False, item_aligned: bool = False):
        super().__init__()
        self.n_modalities = len(links)
        self.legacy_repeat_edges = legacy_repeat_edges
        self.item_aligned = item_aligned
        if item_aligned:
            own = torch.arange(n_items)
            for link in links:
                if link.shape != (n_items, 1) or not ((link[:, 0] == own) | (link[:, 0] < 0)).all():
                    raise ValueError("item_aligned needs one link per item: the item itself or -1")
        self.id_spaces = [int(n_items)] + [int(n) for n in n_nodes]
        for m, link in enumerate(links):
            self.register_buffer(f"links_{m}", link.long().clone())  # saved: checkpoints keep the codes
        # slot columns of one position: the item, then k_m slots per modality
        slot_type = [1] + [2 + m for m, link in enumerate(links) for _ in range(link.size(1))]
        self.n_slots = len(slot_type)
        self.type_slots = [[s for s, t in enumerate(slot_type) if t == tau]
                           for tau in range(1, self.n_modalities + 2)]
        n_types = self.n_modalities + 1
        # relation ids of the cross-type pairs (a < b): 5 + 2p for a -> b, 6 + 2p for b -> a
        max_rel = FIRST_HETERO - 1 + n_types * (n_types - 1)
        if max_rel > 255:
            raise ValueError(f"MMSR supports at most 14 modalities, got {self.n_modalities}")
        rel = torch.zeros(n_types + 1, n_types + 1, dtype=torch.uint8)
        p = 0
        for a in range(1, n_types + 1):
            for b in range(a + 1, n_types + 1):
                rel[a, b], rel[b, a] = FIRST_HETERO + 2 * p, FIRST_HETERO + 2 * p + 1
                p += 1
        # slot pairs: same position, different types (heterogeneous edges) ...
        hetero = [(i, j) for i in range(self.n_slots) for j in range(self.n_slots)
                  if slot_type[i] != slot_type[j]]
        # ... and position t -> t + 1, same type (sequential edges)
        seq = [(i, j) for i in range(self.n_slots) for j in range(self.n_slots)
               if slot_type[i] == slot_type[j]]
        st = torch.tensor(slot_type)
        self.register_buffer("hetero_pairs", torch.tensor(hetero, dtype=torch.long).view(-1, 2),
                             persistent=False)
        self.register_buffer("hetero_pair_rel", rel[st[[i for i, _ in hetero]], st[[j for _, j in hetero]]]
                             if hetero else torch.zeros(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("seq_pairs", torch.tensor(seq, dtype=torch.long), persistent=False)
        self.register_buffer("seq_pair_is_item", torch.tensor([slot_type[i] == 1 for i, _ in seq]),
                             persistent=False)

    def links(self, m):
        return getattr(self, f"links_{m}")

    def slot_ids(self, item_seq, item_seq_len):
        """``[B, L, S]`` node ids (item id / code id) of every slot; -1 where none."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        valid = (positions.unsqueeze(0) < item_seq_len.unsqueeze(1)) & (item_seq > 0)
        items = torch.where(valid, item_seq, torch.zeros_like(item_seq))
        parts = [torch.where(valid, item_seq, -1).unsqueeze(-1)]
        for m in range(self.n_modalities):
            parts.append(self.links(m)[items])  # padding item 0 has no links (-1)
        return torch.cat(parts, dim=-1)

    def forward(self, item_seq, item_seq_len):
        batch_size, seq_len = item_seq.shape
        device = item_seq.device
        ids = self.slot_ids(item_seq, item_seq_len)  # [B, L, S]
        rows = torch.arange(batch_size, device=device).view(-1, 1, 1)

        # ---- nodes: distinct ids per row, one block of columns per type ------------------
        slot_node = torch.full_like(ids, -1)
        node_ids, blocks, start = [], [], 0
        for tau, cols in enumerate(self.type_slots):
            if tau > 0 and self.item_aligned:  # column j: the node of item node j, if any
                item_ids, item_nodes = node_ids[0], slot_node[:, :, 0]
                has = self.links(tau - 1)[item_ids.clamp(min=0), 0] >= 0
                node_ids.append(torch.where(has & (item_ids >= 0), item_ids, -1))
                slot_node[:, :, cols[0]] = torch.where(ids[:, :, cols[0]] >= 0, start + item_nodes, -1)
                blocks.append((start, item_ids.size(1)))
                start += item_ids.size(1)
                continue
            space = self.id_spaces[tau]
            type_ids = ids[:, :, cols]  # [B, L, k]
            present = type_ids >= 0
            keys = (rows * space + type_ids)[present]
            uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
            uniq_row = torch.div(uniq, space, rounding_mode="floor")
            counts = torch.bincount(uniq_row, minlength=batch_size)
            size = int(counts.max()) if uniq.numel() else 0
            first = torch.cumsum(counts, 0) - counts  # index in uniq of each row's first node
            local = torch.arange(uniq.numel(), device=device) - first[uniq_row]
            block_ids = torch.full((batch_size, size), -1, dtype=torch.long, device=device)
            block_ids[uniq_row, local] = uniq - uniq_row * space
            type_nodes = torch.full_like(type_ids, -1)
            type_nodes[present] = start + local[inverse]
            slot_node[:, :, cols] = type_nodes
            node_ids.append(block_ids)
            blocks.append((start, size))
            start += size
        n_nodes = start
        node_id = torch.cat(node_ids, dim=1)
        block_type = torch.cat([torch.full((size,), tau + 1, dtype=torch.long, device=device)
                                for tau, (_, size) in enumerate(blocks)])
        node_type = torch.where(node_id >= 0, block_type.unsqueeze(0), 0)

        # ---- edges: written into flat tables with one extra "nowhere" cell for non-edges --
        n2 = n_nodes * n_nodes
        nowhere = batch_size * n2
        base = rows * n2
        adj = torch.zeros(nowhere + 1, dtype=torch.uint8, device=device)
        # heterogeneous: every pair of nodes of different types at the same position
        if self.hetero_pairs.numel():
            src = slot_node[:, :, self.hetero_pairs[:, 0]]  # [B, L, P]
            dst = slot_node[:, :, self.hetero_pairs[:, 1]]
            flat = torch.where((src >= 0) & (dst >= 0), base + src * n_nodes + dst, nowhere)
            adj.index_put_((flat.reshape(-1),), self.hetero_pair_rel.expand_as(src).reshape(-1))
        # homogeneous: node u of position t -> node v of position t + 1, same type, u != v
        src = slot_node[:, :-1, self.seq_pairs[:, 0]]  # [B, L-1, P]
        dst = slot_node[:, 1:, self.seq_pairs[:, 1]]
        edge = (src >= 0) & (dst >= 0) & (src != dst)
        if self.legacy_repeat_edges:
            repeat = (item_seq[:, :-1] == item_seq[:, 1:]).unsqueeze(-1)
            edge = edge & (self.seq_pair_is_item | ~repeat)
        seen = torch.zeros(nowhere + 1, dtype=torch.uint8, device=device)
        seen.index_put_((torch.where(edge, base + src * n_nodes + dst, nowhere).reshape(-1),),
                        torch.ones((), dtype=torch.uint8, device=device))
        seen = seen[:nowhere].view(batch_size, n_nodes, n_nodes)
        back = seen.transpose(1, 2)
        adj = adj[:nowhere].view(batch_size, n_nodes, n_nodes)
        adj += OUT * seen + IN * back - seen * back  # 2 out, 3 in, 2 + 3 - 1 = 4 both
        # self-loops of the real nodes (the diagonal is empty so far)
        adj.diagonal(dim1=1, dim2=2).copy_(node_type > 0)

        last = (item_seq_len - 1).clamp(min=0, max=seq_len - 1)
        last_node = slot_node[torch.arange(batch_size, device=device), last, 0]
        return MSGraph(adj, node_type, node_id, tuple(blocks), slot_node, last_node)


# --------------------------------------------------------------------------- the layer


def block_sizes(blocks):
    return [n for _, n in blocks]


class AttentionMasks(NamedTuple):
    """Where the two attentions may look, computed once per batch from the graph.

    Attributes:
        blocks: the type blocks ``(start, size)`` of the graph.
        homo_rel: per block, ``[B, n, n]`` long relation ids inside the block (0 none,
            1 self, 2 out, 3 in, 4 both): the homogeneous neighbours.  Homogeneous edges
            never leave a block, so the homogeneous attention is computed block by block.
        hetero: ``[B, N, N]`` bool, the heterogeneous neighbours (self-loop or a relation
            id >= 5), or None with ``groups``.  Computed densely: on CPU one ``[N, N]``
            product is faster than one per block skipping the same-type pairs.
        groups: ``item`` modality nodes (an item-aligned graph) only: ``[B, G, 1, 1 + M]``
            bool, whether item node ``j`` and its node of each modality exist.  Every
            modality node then belongs to one item, and the heterogeneous neighbours of a
            node are exactly the nodes of its item (itself included), found at the same
            column ``j`` of every block: the heterogeneous attention runs over ``1 + M``
            nodes per item instead of ``N`` (``[B, G, 1 + M, D]`` "grouped" tensors).
    """

    blocks: Tuple[Tuple[int, int], ...]
    homo_rel: List[torch.Tensor]
    hetero: Optional[torch.Tensor]
    groups: Optional[torch.Tensor]

    @classmethod
    def of(cls, graph, item_groups=False):
        adj = graph.adj
        homo_rel = [adj[:, s:s + n, s:s + n].long() for s, n in graph.blocks]
        if not item_groups:
            return cls(graph.blocks, homo_rel, (adj == SELF) | (adj >= FIRST_HETERO), None)
        batch_size, n_nodes = graph.node_type.shape
        n_types = len(graph.blocks)
        groups = graph.node_mask.view(batch_size, n_types, n_nodes // n_types).transpose(1, 2)
        return cls(graph.blocks, homo_rel, None, groups.unsqueeze(2))

    # ---- the heterogeneous attention's view of node tensors ---------------------------------
    @property
    def hetero_neighbours(self):
        return self.hetero if self.groups is None else self.groups

    def grouped(self, x):
        """``[B, N, D]`` as the heterogeneous attention sees it (``[B, G, 1 + M, D]``)."""
        if self.groups is None:
            return x
        batch_size, n_groups, _, n_types = self.groups.shape
        return x.view(batch_size, n_types, n_groups, x.size(-1)).transpose(1, 2)

    def ungrouped(self, x):
        return x if self.groups is None else x.transpose(1, 2).reshape(x.size(0), -1, x.size(-1))

    # ---- the rows of the readout nodes (item nodes: column `rows` of the first block) -------
    @staticmethod
    def row(x, rows):
        """``x[b, rows[b]]`` keeping dim 1: ``[B, 1, ...]``."""
        index = rows.view(-1, 1, *([1] * (x.dim() - 2))).expand(-1, 1, *x.shape[2:])
        return x.gather(1, index)

    def hetero_row(self, x, rows):
        """The heterogeneous neighbourhood of the readout nodes in ``x``: the row ``[B, 1, N]``
        of a ``[B, N, N]`` tensor, or the group ``[B, 1 + M, ...]`` of a grouped tensor."""
        return self.row(x, rows) if self.groups is None else self.row(x, rows).squeeze(1)

    def hetero_context(self, x, rows):
        """Keys / values the readout nodes attend over: all nodes, or their group."""
        return x if self.groups is None else self.hetero_row(self.grouped(x), rows)


class MMSRLayer(nn.Module):
    """One propagation step: dual attention, both orders, update gate (module docstring).

    The homogeneous attention is computed inside each type block (its edges never leave
    one), the heterogeneous one over all ``N x N`` pairs, masked, or within each item's group
    of nodes with ``item`` modality nodes (see :class:`AttentionMasks`).

    ``forward(h, masks)`` returns every node's new state; ``forward(h, masks, readout)`` only
    those of the readout nodes (one item node per row): the first attention step still runs
    over all nodes (the readout node's neighbours need it), the second step, the gate and
    the output only for those rows.  Nothing else reads the last layer's other node states.

    Args:
        hidden_size (int): D.
        n_types (int): number of node types (1 + number of modalities).
        leaky_alpha (float): negative slope of the LeakyReLU on attention scores.
        attn_dropout (float): dropout on the attention weights.
        legacy_qkv (bool): K = V = Q, as the authors' code.
        legacy_order (bool): the homogeneous-then-heterogeneous branch uses the
            heterogeneous weights of the layer input, as the authors' code.
    """

    def __init__(self, hidden_size, n_types, leaky_alpha=0.1, attn_dropout=0.2,
                 legacy_qkv=False, legacy_order=False):
        super().__init__()
        self.hidden_size = hidden_size
        self.legacy_qkv = legacy_qkv
        self.legacy_order = legacy_order
        # a_r for r = self, out, in, both (homogeneous relations)
        self.relation_attention = nn.Parameter(torch.empty(4, hidden_size))
        self.W_Q = nn.Parameter(torch.empty(n_types, hidden_size, hidden_size))
        if not legacy_qkv:
            self.W_K = nn.Parameter(torch.empty(n_types, hidden_size, hidden_size))
            self.W_V = nn.Parameter(torch.empty(n_types, hidden_size, hidden_size))
        self.gate = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                  nn.Linear(hidden_size, 1))
        self.leaky_alpha = leaky_alpha
        self.attn_dropout = nn.Dropout(attn_dropout)

    # ---- projections ------------------------------------------------------------------------
    def by_type(self, h, blocks, weights):
        """``h_v W[type(v)]`` for each ``W`` in ``weights``, one matrix product per block."""
        # (split, not slices: the backward of a slice fills a whole [B, N, D] with zeros)
        per_block = [h_block @ torch.cat([w[tau] for w in weights], dim=1)
                     for tau, h_block in enumerate(h.split(block_sizes(blocks), dim=1))]
        return torch.cat(per_block, dim=1).split(self.hidden_size, dim=-1)

    def query_key_value(self, h, blocks):
        if self.legacy_qkv:
            (Q,) = self.by_type(h, blocks, [self.W_Q])
            return Q, Q, Q
        return self.by_type(h, blocks, [self.W_Q, self.W_K, self.W_V])

    def key(self, h, blocks):
        return self.by_type(h, blocks, [self.W_Q if self.legacy_qkv else self.W_K])[0]

    # ---- the two attentions -----------------------------------------------------------------
    def homo_weights(self, x_rows, x_block, rel):
        """Content attention ``α``: rows ``x_rows [B, r, D]`` over the nodes ``x_block
        [B, n, D]`` of their block, relations ``rel [B, r, n]`` -> ``[B, r, n]``."""
        batch_size, n_rows, n = rel.shape
        a = self.relation_attention
        # a_r^T (x_v ⊙ x_u) for r = out, in, both: one product [B, r * 3, D] x [B, D, n]
        scaled = (x_rows.unsqueeze(2) * a[1:]).reshape(batch_size, n_rows * 3, x_rows.size(-1))
        pair = (scaled @ x_block.transpose(1, 2)).view(batch_size, n_rows, 3, n)
        e = pair.gather(2, (rel - OUT).clamp(0, 2).unsqueeze(2)).squeeze(2)
        # self-loop (only at the row's own node): a_1^T (x_v ⊙ x_v)
        e = torch.where(rel == SELF, ((x_rows * x_rows) @ a[0]).unsqueeze(-1), e)
        e = F.leaky_relu(e, self.leaky_alpha)
        e = e.masked_fill(rel == 0, no_edge_score(e.dtype))
        return self.attn_dropout(torch.softmax(e, dim=-1))

    def homo_attention(self, x, values, masks):
        """``α(x) V`` for every node, block by block: ``[B, N, D]``."""
        sizes = block_sizes(masks.blocks)
        return torch.cat([self.homo_weights(xb, xb, rel) @ vb for xb, vb, rel in
                          zip(x.split(sizes, dim=1), values.split(sizes, dim=1), masks.homo_rel)], dim=1)

    def hetero_probs(self, q, k, neighbour):
        """``softmax_u LeakyReLU(q_v . k_u)`` over the heterogeneous neighbours ``u``."""
        scores = F.leaky_relu(q @ k.transpose(-1, -2), self.leaky_alpha)
        return torch.softmax(scores.masked_fill(~neighbour, no_edge_score(scores.dtype)), dim=-1)

    def update_gate(self, out_ab, out_ba):
        """``g = softmax(f(o_AB), f(o_BA))`` per node (sums to 1) and the mixed state."""
        gate = torch.softmax(torch.cat([self.gate(out_ab), self.gate(out_ba)], dim=-1), dim=-1)
        return gate[..., :1] * out_ab + gate[..., 1:] * out_ba, gate

    def forward(self, h, masks, readout=None):
        """New states ``[B, N, D]`` and gate ``[B, N, 2]`` of every node, or with ``readout``
        (``[B]`` item node indices) those of the readout nodes, ``[B, 1, D]`` and ``[B, 1, 2]``."""
        Q, K, V = self.query_key_value(h, masks.blocks)
        Vg = masks.grouped(V)
        beta = self.hetero_probs(masks.grouped(Q), masks.grouped(K), masks.hetero_neighbours)
        hete = masks.ungrouped(self.attn_dropout(beta) @ Vg)
        homo = None if self.legacy_order else self.homo_attention(V, V, masks)
        if readout is None:
            # heterogeneous then homogeneous: content weights computed on `hete`, values V
            out_ba = self.homo_attention(hete, V, masks)
            # homogeneous then heterogeneous
            if self.legacy_order:  # authors: the weights of the layer input, a new dropout mask
                out_ab = masks.ungrouped(self.attn_dropout(beta) @ Vg)
            else:  # weights from the homogeneous output, values V
                q2, k2 = masks.grouped(self.by_type(homo, masks.blocks, [self.W_Q])[0]), \
                    masks.grouped(self.key(homo, masks.blocks))
                beta2 = self.hetero_probs(q2, k2, masks.hetero_neighbours)
                out_ab = masks.ungrouped(self.attn_dropout(beta2) @ Vg)
            return self.update_gate(out_ab, out_ba)

        # the same, for the readout rows only (item nodes: the first block, type 0)
        row, sizes = masks.row, block_sizes(masks.blocks)
        alpha = self.homo_weights(row(hete, readout), hete.split(sizes, dim=1)[0],
                                  row(masks.homo_rel[0], readout))
        out_ba = alpha @ V.split(sizes, dim=1)[0]
        values = masks.hetero_context(V, readout)
        if self.legacy_order:
            beta_row = masks.hetero_row(beta, readout)[:, :1]  # the item's row of its group
            out_ab = self.attn_dropout(beta_row) @ values
        else:
            q2 = row(homo, readout) @ self.W_Q[0]
            k2 = masks.hetero_context(self.key(homo, masks.blocks), readout)
            neighbour = masks.hetero_row(masks.hetero_neighbours, readout)
            out_ab = self.attn_dropout(self.hetero_probs(q2, k2, neighbour)) @ values
        return self.update_gate(out_ab, out_ba)


# --------------------------------------------------------------------------- the model


class MMSR(SequentialRecommender):
    r"""MMSR (Hu et al., CIKM 2023) on RecBole: see the module docstring for the math."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check_known_options(config, "mmsr_", KNOWN_OPTIONS, "MMSR")
        modalities = list(config["modalities"] or [])
        tables = getattr(dataset, "modality_features", None) or {}
        if not modalities or any(f not in tables for f in modalities):
            raise ValueError("MMSR needs item modality vectors: set the option 'modalities' to "
                             "the float_seq fields of the .item file, e.g. "
                             "modalities: [img_emb, txt_emb]")
        self.modalities = modalities
        self.embedding_size = _int_option(config, "embedding_size")
        self.n_layers = _int_option(config, "n_layers")
        self.hidden_dropout_prob = _float_option(config, "hidden_dropout_prob")
        self.attn_dropout_prob = _float_option(config, "attn_dropout_prob")
        self.modality_node = _choice_option(config, "mmsr_modality_node", MODALITY_NODES, "item")
        self.n_clusters = _int_option(config, "mmsr_n_clusters")
        self.link_k = _int_option(config, "mmsr_link_k")
        self.kmeans_iters = _int_option(config, "mmsr_kmeans_iters")
        self.code_init = _choice_option(config, "mmsr_code_init", CODE_INITS, "centroid")
        self.loss_type = config["loss_type"]
        D = self.embedding_size

        # ---- modality nodes: codes (k-means) or one node per item --------------------------
        links, n_nodes, centroid_init = [], [], []
        for m, field in enumerate(modalities):
            features = dataset.modality_features[field].float()
            missing = dataset.modality_missing[field].bool().clone()
            missing[0] = True  # padding item
            present = (~missing).nonzero().squeeze(1)
            if present.numel() == 0:
                raise ValueError(f"modality '{field}' has no vector for any item")
            if self.modality_node == "cluster":
                x = features[present]
                centroids = kmeans(x, self.n_clusters, self.kmeans_iters,
                                   seed=int(config["seed"]) + m)
                k = min(self.link_k, len(centroids))
                link = torch.full((self.n_items, k), -1, dtype=torch.long)
                link[present] = nearest_centroids(x, centroids, k)
                if x.size(1) != D:
                    centroids = principal_projection(x, D)(centroids)
                centroid_init.append(min_max_scale(centroids, 1.0 / np.sqrt(D)).float())
                n_nodes.append(len(centroids))
            else:
                link = torch.where(missing, -1, torch.arange(self.n_items)).unsqueeze(1)
                n_nodes.append(self.n_items)
                self.register_buffer(f"features_{m}", features.clone(), persistent=False)
            links.append(link)
        self.n_modality_nodes = n_nodes
        self.graph_builder = MSGraphBuilder(
            links, n_nodes, self.n_items,
            legacy_repeat_edges=_bool_option(config, "mmsr_legacy_repeat_edges"),
            item_aligned=self.modality_node == "item")

        # ---- layers ------------------------------------------------------------------------
        self.item_embedding = nn.Embedding(self.n_items, D, padding_idx=0)
        if self.modality_node == "cluster":
            self.code_embeddings = nn.ModuleList(nn.Embedding(n, D) for n in n_nodes)
        else:
            self.modality_projections = nn.ModuleList(
                nn.Linear(dataset.modality_features[f].size(1), D) for f in modalities)
        self.type_embedding = nn.Embedding(len(modalities) + 2, D, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, D)
        self.input_projection = nn.Linear(3 * D, D, bias=False)  # W_in
        self.layer = MMSRLayer(
            D, n_types=len(modalities) + 1,
            leaky_alpha=_float_option(config, "mmsr_leaky_alpha"),
            attn_dropout=self.attn_dropout_prob,
            legacy_qkv=_bool_option(config, "mmsr_legacy_qkv"),
            legacy_order=_bool_option(config, "mmsr_legacy_order"),
        )
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError("Make sure 'loss_type' in ['BPR', 'CE']!")

        # ---- initialisation (authors: every parameter ~ U(-1/sqrt(D), 1/sqrt(D))) ----------
        bound = 1.0 / np.sqrt(D)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)
        if self.modality_node == "cluster" and self.code_init == "centroid":
            with torch.no_grad():
                for table, init in zip(self.code_embeddings, centroid_init):
                    table.weight.copy_(init)
        self.mmsr_gate_weights = None
        # every buffer (item vectors, code links, relation tables) is built from the data and
        # the config alone, the same on each rank: DistributedDataParallel must not broadcast
        # them from rank 0 on every batch (the item vectors alone can be hundreds of MB)
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]

    # ---- graph and node states ---------------------------------------------------------------
    def node_vectors(self, tau, ids):
        """``E_v`` of nodes of type block ``tau`` (0 items, then modalities) with ids ``ids``."""
        if tau == 0:
            return self.item_embedding(ids)
        if self.modality_node == "cluster":
            return self.code_embeddings[tau - 1](ids)
        return self.modality_projections[tau - 1](getattr(self, f"features_{tau - 1}")[ids])

    def node_inputs(self, graph):
        r"""``h^0 = W_in [E_v ; T_type ; mean_t P_t]``, ``[B, N, D]``, zeros for padding nodes.

        Computed as ``W_E E_v + W_T T_type + mean_t (W_P P_t)`` (``W_in = [W_E W_T W_P]``):
        ``W_E E`` once per distinct node id of the batch, ``W_T T`` and ``W_P P`` on their
        small tables, so no ``[B, N, 3D]`` product is formed.
        """
        D = self.embedding_size
        W_E, W_T, W_P = self.input_projection.weight.split(D, dim=1)
        parts = []
        for tau, (s, n) in enumerate(graph.blocks):
            distinct, inverse = torch.unique(graph.node_id[:, s:s + n].clamp(min=0),
                                             return_inverse=True)
            parts.append(F.linear(self.node_vectors(tau, distinct), W_E)[inverse])
        h = torch.cat(parts, dim=1)
        h = h + F.linear(self.type_embedding.weight, W_T)[graph.node_type]
        h = h + self.mean_positions(graph, F.linear(self.position_embedding.weight, W_P))
        return h * graph.node_mask.unsqueeze(-1)

    @staticmethod
    def mean_positions(graph, table):
        """``mean_{t in pos(v)} table[t]`` for every node ``[B, N, D]`` (0 for padding)."""
        batch_size, seq_len, _ = graph.slot_node.shape
        n_nodes = graph.node_type.size(1)
        device = table.device
        # occurs[b, v, t] = 1 where node v holds a slot of position t
        nowhere = batch_size * n_nodes * seq_len
        rows = torch.arange(batch_size, device=device).view(-1, 1, 1)
        positions = torch.arange(seq_len, device=device).view(1, -1, 1)
        flat = torch.where(graph.slot_node >= 0,
                           (rows * n_nodes + graph.slot_node) * seq_len + positions, nowhere)
        occurs = torch.zeros(nowhere + 1, device=device, dtype=table.dtype)
        occurs.index_put_((flat.reshape(-1),), torch.ones((), device=device, dtype=table.dtype))
        occurs = occurs[:nowhere].view(batch_size, n_nodes, seq_len)
        return (occurs @ table[:seq_len]) / occurs.sum(-1, keepdim=True).clamp(min=1)

    def node_states(self, item_seq, item_seq_len):
        """Every node's final state ``[B, N, D]`` and update gate ``[B, N, 2]`` (order AB,
        BA), with the graph: for reports (which fusion order each node picked) and tests."""
        graph = self.graph_builder(item_seq, item_seq_len)
        masks = AttentionMasks.of(graph, item_groups=self.modality_node == "item")
        node_mask = graph.node_mask.unsqueeze(-1)
        h = self.node_inputs(graph)
        gate = None
        for _ in range(self.n_layers):  # the same layer each time, as the authors
            h, gate = self.layer(h, masks)
            h = self.dropout(h) * node_mask
        return h, gate, graph

    def forward(self, item_seq, item_seq_len):
        """The user vector: the final state of the last item's node ``[B, D]``.

        Same as ``node_states(...)[0]`` at ``graph.last_node``; the last layer computes only
        that node's state.  ``mmsr_gate_weights`` then holds its gate ``[B, 2]``.
        """
        graph = self.graph_builder(item_seq, item_seq_len)
        masks = AttentionMasks.of(graph, item_groups=self.modality_node == "item")
        node_mask = graph.node_mask.unsqueeze(-1)
        h = self.node_inputs(graph)
        for _ in range(self.n_layers - 1):  # the same layer each time, as the authors
            h, _ = self.layer(h, masks)
            h = self.dropout(h) * node_mask
        out, gate = self.layer(h, masks, readout=graph.last_node)
        self.mmsr_gate_weights = gate.squeeze(1).detach()
        return self.dropout(out.squeeze(1))  # [B, D]

    # ---- RecBole's entry points --------------------------------------------------------------
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = torch.sum(seq_output * self.item_embedding(pos_items), dim=-1)
            neg_score = torch.sum(seq_output * self.item_embedding(neg_items), dim=-1)
            return self.loss_fct(pos_score, neg_score)
        logits = torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
        return self.loss_fct(logits, pos_items)

    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        test_item = interaction[self.ITEM_ID]
        seq_output = self.forward(item_seq, item_seq_len)
        return torch.mul(seq_output, self.item_embedding(test_item)).sum(dim=1)  # [B]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        return torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))  # [B, n_items]
