"""Certified multimodal robustness (CRMT, Yang et al., ICLR 2024) as pure functions.

The model is ``h(x) = sum_m a^(m) * (W~^(m) phi^(m)(x^(m))) + b`` with an orthogonal (or row
normalised) classifier ``W~^(m)`` per modality and per-class integration weights ``a^(m)``.
For a sample with label ``y`` and runner-up class ``j`` its certified l2 radius is

``r(x) = (sum_m [a_y^(m) h_y^(m) - a_j^(m) h_j^(m)] + b_y - b_j)
          / sqrt(sum_m (a_y^(m) L_y^(m) + a_j^(m) L_j^(m))^2)``

with ``L_k^(m)`` the Lipschitz constant of ``h_k^(m) = W~_k^(m) phi^(m)`` in ``x^(m)``: no
joint perturbation ``(delta^(1), ..., delta^(M))`` with ``sqrt(sum_m ||delta^(m)||^2) < r``
changes the prediction (the margin moves at most ``sum_m c_m ||delta^(m)|| <=
sqrt(sum c_m^2) ||delta||`` by Cauchy-Schwarz).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def own_normalize(weight: Tensor, orthogonal: bool = True, eps: float = 1e-6) -> Tensor:
    """Orthogonal weight normalisation (OWN, Huang et al. 2018) of a classifier.

    Rows are centred over the input dimension; ``orthogonal`` whitens them jointly,
    ``W = (Z_c Z_c^T)^{-1/2} Z_c``, so ``W W^T = I`` (needs ``C < D``); otherwise each row is
    scaled to unit norm (OWN with one group per row, what the released code configures).

    Args:
        weight: ``[C, D]``.
        orthogonal: Joint whitening (``True``) or per-row normalisation.
        eps: Added to the eigenvalues / norms.

    Returns:
        ``[C, D]`` normalised weight (differentiable in ``weight``).
    """
    zc = weight - weight.mean(dim=1, keepdim=True)
    if not orthogonal:
        return zc / zc.norm(dim=1, keepdim=True).clamp_min(eps)
    s = zc @ zc.t()
    evals, evecs = torch.linalg.eigh(s.double())
    inv_sqrt = evecs @ torch.diag((evals.clamp_min(0) + eps).rsqrt()) @ evecs.t()
    return inv_sqrt.to(weight.dtype) @ zc


def crmt_margin_loss(unimodal_logits: list[Tensor], target: Tensor, eps: float = 1e-5
                     ) -> Tensor:
    """CRMT's margin regulariser (step 1, without the weight ``rho``).

    ``mean_i log(sum_m sum_{k != y_i} exp(h_k^(m)(x_i) - h_{y_i}^(m)(x_i)) + eps)``: small when
    every unimodal classifier separates the true class from all others by a wide margin.

    Args:
        unimodal_logits: ``M`` tensors ``[B, C]`` (``W~^(m) phi^(m)``, without ``a``).
        target: ``[B]`` labels.
        eps: The code's ``1e-5`` inside the log.

    Returns:
        Scalar loss.
    """
    terms = []
    for logits in unimodal_logits:
        diff = logits.float() - logits.float().gather(1, target[:, None])
        diff = diff.scatter(1, target[:, None], float("-inf"))  # drop k = y
        terms.append(diff)
    stacked = torch.cat(terms, dim=1)  # [B, M * C]
    log_sum = torch.logsumexp(stacked, dim=1)
    # log(S + eps) computed stably as logaddexp(log S, log eps).
    return torch.logaddexp(log_sum, torch.full_like(log_sum, math.log(eps))).mean()


def runner_up(logits: Tensor, target: Tensor) -> Tensor:
    """The largest class other than ``target`` per row (``[B]`` long)."""
    masked = logits.scatter(1, target[:, None], float("-inf"))
    return masked.argmax(dim=1)


def certified_bound(
    unimodal_logits: Tensor,
    scale: Tensor,
    bias: Tensor,
    lipschitz: Tensor,
    target: Tensor,
    other: Tensor | None = None,
) -> Tensor:
    """CRMT's certified lower bound ``r(x)`` on the l2 radius of a joint perturbation.

    Args:
        unimodal_logits: ``[M, B, C]`` unimodal scores ``h^(m) = W~^(m) phi^(m)(x^(m))``.
        scale: ``[M, C]`` integration weights ``a^(m)``.
        bias: ``[C]`` fused bias ``b``.
        lipschitz: ``[M, C]`` Lipschitz constants ``L_k^(m)`` of ``h_k^(m)`` in ``x^(m)``.
        target: ``[B]`` labels ``y``.
        other: ``[B]`` competing classes ``j`` (default: the fused runner-up).

    Returns:
        ``[B]`` radii; negative where the sample is misclassified. ``|a|`` is used in the
        denominator so the bound stays valid if an integration weight turns negative (the
        paper's weights stay positive, where both agree).
    """
    rows = torch.arange(target.shape[0], device=target.device)
    if other is None:
        fused = (scale[:, None, :] * unimodal_logits).sum(0) + bias
        other = runner_up(fused.detach(), target)
    a_y, a_j = scale[:, target], scale[:, other]  # [M, B]
    h_y = unimodal_logits[:, rows, target]
    h_j = unimodal_logits[:, rows, other]
    numer = (a_y * h_y - a_j * h_j).sum(0) + bias[target] - bias[other]
    denom = a_y.abs() * lipschitz[:, target] + a_j.abs() * lipschitz[:, other]  # [M, B]
    return numer / denom.pow(2).sum(0).sqrt().clamp_min(1e-12)
