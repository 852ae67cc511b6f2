"""Confidence-weighted distillation and predictive-distribution helpers (EBMC Eq. 13-16).

Classification teachers predict a categorical ``softmax(t / tau)``. Regression teachers
predict a location-scale distribution from two outputs ``(mean, log_scale)``: a Laplace
``(mean, b = exp(log_scale))`` when the task loss is L1 and a Gaussian
``(mean, sigma = exp(log_scale))`` when it is MSE (the distributions whose negative
log-likelihoods those losses are).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Regression predictive families (``laplace`` pairs with L1, ``gaussian`` with MSE).
FAMILIES = ("laplace", "gaussian")


def categorical_variance(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Total variance ``sum_y p(y) (1 - p(y))`` of the one-hot outcome under ``p`` (``[B]``).

    The categorical prediction seen as a random one-hot vector has mean ``p`` and per-class
    variance ``p (1 - p)``; its L1 norm is the ``||sigma^2||_1`` of Eq. 14.
    """
    p = F.softmax(logits / temperature, dim=-1)
    return (p * (1.0 - p)).sum(-1)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def regression_variance(log_scale: Tensor, family: str = "laplace") -> Tensor:
    """Predictive variance: ``2 b^2`` (Laplace) or ``sigma^2`` (Gaussian)."""
    _check_family(family)
    var = torch.exp(2.0 * log_scale)
    return 2.0 * var if family == "laplace" else var


def regression_entropy(log_scale: Tensor, family: str = "laplace") -> Tensor:
    """Differential entropy: ``1 + log(2 b)`` (Laplace) or ``0.5 log(2 pi e sigma^2)``."""
    _check_family(family)
    if family == "laplace":
        return 1.0 + math.log(2.0) + log_scale
    return 0.5 * math.log(2.0 * math.pi * math.e) + log_scale


def regression_scale_nll(
    mean: Tensor, log_scale: Tensor, target: Tensor, family: str = "laplace"
) -> Tensor:
    """Per-sample negative log-likelihood used to fit the scale head (``[B]``).

    The mean is detached: the scale is fitted to the errors the mean makes, and the mean
    itself keeps receiving only the task loss.
    """
    _check_family(family)
    err = target.to(mean.dtype) - mean.detach()
    if family == "laplace":
        return err.abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)
    return 0.5 * err.pow(2) * torch.exp(-2.0 * log_scale) + log_scale + 0.5 * math.log(
        2.0 * math.pi
    )


def fit_temperature(logits: Tensor, target: Tensor, lo: float = 0.02, hi: float = 50.0,
                    steps: int = 121) -> float:
    """Temperature ``s`` minimising the NLL of ``softmax(logits / s)`` (calibration).

    A log-spaced grid search (deterministic, one vectorised pass); the grid's relative
    spacing (~7 % at the defaults) is finer than calibration needs.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` class indices.
        lo: Smallest temperature tried.
        hi: Largest temperature tried.
        steps: Grid points.

    Returns:
        The best temperature.

    Example:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> round(fit_temperature(z, torch.tensor([0, 1])), 3)  # always right: sharpest
        0.02
    """
    grid = torch.logspace(math.log10(lo), math.log10(hi), steps, dtype=logits.dtype,
                          device=logits.device)
    logp = F.log_softmax(logits[None] / grid[:, None, None], dim=-1)  # [S, N, C]
    nll = -logp.gather(2, target[None, :, None].expand(steps, -1, 1)).squeeze(2).mean(1)
    return float(grid[int(nll.argmin())])


def categorical_kl(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample ``KL(softmax(p / T) || softmax(q / T))`` (``[B]``)."""
    logp = F.log_softmax(p_logits / temperature, dim=-1)
    logq = F.log_softmax(q_logits / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def trust_weights(
    sigma: Tensor,
    spread: Tensor,
    present: Tensor | None = None,
    offset: float = 0.0,
    floor: float = 1e-6,
) -> Tensor:
    """Instance-aware modality trust ``alpha_m^i`` (Eq. 13-15).

    ``c = exp(-sigma)`` (Eq. 13), ``rho = 1 / (log(1 + spread) + offset)`` (Eq. 14; the
    paper has ``offset = 0``; the reference code adds ``0.1``), and
    ``alpha = c rho / sum_m c rho`` over the modalities present (Eq. 15). Computed in log
    space; ``log(1 + spread) + offset`` is floored at ``floor`` so a zero-variance teacher
    gets a large but finite weight.

    Args:
        sigma: ``[B, M]`` per-sample uncertainty of each modality's teacher.
        spread: ``[B, M]`` the ``||sigma^2||_1`` of Eq. 14.
        present: Optional ``[B, M]`` bool; absent modalities get weight 0.
        offset: Added to the log in ``rho``.
        floor: Lower bound of the denominator of ``rho``.

    Returns:
        ``[B, M]`` weights summing to 1 over present modalities.

    Example:
        >>> import torch
        >>> w = trust_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        >>> w.tolist()
        [[0.5, 0.5]]
    """
    denom = (torch.log1p(spread.clamp_min(0.0)) + offset).clamp_min(floor)
    logw = -sigma - torch.log(denom)
    if present is not None:
        logw = logw.masked_fill(~present.to(torch.bool), float("-inf"))
    w = torch.softmax(logw, dim=-1)
    # A sample with no modality present has an all -inf row: give it zero weights.
    return torch.nan_to_num(w, nan=0.0)


def weighted_distillation(divergences: Tensor, weights: Tensor) -> Tensor:
    """``mean_i sum_m alpha_m^i D_m^i`` (Eq. 16; the paper sums over samples, we average).

    Args:
        divergences: ``[B, M]`` per-sample, per-modality divergences.
        weights: ``[B, M]`` trust weights (treated as constants).
    """
    return (weights.detach() * divergences).sum(1).mean()
