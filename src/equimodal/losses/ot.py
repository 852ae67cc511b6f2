"""Optimal transport pieces: Gaussian W2 (Bures) costs and log-domain multi-marginal Sinkhorn.

Used by DecAlign's prototype-guided alignment (Qian et al., DecAlign, Eq. 5-9): the cost
between two Gaussian prototypes is their squared 2-Wasserstein distance (Eq. 6), the joint
cost of one prototype per modality is the sum of pairwise costs (Eq. 5), and the entropic
multi-marginal transport plan over the ``K^M`` tensor (Eq. 7-8) is found with Sinkhorn
iterations in the log domain (no kernel underflow for small ``epsilon``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def bures_w2_diag(
    mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor, reduction: str = "sum"
) -> Tensor:
    """Pairwise squared W2 distance between diagonal Gaussians (DecAlign Eq. 6).

    For diagonal covariances ``Tr(S1 + S2 - 2 (S1 S2)^{1/2}) = sum_d (s1_d - s2_d)^2`` with
    ``s = sqrt(var)``, so ``W2^2 = ||mu1 - mu2||^2 + ||s1 - s2||^2``.

    Args:
        mu1: Means ``[..., K1, d]``.
        var1: Variances ``[..., K1, d]`` (positive).
        mu2: Means ``[..., K2, d]``.
        var2: Variances ``[..., K2, d]``.
        reduction: ``sum`` over dimensions (the paper's norm and trace) or ``mean`` (the
            reference implementation divides by ``d``).

    Returns:
        Costs ``[..., K1, K2]``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    s1, s2 = var1.sqrt(), var2.sqrt()
    per_dim = (mu1.unsqueeze(-2) - mu2.unsqueeze(-3)).pow(2) + (
        s1.unsqueeze(-2) - s2.unsqueeze(-3)
    ).pow(2)
    return per_dim.sum(-1) if reduction == "sum" else per_dim.mean(-1)


def _sqrtm_psd(mat: Tensor) -> Tensor:
    # Symmetric PSD square root through the eigen-decomposition (negative round-off clipped).
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.transpose(-1, -2)


