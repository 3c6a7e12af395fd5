r"""FDSA_MM: RecBole's FDSA fed with the dense modality vectors that PRISM uses.

RecBole's :class:`~recbole.model.sequential_recommender.fdsa.FDSA` unchanged except for its
``feature_embed_layer``, which is the
:class:`~prism_recbole.model.sequential_recommender.sasrecf_mm.DenseFeatureSeqEmbLayer` of
SASRecF_MM: each item of the sequence -> its vector of every selected modality -> one
``Linear(dim_m, H)`` per modality -> ``[B, L, M, H]``.  FDSA's own forward then weighs the
``M`` modality embeddings with its ``VanillaAttention`` (weight 1 for one modality), adds
positions and runs its feature Transformer beside the item Transformer.  RecBole's own
``FeatureSeqEmbLayer`` reduces a ``float_seq`` vector to one scalar (issues #1983, #2196) and
is pickled, with the whole dataset, into every checkpoint; this layer is neither.

Options: ``modalities`` (required), ``selected_features`` (a subset of them; default all),
``pooling_mode`` (``sum`` or ``mean``, see SASRecF_MM), and RecBole's FDSA options.
"""
from recbole.model.sequential_recommender.fdsa import FDSA

from prism_recbole.model.sequential_recommender.sasrecf_mm import (
    dense_feature_options,
    install_dense_features,
    without_selected_features,
)


class FDSA_MM(FDSA):
    r"""FDSA on the dense modality vectors (see the module docstring)."""

    recbole_defaults = "FDSA"  # prism_recbole.config loads RecBole's FDSA.yaml first

    def __init__(self, config, dataset):
        fields, pooling = dense_feature_options(type(self).__name__, config, dataset)
        super().__init__(without_selected_features(config), dataset)
        install_dense_features(self, config, dataset, fields, pooling)
        self.num_feature_field = len(fields)
