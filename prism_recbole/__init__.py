"""prism-recbole: PRISM and multimodal sequential recommenders on RecBole."""
from prism_recbole import compat  # noqa: F401  (numpy shims before RecBole runs)

__version__ = "0.1.0"
