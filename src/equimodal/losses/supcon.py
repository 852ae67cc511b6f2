"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the "CT" row of DecAlign's
alignment ablation (Qian et al., Table 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def regression_bins(target: Tensor, n_bins: int = 7, low: float = -3.0,
                    high: float = 3.0) -> Tensor:
    """Round regression scores into ``n_bins`` ordinal classes (MSA: 7 bins on [-3, 3]).

    Args:
        target: ``[B]`` float scores.
        n_bins: Number of bins (``>= 2``).
        low: Lowest score (maps to bin 0).
        high: Highest score (maps to bin ``n_bins - 1``).

    Returns:
        ``[B]`` long bin ids.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    scaled = (target.float().clamp(low, high) - low) / (high - low) * (n_bins - 1)
    return scaled.round().long()


def supcon_loss(
    features: Tensor, labels: Tensor, temperature: float = 0.1, normalize: bool = True
) -> Tensor:
    """Supervised contrastive loss ``L^sup_out``.

    For anchor ``i`` with positives ``P(i)`` (same label, ``p != i``):
    ``-1/|P(i)| sum_p log(exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau))``, averaged
    over anchors that have at least one positive (zero, with a graph, when none has).

    Args:
        features: ``[B, D]`` representations.
        labels: ``[B]`` integer labels.
        temperature: ``tau``.
        normalize: L2-normalise the features first.

    Returns:
        Scalar loss.
    """
    z = F.normalize(features, dim=-1) if normalize else features
    b = z.shape[0]
    logits = z @ z.t() / temperature
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return features.sum() * 0
    # -inf on the diagonal is never selected (pos excludes it); zero it to avoid 0 * inf.
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp_min(1)
    return -mean_pos[has].mean()
