r"""Decoupled side-information attention (DIF-SR, Xie et al., SIGIR 2022) for PRISM_SASRec.

``prism_attention: decoupled`` (extension; default ``input``, the authors' design): what PRISM
adds at each position, ``a_t = Σ_m x^m_t + z`` (``z_t`` in the all-positions training), no
longer joins the input embedding.  The transformer's input is SASRec's ``E[s_t] + P_t``
alone, and in every layer ``a`` enters the attention scores only, as one more stream:

    scores_{tj} = ( q^h_t · k^h_j  +  q^a_t · k^a_j ) / sqrt(d_head)       (per head)
    q^h = W_Q h,  k^h = W_K h           (SASRec's own projections of the hidden states h)
    q^a = W^a_Q LN(a),  k^a = W^a_K LN(a)   (this layer's projections of the side stream)
    output = SASRec's attention output with these scores; values come from h only

DIF-SR's argument: summing side information into the input embedding bounds the rank of the
attention matrix (one D-wide vector has to carry ID, position and features), while separate
score streams do not, and the features cannot overwrite the ID signal in the values.  Here the
position stays in the hidden stream (DIF-SR gives it its own stream as well), and the side
stream is PRISM's whole addition, so the experts, the gate and the auxiliary losses are
unchanged.  ``input+decoupled`` keeps the input sum as well and adds the score stream on
top (DIF-SR without the decoupling of the values).  The mask is SASRec's (causal plus padding), and ``a_t`` uses items up to ``t``
only in the all-positions training, so no key carries a later item.
"""
import torch
import torch.nn as nn
from recbole.model.layers import MultiHeadAttention

ATTENTION_MODES = ("input", "decoupled", "input+decoupled")


class SideStream:
    """The side stream of the current forward call ([B, L, D] or None), shared by the layers."""

    def __init__(self):
        self.value = None


class DecoupledMultiHeadAttention(MultiHeadAttention):
    """RecBole's ``MultiHeadAttention`` (the same parameters, under the same names) plus one
    side stream's query and key projections; without a side stream it is exactly RecBole's."""

    def __init__(self, base: MultiHeadAttention, side: SideStream, layer_norm_eps: float):
        hidden_size = base.query.in_features
        super().__init__(base.num_attention_heads, hidden_size, base.out_dropout.p,
                         base.attn_dropout.p, layer_norm_eps)
        self.load_state_dict(base.state_dict())
        self.side = side
        self.side_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.side_query = nn.Linear(hidden_size, self.all_head_size)
        self.side_key = nn.Linear(hidden_size, self.all_head_size)

    def _heads(self, x):  # [B, L, D] -> [B, heads, L, d_head]
        return self.transpose_for_scores(x).permute(0, 2, 1, 3)

    def forward(self, input_tensor, attention_mask):
        side = self.side.value
        if side is None:
            return super().forward(input_tensor, attention_mask)
        # q^a · k^a / sqrt(d_head) enters RecBole's additive mask, so RecBole's own forward adds
        # it to q^h · k^h / sqrt(d_head): the same scores, with SASRec's softmax, dropout,
        # values and output layer untouched.
        side = self.side_norm(side)
        side_scores = torch.matmul(self._heads(self.side_query(side)),
                                   self._heads(self.side_key(side)).transpose(-1, -2))
        return super().forward(input_tensor, attention_mask + side_scores / self.sqrt_attention_head_size)


def decouple_attention(encoder, layer_norm_eps, init_weights):
    """Replace every layer's attention of a RecBole ``TransformerEncoder`` by the decoupled one
    (its own parameters kept); ``init_weights`` initialises the new side projections the way
    the backbone initialises its own.  Returns the :class:`SideStream` the layers read."""
    side = SideStream()
    for layer in encoder.layer:
        attention = DecoupledMultiHeadAttention(layer.multi_head_attention, side, layer_norm_eps)
        for module in (attention.side_norm, attention.side_query, attention.side_key):
            module.apply(init_weights)
        layer.multi_head_attention = attention
    return side
