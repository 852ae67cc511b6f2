"""Contrastive (InfoNCE-style) losses as pure functions.

Kept general on purpose: ``anchor`` / ``positive`` are any paired embeddings, row ``i`` of
``positive`` is the positive of row ``i`` of ``anchor`` and the other rows are its negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_logits(anchor: Tensor, positive: Tensor, temperature: float = 0.1) -> Tensor:
    """Scaled cosine similarities ``cos(anchor_i, positive_k) / temperature``.

    Args:
        anchor: ``[N, D]`` embeddings.
        positive: ``[K, D]`` embeddings.
        temperature: Softmax temperature ``tau > 0``.

    Returns:
        ``[N, K]`` logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(anchor, dim=-1, eps=1e-8)
    p = F.normalize(positive, dim=-1, eps=1e-8)
    return a @ p.t() / temperature


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float = 0.1,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """InfoNCE with in-batch negatives and cosine similarity.

    ``-log exp(s_ii / tau) / sum_k exp(s_ik / tau)`` with ``s_ik = cos(anchor_i, positive_k)``
    (EBMC Eq. 2 with ``positive`` = the aggregated shared representation).

    Args:
        anchor: ``[N, D]``.
        positive: ``[N, D]``; row ``i`` is the positive of anchor ``i``.
        temperature: Temperature ``tau``.
        mask: Optional ``[N]`` bool: rows that take part (as anchors and as negatives).
        reduction: ``mean``, ``sum`` or ``none`` (``[N]``, zero for masked-out rows).

    Returns:
        The loss (scalar, or ``[N]`` for ``reduction="none"``).

    Example:
        >>> import torch
        >>> x = torch.eye(3)
        >>> round(float(info_nce(x, x, temperature=1.0)), 4)  # -log(e / (e + 2))
        0.5514
    """
    if anchor.shape != positive.shape or anchor.dim() != 2:
        raise ValueError(
            f"anchor and positive must both be [N, D], got {tuple(anchor.shape)} and "
            f"{tuple(positive.shape)}"
        )
    logits = cosine_logits(anchor, positive, temperature)
    n = anchor.shape[0]
    if mask is not None:
        keep = mask.to(torch.bool)
        # Excluded rows are neither anchors nor negatives.
        logits = logits.masked_fill(~keep[None, :], float("-inf"))
    target = torch.arange(n, device=anchor.device)
    per = F.cross_entropy(logits, target, reduction="none")
    if mask is not None:
        per = torch.where(keep, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    count = per.new_tensor(float(n)) if mask is None else keep.sum().to(per.dtype)
    return per.sum() / count.clamp_min(1.0)
