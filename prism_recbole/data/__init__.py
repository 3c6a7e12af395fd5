from prism_recbole.data.dataset import (
    AtomicFileError,
    ModalityFeaturesMixin,
    PrismDataset,
    PrismSequentialDataset,
)
from prism_recbole.data.utils import create_dataset

__all__ = [
    "AtomicFileError",
    "ModalityFeaturesMixin",
    "PrismDataset",
    "PrismSequentialDataset",
    "create_dataset",
]
