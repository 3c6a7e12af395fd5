r"""PRISM_Caser: RecBole's Caser (convolutional sequence embedding) with PRISM plugged in.

Caser's ``forward(user, item_seq)`` takes the user first; the plug-in finds the item sequence
as the first 2-D integer argument.  The convolutions read ``E[s_t] + Σ_m x^m_t + z``.
"""
from recbole.model.sequential_recommender.caser import Caser

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_Caser(PRISMPlugin, Caser):
    backbone_name = "Caser"
