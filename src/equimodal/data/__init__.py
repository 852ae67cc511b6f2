"""Multimodal data: in-memory tensor splits, batching, validation, corruptions."""

from equimodal.data.dataset import (
    BatchLoader,
    DataError,
    MultimodalData,
    MultimodalDataset,
    MultimodalSplit,
    make_split,
)

__all__ = [
    "BatchLoader",
    "DataError",
    "MultimodalData",
    "MultimodalDataset",
    "MultimodalSplit",
    "make_split",
]
