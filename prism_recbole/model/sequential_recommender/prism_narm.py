r"""PRISM_NARM: RecBole's NARM (GRU encoder with item-level attention) with PRISM plugged in.

The sum ``E[s_t] + Σ_m x^m_t + z`` is formed before NARM's embedding dropout.
"""
from recbole.model.sequential_recommender.narm import NARM

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_NARM(PRISMPlugin, NARM):
    backbone_name = "NARM"