def gaussian_w2(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """Squared W2 distance between full-covariance Gaussians (Bures metric).

    ``W2^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``; this equals
    Eq. 6's ``(S1 S2)^{1/2}`` form when the covariances commute (e.g. diagonal ones).

    Args:
        mu1: Mean ``[..., d]``.
        cov1: Covariance ``[..., d, d]`` (symmetric PSD).
        mu2: Mean ``[..., d]``.
        cov2: Covariance ``[..., d, d]``.

    Returns:
        ``[...]`` squared distances.
    """
    r1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(r1 @ cov2 @ r1)
    trace = (cov1 + cov2 - 2 * cross).diagonal(dim1=-2, dim2=-1).sum(-1)
    return (mu1 - mu2).pow(2).sum(-1) + trace


def pairwise_prototype_costs(means: Tensor, variances: Tensor, reduction: str = "sum") -> Tensor:
    """W2 costs between the prototypes of every pair of modalities at once.

    Args:
        means: ``[M, K, d]`` prototype means.
        variances: ``[M, K, d]`` diagonal prototype variances.
        reduction: See :func:`bures_w2_diag`.

    Returns:
        ``[M, M, K, K]``: entry ``[i, j, a, b]`` is ``C_ij(a, b)`` of Eq. 6.
    """
    return bures_w2_diag(
        means[:, None], variances[:, None], means[None, :], variances[None, :], reduction
    )


def multimarginal_cost(pair_costs: Tensor) -> Tensor:
    """Joint cost tensor ``C(k_1, ..., k_M) = sum_{i<j} C_ij(k_i, k_j)`` (Eq. 5).

    Eq. 5 sums over ``i <= j``; the ``i = j`` terms compare a prototype with itself and are
    zero, so only pairs ``i < j`` are added.

    Args:
        pair_costs: ``[M, M, K, K]`` from :func:`pairwise_prototype_costs`.

    Returns:
        ``[K] * M`` cost tensor.
    """
    m, k = pair_costs.shape[0], pair_costs.shape[-1]
    cost = pair_costs.new_zeros([k] * m)
    for i in range(m):
        for j in range(i + 1, m):
            shape = [1] * m
            shape[i], shape[j] = k, k
            cost = cost + pair_costs[i, j].reshape(shape)
    return cost


@dataclass
class SinkhornResult:
    """Output of :func:`multimarginal_sinkhorn`.

    Attributes:
        plan: Transport plan ``T`` with the shape of the cost tensor.
        log_plan: ``log T`` (finite even where ``T`` underflows).
        potentials: Dual potentials, one ``[K_i]`` vector per axis
            (``T = exp((sum_i f_i(k_i) - C) / eps)``).
        marginal_error: Largest absolute violation of Eq. 8 after the last iteration.
    """

    plan: Tensor
    log_plan: Tensor
    potentials: list[Tensor]
    marginal_error: Tensor


def _axes_except(m: int, i: int) -> list[int]:
    return [a for a in range(m) if a != i]


def plan_marginals(plan: Tensor) -> list[Tensor]:
    """Marginals of a multi-marginal plan: ``sum_{k_j, j != i} T(k)`` for every axis ``i``."""
    m = plan.dim()
    return [plan.sum(dim=_axes_except(m, i)) if m > 1 else plan for i in range(m)]


def multimarginal_sinkhorn(
    cost: Tensor,
    marginals: Tensor | list[Tensor],
    epsilon: float = 0.1,
    n_iter: int = 50,
    tol: float = 0.0,
) -> SinkhornResult:
    """Entropic multi-marginal OT (DecAlign Eq. 7-8) by block-coordinate dual ascent.

    Solves ``min_T <T, C> + eps * sum T (log T - 1)`` subject to the marginal constraints
    ``sum_{k_j, j != i} T(k) = nu_i(k_i)`` for every modality ``i``. Because ``sum T = 1`` is
    implied, the minimiser is the same for the paper's ``sum T log T`` entropy (Eq. 7). The
    plan has the Gibbs form ``T = exp((sum_i f_i(k_i) - C(k)) / eps)``; each sweep updates
    ``f_i <- f_i + eps (log nu_i - log marg_i(T))`` in the log domain, which is the exact
    Sinkhorn update for ``M = 2`` (POT's ``sinkhorn_log``). Every step is differentiable, so
    gradients flow through the unrolled iterations.

    Args:
        cost: Cost tensor of shape ``[K_1, ..., K_M]``.
        marginals: ``[M, K]`` tensor or list of ``M`` vectors ``[K_i]``; each is normalised
            to sum to one. Zero entries are clamped to ``1e-30``.
        epsilon: Entropic regularisation ``lambda`` of Eq. 7 (> 0).
        n_iter: Maximum number of sweeps over all marginals.
        tol: Stop early once the largest marginal violation is below ``tol`` (``0``: run
            all ``n_iter`` sweeps, which keeps the computation graph fixed).

    Returns:
        A :class:`SinkhornResult`.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    m = cost.dim()
    nus = list(marginals) if not isinstance(marginals, Tensor) else list(marginals.unbind(0))
    if len(nus) != m:
        raise ValueError(f"cost has {m} axes but {len(nus)} marginals were given")
    for i, nu in enumerate(nus):
        if nu.shape != (cost.shape[i],):
            raise ValueError(f"marginal {i} has shape {tuple(nu.shape)}, axis has {cost.shape[i]}")
    log_nus = [
        (nu / nu.sum()).clamp_min(1e-30).log().to(cost.dtype) for nu in nus
    ]
    scaled = -cost / epsilon
    pots = [cost.new_zeros(cost.shape[i]) for i in range(m)]

    def log_gibbs() -> Tensor:
        out = scaled
        for i, f in enumerate(pots):
            shape = [1] * m
            shape[i] = -1
            out = out + (f / epsilon).reshape(shape)
        return out

    def log_marg(logp: Tensor, i: int) -> Tensor:
        axes = _axes_except(m, i)
        return torch.logsumexp(logp, dim=axes) if axes else logp

    for _ in range(n_iter):
        for i in range(m):
            pots[i] = pots[i] + epsilon * (log_nus[i] - log_marg(log_gibbs(), i))
        if tol > 0:
            with torch.no_grad():
                logp = log_gibbs()
                gap = max(
                    float((log_marg(logp, i).exp() - log_nus[i].exp()).abs().max())
                    for i in range(m)
                )
            if gap < tol:
                break
    logp = log_gibbs()
    err = torch.stack(
        [(log_marg(logp, i).exp() - log_nus[i].exp()).abs().max() for i in range(m)]
    ).max()
    return SinkhornResult(logp.exp(), logp, pots, err.detach())


def scaled_epsilon(cost: Tensor, epsilon: float, relative: bool = True) -> float:
    """Entropic regularisation on the cost's own scale: ``epsilon * mean(C)`` (detached).

    With summed Bures costs (Eq. 5-6) the entries of ``C`` grow with the feature width and the
    number of modalities (``~1e2`` at ``d = 16``, ``~1e3`` at ``d = 64``); a fixed
    ``epsilon = 0.1`` then makes ``C / epsilon ~ 1e3-1e4`` and Sinkhorn stalls (marginal error
    0.12-0.53 after 50 sweeps against marginals of ~0.1). Measured on random diagonal GMMs
    (K = 10, M = 2-3, d = 16 / 64, costs 1e2-1.4e3): ``0.05 * mean(C)`` converges to a
    marginal error below ``1e-6`` within 50 sweeps; ``0.01 * mean(C)`` needs up to 500.

    Args:
        cost: Cost tensor (any shape).
        epsilon: Absolute value (``relative=False``) or fraction of ``mean(C)``.
        relative: Scale by the mean cost.

    Returns:
        The epsilon to pass to :func:`multimarginal_sinkhorn` (a Python float; no gradient).
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not relative:
        return float(epsilon)
    return float(epsilon) * max(float(cost.detach().float().mean()), 1e-8)


def entropic_ot_objective(
    plan: Tensor, cost: Tensor, epsilon: float, log_plan: Tensor | None = None
) -> Tensor:
    """``<T, C> + eps * sum T (log T - 1)`` (the reference implementation's OT loss)."""
    logp = log_plan if log_plan is not None else plan.clamp_min(1e-30).log()
    return (plan * cost).sum() + epsilon * (plan * (logp - 1.0)).sum()


def transport_cost(plan: Tensor, cost: Tensor) -> Tensor:
    """``sum_k T(k) C(k)``: the first term of DecAlign Eq. 9 (``L_OT``)."""
    return (plan * cost).sum()


def max_entropy_bound(shape: tuple[int, ...] | torch.Size) -> float:
    """``log(prod K_i)``: the largest entropy of a plan on this grid (for error bounds)."""
    return math.log(math.prod(shape))
