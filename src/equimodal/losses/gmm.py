"""Differentiable diagonal-covariance Gaussian mixture EM in torch, batched over groups.

DecAlign (Qian et al.) models each modality's unique features with a GMM whose components
are the modality's prototypes (Eq. 2) and whose posteriors are the soft assignments of Eq. 3
with the Gaussian density of Eq. 4. The EM here runs on every modality at once (a leading
group axis), supports per-sample masks (missing modalities) and is plain tensor algebra, so
gradients flow from the prototypes and responsibilities back into the features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GMMResult:
    """A fitted batch of diagonal GMMs.

    Attributes:
        means: ``[G, K, d]`` component means ``mu`` (the prototypes of Eq. 2).
        variances: ``[G, K, d]`` diagonal covariances ``Sigma``.
        weights: ``[G, K]`` mixture coefficients ``pi``.
        resp: ``[G, N, K]`` posteriors ``w^n(k)`` of Eq. 3 (zero rows for masked samples).
        log_likelihood: ``[G]`` mean log-likelihood of the valid samples under the model.
    """

    means: Tensor
    variances: Tensor
    weights: Tensor
    resp: Tensor
    log_likelihood: Tensor


def diag_gaussian_log_prob(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``log N(x_n; mu_k, diag(var_k))`` (Eq. 4) for every sample and component.

    Args:
        x: ``[G, N, d]``.
        means: ``[G, K, d]``.
        variances: ``[G, K, d]``.

    Returns:
        ``[G, N, K]`` log densities.
    """
    d = x.shape[-1]
    diff2 = (x.unsqueeze(-2) - means.unsqueeze(-3)).pow(2)  # [G, N, K, d]
    maha = (diff2 / variances.unsqueeze(-3)).sum(-1)
    log_det = variances.log().sum(-1).unsqueeze(-2)  # [G, 1, K]
    return -0.5 * (maha + log_det + d * math.log(2 * math.pi))


def _e_step(
    x: Tensor, means: Tensor, variances: Tensor, weights: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    joint = diag_gaussian_log_prob(x, means, variances) + weights.clamp_min(1e-30).log()[:, None]
    log_norm = torch.logsumexp(joint, dim=-1)  # [G, N]
    resp = (joint - log_norm.unsqueeze(-1)).exp() * mask.unsqueeze(-1)
    ll = (log_norm * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return resp, ll


def spaced_init_means(x: Tensor, mask: Tensor, k: int) -> Tensor:
    """Initial means: ``k`` evenly spaced valid samples of each group (deterministic).

    Args:
        x: ``[G, N, d]``.
        mask: ``[G, N]`` float/bool validity.
        k: Components.

    Returns:
        ``[G, k, d]``.
    """
    g, n, d = x.shape
    valid = mask > 0
    # Valid samples first, in their original order (stable sort of the "invalid" flag).
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # [G, N]
    n_valid = valid.sum(1).clamp_min(1)  # [G]
    frac = torch.linspace(0, 1, k, device=x.device, dtype=x.dtype) if k > 1 else x.new_zeros(1)
    pos = (frac[None, :] * (n_valid[:, None] - 1).to(x.dtype)).round().long()  # [G, k]
    idx = order.gather(1, pos)
    return x.gather(1, idx.unsqueeze(-1).expand(g, k, d))


def fit_diag_gmm(
    x: Tensor,
    k: int,
    n_iter: int = 5,
    var_floor: float = 1e-4,
    mask: Tensor | None = None,
    init_means: Tensor | None = None,
) -> GMMResult:
    """Fit diagonal GMMs with ``n_iter`` EM iterations, differentiably (Eq. 2-4).

    Initialisation: means at evenly spaced valid samples (or ``init_means``), every
    variance at the group's per-dimension data variance, uniform mixture weights. Each
    iteration is an E-step (Eq. 3) then an M-step; variances are floored at ``var_floor``.
    A final E-step gives posteriors consistent with the returned parameters. A component
    that receives no mass keeps its previous mean instead of collapsing to zero.

    Args:
        x: ``[G, N, d]`` (one GMM per group, e.g. per modality) or ``[N, d]``.
        k: Number of components ``K``.
        n_iter: EM iterations.
        var_floor: Lower bound of every variance.
        mask: ``[G, N]`` (or ``[N]``) sample validity; masked samples are ignored.
        init_means: Optional ``[G, K, d]`` starting means.

    Returns:
        A :class:`GMMResult` (leading ``G`` axis kept even for ``[N, d]`` input).
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    g, n, _ = x.shape
    w = x.new_ones(g, n) if mask is None else mask.to(x.dtype)
    count = w.sum(1).clamp_min(1.0)  # [G]
    mean_all = (w.unsqueeze(-1) * x).sum(1) / count[:, None]
    var_all = (w.unsqueeze(-1) * (x - mean_all[:, None]).pow(2)).sum(1) / count[:, None]
    means = spaced_init_means(x, w, k) if init_means is None else init_means
    variances = var_all.clamp_min(var_floor).unsqueeze(1).expand(g, k, -1)
    weights = x.new_full((g, k), 1.0 / k)
    tiny = 1e-6  # pseudo-count that keeps an empty component's previous mean and variance
    for _ in range(n_iter):
        resp, _ = _e_step(x, means, variances, weights, w)
        nk = resp.sum(1)  # [G, K]
        weights = nk / count[:, None]
        denom = (nk + tiny).unsqueeze(-1)
        means = (torch.einsum("gnk,gnd->gkd", resp, x) + tiny * means) / denom
        diff2 = (x.unsqueeze(-2) - means.unsqueeze(-3)).pow(2)  # [G, N, K, d]
        var_new = torch.einsum("gnk,gnkd->gkd", resp, diff2)
        variances = ((var_new + tiny * variances) / denom).clamp_min(var_floor)
    resp, ll = _e_step(x, means, variances, weights, w)
    return GMMResult(means, variances, weights, resp, ll)
