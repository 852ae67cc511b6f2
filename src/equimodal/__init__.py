"""equimodal: balanced multimodal learning.

Train, compare and diagnose multimodal classifiers and regressors with the
methods that fight modality imbalance ("modality laziness").

Example:
    >>> import equimodal as em
    >>> data = em.load_dataset("synthetic", n_train=64, n_valid=32, n_test=32)
    >>> sorted(data.info.modalities)
    ['a', 'b']
"""

from equimodal.registry import (
    DATASETS,
    METHODS,
    create_method,
    list_datasets,
    list_methods,
    load_dataset,
    register_dataset,
    register_method,
)
from equimodal.types import Batch, ModelOutput

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "METHODS",
    "Batch",
    "ModelOutput",
    "create_method",
    "list_datasets",
    "list_methods",
    "load_dataset",
    "register_dataset",
    "register_method",
    "__version__",
]
