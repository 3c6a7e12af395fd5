r"""PRISM_STAMP: RecBole's STAMP (short-term attention/memory priority) with PRISM plugged in.

STAMP reads the sequence's embeddings, their mean and the last item's embedding; all three see
``E[s_t] + Σ_m x^m_t + z``.
"""
from recbole.model.sequential_recommender.stamp import STAMP

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_STAMP(PRISMPlugin, STAMP):
    backbone_name = "STAMP"
