"""Variational mutual-information upper bound (CLUB, Cheng et al. 2020) as used by UDI.

UDI (Wang et al., "Balanced Multimodal Learning: An Unidirectional Dynamic Interaction
Perspective") minimises ``I(f^a; f^m)`` between anchor and follower features through the
contrastive log-ratio bound (Eq. 7-8)

    I_v = 1/N^2 sum_i sum_j [log q(f^m_i | f^a_i) - log q(f^m_j | f^a_i)]

with a diagonal Gaussian ``q_phi(y | x) = N(y; mu(x), diag(exp(logvar(x))))`` fitted by its
negative log-likelihood (Eq. 10). The functions here take the estimator's outputs ``mu``,
``logvar`` (computed from ``x = f^a``) and the targets ``y = f^m``; they hold no state.
"""

from __future__ import annotations

import math

from torch import Tensor


def gaussian_log_likelihood(y: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample ``log N(y; mu, diag(exp(logvar)))`` summed over features.

    Args:
        y: Targets ``[N, D]``.
        mu: Means ``[N, D]``.
        logvar: Log-variances ``[N, D]``.

    Returns:
        ``[N]`` log-densities (float32 even under autocast).
    """
    y, mu, logvar = y.float(), mu.float(), logvar.float()
    per = (y - mu).pow(2) * (-logvar).exp() + logvar + math.log(2.0 * math.pi)
    return -0.5 * per.sum(-1)


def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    return t if mask is None else t[mask]


def standardize(t: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch normalisation of ``[N, D]`` features: each feature centred over the rows, all
    divided by one batch-wide scale ``sqrt(mean_d var_d + eps)`` (population variances;
    gradients flow through the statistics, as in batch norm, so the result is invariant to a
    common rescaling and per-feature shifts of ``t``).

    MI is invariant to invertible affine maps of each side, so ``I(x; y)`` is unchanged (up to
    the batch estimate of the statistics) while the bound of :func:`club_upper_bound` loses
    its dependence on the feature scale (see :class:`~equimodal.methods.udi_modules.
    GaussianEstimator`). One scale for all features, not one per feature: dividing by each
    feature's own standard deviation amplifies the gradient of a near-constant feature by
    ``1 / std_d`` (measured on CG-MNIST: a fresh gray follower with ``std_d`` down to 6e-3
    blew up to non-finite features in 10 steps at lr 0.02). A single row gives zeros.

    Args:
        t: ``[N, D]`` features.
        eps: Variance floor (an all-constant batch maps to 0).

    Returns:
        ``[N, D]`` float32 tensor, zero mean per feature, mean per-feature variance 1.
    """
    t = t.float()
    centred = t - t.mean(0, keepdim=True)
    return centred * (centred.pow(2).mean() + eps).rsqrt()


def club_nll(y: Tensor, mu: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """Estimator loss ``L_MI = -1/N sum_i log q_phi(f^m_i | f^a_i)`` (Eq. 10).

    Minimising it over ``phi`` minimises ``KL(p(f^m | f^a) || q_phi)`` (Eq. 9), which makes the
    bound of :func:`club_upper_bound` tight.

    Args:
        y: Follower features ``[N, D]`` (detach them: only ``phi`` learns from this loss).
        mu: ``q_phi`` means from the anchor features ``[N, D]``.
        logvar: ``q_phi`` log-variances ``[N, D]``.
        mask: Optional ``[N]`` bool rows to use (both modalities present).

    Returns:
        Scalar loss (zero, still differentiable, when no row is selected).
    """
    ll = gaussian_log_likelihood(_rows(y, mask), _rows(mu, mask), _rows(logvar, mask))
    if ll.numel() == 0:
        return (mu.float().sum() + logvar.float().sum()) * 0.0
    return -ll.mean()


def club_upper_bound(y: Tensor, mu: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """The variational MI upper bound ``I_v(f^a; f^m)`` of Eq. 8 (= ``L_com``, Eq. 11).

    The double sum over ``(i, j)`` is evaluated exactly in ``O(N D)``: for each ``i``,
    ``1/N sum_j (y_j - mu_i)^2 = var(y) + (mean(y) - mu_i)^2`` per feature (population
    variance, ``j = i`` included as in Eq. 8). The normalising constants and the
    ``logvar`` terms cancel between the two sums, so only the quadratic terms remain.

    Args:
        y: Follower features ``[N, D]`` (gradients flow into them).
        mu: ``q_phi`` means computed from the anchor features ``[N, D]``.
        logvar: ``q_phi`` log-variances ``[N, D]``.
        mask: Optional ``[N]`` bool rows to use.

    Returns:
        Scalar estimate (zero when fewer than two rows are selected).
    """
    y, mu, logvar = _rows(y, mask).float(), _rows(mu, mask).float(), _rows(logvar, mask).float()
    if y.shape[0] < 2:
        return (y.sum() + mu.sum() + logvar.sum()) * 0.0
    inv_var = (-logvar).exp()
    positive = -0.5 * ((y - mu).pow(2) * inv_var).sum(-1)  # log q(y_i | x_i) + const
    y_mean = y.mean(0, keepdim=True)
    y_var = (y - y_mean).pow(2).mean(0, keepdim=True)
    negative = -0.5 * ((y_var + (y_mean - mu).pow(2)) * inv_var).sum(-1)  # mean_j log q(y_j|x_i)
    return (positive - negative).mean()


def club_upper_bound_pairwise(y: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Brute-force ``O(N^2 D)`` form of Eq. 8 (reference for tests and small batches).

    Args:
        y: ``[N, D]`` targets. mu: ``[N, D]`` means. logvar: ``[N, D]`` log-variances.

    Returns:
        Scalar ``1/N^2 sum_ij [log q(y_i|x_i) - log q(y_j|x_i)]``.
    """
    n = y.shape[0]
    pos = gaussian_log_likelihood(y, mu, logvar)  # [N]
    # log q(y_j | x_i) for all pairs: rows i (condition), columns j (target).
    cross = gaussian_log_likelihood(
        y.unsqueeze(0).expand(n, -1, -1), mu.unsqueeze(1).expand(-1, n, -1),
        logvar.unsqueeze(1).expand(-1, n, -1),
    )  # [N, N]
    return pos.mean() - cross.mean()


def gaussian_mutual_information(rho: float, dim: int) -> float:
    """Closed-form MI of ``dim`` independent pairs of unit Gaussians with correlation ``rho``:
    ``-dim / 2 * log(1 - rho^2)`` (nats); used to validate the bound."""
    return -0.5 * dim * math.log(1.0 - rho * rho)
