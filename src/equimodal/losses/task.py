"""Supervised task losses for the three task kinds."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from equimodal.types import TaskKind


def task_loss(
    logits: Tensor,
    target: Tensor,
    kind: TaskKind,
    regression: str = "l1",
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy (classification), L1/MSE (regression) or BCE-with-logits (multilabel).

    Args:
        logits: ``[B, C]`` (regression ``[B, 1]`` or ``[B]``).
        target: ``[B]`` long, ``[B]`` float or ``[B, C]`` float.
        kind: Task kind.
        regression: ``l1`` (the MSA convention) or ``mse``.
        reduction: ``mean``, ``sum`` or ``none`` (per-sample losses ``[B]``).

    Example:
        >>> import torch
        >>> float(task_loss(torch.zeros(2, 2), torch.tensor([0, 1]), "classification"))
        0.6931...
    """
    if kind == "classification":
        return F.cross_entropy(logits, target, reduction=reduction)
    if kind == "regression":
        pred = logits.reshape(-1)
        fn = F.l1_loss if regression == "l1" else F.mse_loss
        return fn(pred, target.to(pred.dtype), reduction=reduction)
    per = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    if reduction == "none":
        return per.mean(1)
    return per.mean() if reduction == "mean" else per.sum()
