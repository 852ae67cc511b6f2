"""Input handling and counting helpers shared by the functional metrics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

NAN = math.nan


def _pair(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten both tensors (detached, target moved to ``preds``' device); sizes must match."""
    p = preds.detach().reshape(-1)
    t = target.detach().reshape(-1).to(p.device)
    if p.numel() != t.numel():
        raise ValueError(
            f"preds and target hold different numbers of elements: {tuple(preds.shape)} "
            f"vs {tuple(target.shape)}"
        )
    return p, t


def _as_ids(x: Tensor, what: str) -> Tensor:
    if x.is_floating_point() and x.numel() and not bool((x == x.round()).all()):
        raise ValueError(f"{what} must hold integer class ids, got non-integral values")
    return x.long()


def _class_ids(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    p, t = _pair(preds, target)
    return _as_ids(p, "preds"), _as_ids(t, "target")


def _confusion(preds: Tensor, target: Tensor) -> Tensor:
    """Confusion matrix ``[K, K]`` over the ``K`` classes that occur in preds or target.

    Rows are targets, columns predictions, classes in increasing id order. Ids are
    compacted first, so large or sparse class ids cost no memory.
    """
    n = target.numel()
    classes, inverse = torch.unique(torch.cat([target, preds]), return_inverse=True)
    k = classes.numel()
    counts = torch.bincount(inverse[:n] * k + inverse[n:], minlength=k * k)
    return counts.reshape(k, k).double()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0.0 where ``den == 0``."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def _f1_from_counts(tp: Tensor, n_pred: Tensor, n_true: Tensor) -> Tensor:
    """F1 = 2 TP / (#predicted + #true), 0.0 where both counts are 0."""
    return _safe_div(2 * tp, n_pred + n_true)
