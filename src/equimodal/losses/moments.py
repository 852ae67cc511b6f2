"""Distribution matching across modalities: moments (mean, covariance, skewness) and MMD.

DecAlign's homogeneity alignment (Qian et al.): the latent-space semantic loss ``L_sem``
matches the first three moments of every pair of modalities (Eq. 10) and ``L_MMD`` is the
pair-averaged squared maximum mean discrepancy with a Gaussian kernel (Eq. 11-12). Inputs
are stacked per modality ``[M, N, d]`` with an optional validity mask ``[M, N]`` (samples
whose modality is missing), and every pair is computed in one batched operation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _mask(z: Tensor, mask: Tensor | None) -> Tensor:
    return z.new_ones(z.shape[:2]) if mask is None else mask.to(z.dtype)


def _pairs(m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    iu = torch.triu_indices(m, m, offset=1, device=device)
    return iu[0], iu[1]


def gaussian_kernel(x: Tensor, y: Tensor, sigma: float = 1.0) -> Tensor:
    """Gaussian kernel matrix ``exp(-||x - y||^2 / (2 sigma^2))`` (Eq. 12).

    Args:
        x: ``[..., N, d]``.
        y: ``[..., P, d]``.
        sigma: Bandwidth ``sigma`` (> 0).

    Returns:
        ``[..., N, P]``.
    """
    d2 = (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    return torch.exp(-d2 / (2.0 * sigma * sigma))


def mmd2(x: Tensor, y: Tensor, sigma: float = 1.0, estimator: str = "biased") -> Tensor:
    """Squared MMD between two sample sets with a Gaussian kernel (one term of Eq. 11).

    Args:
        x: ``[N, d]`` samples of the first distribution.
        y: ``[P, d]`` samples of the second.
        sigma: Kernel bandwidth.
        estimator: ``biased`` (V-statistic, includes ``k(x, x)``) or ``unbiased``
            (U-statistic for the within-set terms).

    Returns:
        Scalar ``E k(x, x') + E k(y, y') - 2 E k(x, y)``.
    """
    z = torch.stack([x, y]) if x.shape == y.shape else None
    if z is not None:
        return pairwise_mmd2(z, sigma=sigma, estimator=estimator)[0, 1]
    kxx, kyy, kxy = gaussian_kernel(x, x, sigma), gaussian_kernel(y, y, sigma), gaussian_kernel(
        x, y, sigma
    )
    if estimator == "unbiased":
        n, p = x.shape[0], y.shape[0]
        exx = (kxx.sum() - kxx.diagonal().sum()) / max(n * (n - 1), 1)
        eyy = (kyy.sum() - kyy.diagonal().sum()) / max(p * (p - 1), 1)
    else:
        exx, eyy = kxx.mean(), kyy.mean()
    return exx + eyy - 2 * kxy.mean()


def pairwise_mmd2(
    z: Tensor, mask: Tensor | None = None, sigma: float = 1.0, estimator: str = "biased"
) -> Tensor:
    """Squared MMD between every pair of groups, from one Gram matrix.

    Args:
        z: ``[M, N, d]`` samples per group (modality).
        mask: ``[M, N]`` validity (``None``: all valid).
        sigma: Kernel bandwidth of Eq. 12.
        estimator: ``biased`` or ``unbiased`` (the within-group expectations exclude
            ``x = x'``; the cross term uses every pair).

    Returns:
        ``[M, M]`` symmetric matrix of squared MMDs (zero diagonal).
    """
    if estimator not in ("biased", "unbiased"):
        raise ValueError(f"estimator must be 'biased' or 'unbiased', got {estimator!r}")
    m, n, _ = z.shape
    w = _mask(z, mask)
    gram = gaussian_kernel(z.reshape(m * n, -1), z.reshape(m * n, -1), sigma).reshape(m, n, m, n)
    ww = w[:, :, None, None] * w[None, None, :, :]  # [M, N, M, N]
    exp_k = (gram * ww).sum((1, 3)) / ww.sum((1, 3)).clamp_min(1e-12)  # [M, M]
    within = exp_k.diagonal()
    if estimator == "unbiased":
        diag_w = w * w  # weights of the k(x_n, x_n) = 1 terms
        gii = torch.einsum("inin->in", gram)
        num = (gram * ww).sum((1, 3)).diagonal() - (gii * diag_w).sum(1)
        den = ww.sum((1, 3)).diagonal() - diag_w.sum(1)
        within = num / den.clamp_min(1e-12)
    out = within[:, None] + within[None, :] - 2 * exp_k
    return out * (1 - torch.eye(m, device=z.device, dtype=z.dtype))


def multi_mmd_loss(
    z: Tensor, mask: Tensor | None = None, sigma: float = 1.0, estimator: str = "biased"
) -> Tensor:
    """``L_MMD = 2 / (M (M - 1)) sum_{i<j} MMD^2(Z_i, Z_j)`` (Eq. 11)."""
    m = z.shape[0]
    if m < 2:
        return z.sum() * 0
    mat = pairwise_mmd2(z, mask, sigma, estimator)
    i, j = _pairs(m, z.device)
    return 2.0 / (m * (m - 1)) * mat[i, j].sum()


def group_moments(
    z: Tensor, mask: Tensor | None = None, eps: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, covariance and skewness of each group (the ``mu, Sigma, Gamma`` of Eq. 10).

    Covariance uses Bessel's correction (like ``torch.cov``); skewness is the per-dimension
    standardised third central moment ``m3 / m2^{3/2}`` (``scipy.stats.skew`` default).

    Args:
        z: ``[M, N, d]``.
        mask: ``[M, N]`` validity.
        eps: Added to the variance in the skewness denominator.

    Returns:
        ``mean [M, d]``, ``cov [M, d, d]``, ``skew [M, d]``.
    """
    w = _mask(z, mask)
    cnt = w.sum(1).clamp_min(1.0)  # [M]
    mean = (w.unsqueeze(-1) * z).sum(1) / cnt[:, None]
    c = (z - mean[:, None]) * w.unsqueeze(-1)
    cov = torch.einsum("mnd,mne->mde", c, c) / (cnt - 1).clamp_min(1.0)[:, None, None]
    m2 = c.pow(2).sum(1) / cnt[:, None]
    m3 = c.pow(3).sum(1) / cnt[:, None]
    skew = m3 / (m2 + eps).pow(1.5)
    return mean, cov, skew


def semantic_alignment_loss(z: Tensor, mask: Tensor | None = None) -> Tensor:
    """``L_sem`` (Eq. 10): ``1 / (M (M - 1)) sum_{i<j} (||dmu||^2 + ||dSigma||_F^2 +
    ||dGamma||^2)`` over modality pairs."""
    m = z.shape[0]
    if m < 2:
        return z.sum() * 0
    mean, cov, skew = group_moments(z, mask)
    i, j = _pairs(m, z.device)
    per_pair = (
        (mean[i] - mean[j]).pow(2).sum(-1)
        + (cov[i] - cov[j]).pow(2).sum((-1, -2))
        + (skew[i] - skew[j]).pow(2).sum(-1)
    )
    return per_pair.sum() / (m * (m - 1))
