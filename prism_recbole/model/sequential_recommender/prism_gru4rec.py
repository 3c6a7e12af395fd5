r"""PRISM_GRU4Rec: RecBole's GRU4Rec with the PRISM module plugged in.

GRU4Rec has no position embedding: ``E[s_t] + Σ_m x^m_t + z`` is formed before the embedding
dropout and fed to the GRU.  Defaults: RecBole's ``GRU4Rec.yaml``, then PRISM's.
"""
from recbole.model.sequential_recommender.gru4rec import GRU4Rec

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_GRU4Rec(PRISMPlugin, GRU4Rec):
    backbone_name = "GRU4Rec"
