r"""PRISM_SASRec: RecBole's SASRec with the PRISM module plugged in.

Input embedding at position t: ``E[s_t] + P_t + Σ_m x^m_t + z`` (ID + position + each item's
projected modality vectors + the user's fused vector), then SASRec's LayerNorm, dropout and
transformer.  Loss: SASRec's (CE over all items by default, BPR works too) + PRISM's
auxiliary loss.  Candidates are scored with the ID embeddings, as in the authors' code.
``prism_attention: decoupled`` moves ``Σ_m x^m_t + z`` from the input into every layer's
attention scores (DIF-SR; :mod:`prism_recbole.model.decoupled_attention`).
Defaults: RecBole's ``SASRec.yaml``, then ``properties/model/PRISM_SASRec.yaml``.
"""
from recbole.model.sequential_recommender.sasrec import SASRec

from prism_recbole.model.plugin import PRISMPlugin


class PRISM_SASRec(PRISMPlugin, SASRec):
    backbone_name = "SASRec"
