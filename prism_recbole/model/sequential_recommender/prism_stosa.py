r"""PRISM_STOSA: STOSA (stochastic self-attention) with the PRISM module plugged in, as the
PRISM authors run it (their default and only runnable backbone).

STOSA embeds the input sequence twice, a mean stream ``E^μ[s_t]`` and a covariance stream
``E^Σ[s_t]``.  PRISM's addition goes into both (``prism_streams``): at position t the mean
stream gets ``E^μ[s_t] + Σ_m x^{m,μ}_t + z^μ`` and the covariance stream
``E^Σ[s_t] + Σ_m x^{m,Σ}_t + z^Σ``, before STOSA's positions, LayerNorm, dropout and
ELU (+1 for the covariance).  The two streams share the experts, the gate and the feature
tables; each has its own projections W_m, b_m (the authors' ``fc_mean_*`` / ``fc_cov_*``);
the gate of each stream reads that stream's ID summary.  Loss: STOSA's Wasserstein ranking
loss + the mean of the two streams' auxiliary losses (the authors' ``(L_mean + L_cov) / 2``).
Candidates are scored with STOSA's own (ID) distributions.

Where this differs from the authors' code: their four feature tables (mean and covariance
copies of each modality) are one set of tables here, projected twice; their unused interest
encoder is not built; STOSA's bugs are fixed by default (``stosa_legacy_*`` options bring them
back).  Defaults: ``properties/model/STOSA.yaml``, PRISM's, then ``PRISM_STOSA.yaml``.
"""
from prism_recbole.model.plugin import PRISMPlugin
from prism_recbole.model.sequential_recommender.stosa import STOSA


class PRISM_STOSA(PRISMPlugin, STOSA):
    backbone_name = "STOSA"
    prism_streams = ("item_mean_embeddings", "item_cov_embeddings")
