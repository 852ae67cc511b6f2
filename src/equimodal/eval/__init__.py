"""Evaluation protocols shared by every method (robustness to missing and corrupted inputs)."""

from equimodal.eval.robustness import (
    DEFAULT_LEVELS,
    DEFAULT_RATES,
    add_noise,
    drop_frames,
    frame_drop_curve,
    missing_modality_table,
    modality_subsets,
    noise_curve,
)

__all__ = [
    "DEFAULT_LEVELS",
    "DEFAULT_RATES",
    "add_noise",
    "drop_frames",
    "frame_drop_curve",
    "missing_modality_table",
    "modality_subsets",
    "noise_curve",
]
