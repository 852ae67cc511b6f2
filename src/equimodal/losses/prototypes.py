"""Class prototypes and prototype-based losses (PMR, Fan et al. CVPR 2023).

A prototype ``c_k^m`` is the mean feature of class ``k`` for modality ``m`` (Eq. 4); the
prototype classifier scores ``-||phi^m(x) - c_k^m||`` (Euclidean distance, Eq. 5), its
cross-entropy is the prototypical cross-entropy (PCE, Eq. 6) and its entropy the prototypical
entropy regularisation (PER). Pure functions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_means(features: Tensor, target: Tensor, n_classes: int,
                previous: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-class mean features.

    Args:
        features: ``[N, H]`` features.
        target: ``[N]`` class indices.
        n_classes: Number of classes K.
        previous: ``[K, H]`` prototypes kept for classes with no sample (zeros if ``None``).

    Returns:
        ``([K, H]`` means, ``[K]`` counts).
    """
    feats = features.float()
    sums = torch.zeros(n_classes, feats.shape[1], device=feats.device, dtype=feats.dtype)
    sums.index_add_(0, target.long(), feats)
    counts = torch.bincount(target.long(), minlength=n_classes).to(feats.dtype)
    means = sums / counts.clamp_min(1.0).unsqueeze(1)
    if previous is not None:
        means = torch.where(counts.unsqueeze(1) > 0, means, previous.to(means.dtype))
    return means, counts


def ema_prototypes(old: Tensor, new: Tensor, momentum: float) -> Tensor:
    """``(1 - momentum) * new + momentum * old`` (PMR's momentum update between epochs)."""
    return (1.0 - momentum) * new + momentum * old


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """``-||phi(x) - c_k||_2`` for every class: ``[N, K]`` (Eq. 5 before the softmax)."""
    return -torch.cdist(features.float(), prototypes.float(), p=2.0)


def prototype_cross_entropy(features: Tensor, prototypes: Tensor, target: Tensor) -> Tensor:
    """Prototypical cross-entropy ``-1/N sum_i log softmax(-d(phi_i, c))[y_i]`` (Eq. 6)."""
    return torch.nn.functional.cross_entropy(prototype_logits(features, prototypes),
                                             target.long())


def prototype_entropy(features: Tensor, prototypes: Tensor) -> Tensor:
    """Mean entropy of the prototype distribution ``softmax(-d(phi_i, c))`` over samples."""
    logp = torch.log_softmax(prototype_logits(features, prototypes), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()
