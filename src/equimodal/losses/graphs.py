"""Semantic graphs, graph alignment, diffusion attention and Dirichlet energy (SCOPE).

Yang, Zhang, Hong, Yuan, "SCOPE: Preserving Modality-Specific Cues to Mitigate Modality
Laziness in Multimodal Learning". Pure functions of tensors:

* :func:`semantic_graph` builds the parameter-free k-NN graph of Eq. 4-5 / Theorem 1 (rows
  sum to 1, entries non-negative, invariant to scaling the distances);
* :func:`graph_alignment_loss` is ``L_align`` (Eq. 6);
* :func:`masked_softmax`, :func:`diffusion_coefficients`, :func:`diffuse` and
  :func:`diffusion_matrix` are the pieces of the diffusion attention of Sec. 4.3;
* :func:`dirichlet_energy` is Definition 1 of Appendix C (the over-smoothing diagnostic of
  Table 5).
"""

from __future__ import annotations

import torch
from torch import Tensor

LAMBDA_MODES = ("lower_bound", "exact")


def pairwise_sq_dists(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``f_ij = ||x_i - y_j||^2`` (the cost of Eq. 2).

    Args:
        x: ``[N, d]``.
        y: ``[K, d]`` (default: ``x``).

    Returns:
        ``[N, K]``, clamped at 0 (the expansion can go slightly negative in floating point).
    """
    y = x if y is None else y
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * x @ y.t()
    return sq.clamp_min(0.0)


def lambda_bounds(f: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Theorem 1's bounds on the Lagrange multiplier of each row of Eq. 5:
    ``2k S / (k^2 - 1) <= lambda < 2 S / (k - 1)`` with ``S = sum_j f_ij`` over the k kept
    neighbours (meaningful for ``k >= 2``; one neighbour takes weight 1 for any lambda).

    Args:
        f: ``[N, k]`` distances to the kept neighbours.
        valid: ``[N, k]`` which entries are real neighbours (default: all).

    Returns:
        ``(lower, upper)``, each ``[N]``.
    """
    v = torch.ones_like(f, dtype=torch.bool) if valid is None else valid
    k = v.sum(1).to(f.dtype)
    s = (f * v).sum(1)
    lower = 2.0 * k * s / (k * k - 1.0)
    upper = 2.0 * s / (k - 1.0)
    return lower, upper


def closed_form_weights(f: Tensor, valid: Tensor | None = None) -> Tensor:
    """Edge weights of Theorem 1 with ``lambda`` at its lower bound, renormalised per row.

    ``g_ij = sqrt((1 - (k^2 - 1) f_ij / (k S_i))_+)``. The lower bound makes the weights
    closed-form, but ``sum_j g_ij = 1`` (the constraint of Eq. 4) then holds only when all
    k distances are equal (Cauchy-Schwarz in the proof of Theorem 1), so each row is divided
    by its sum. Multiplying every ``f_ij`` of a row by ``alpha > 0`` changes nothing.

    Args:
        f: ``[N, k]`` squared distances to the k nearest neighbours.
        valid: ``[N, k]`` real neighbours (rows may keep fewer than k); default all.

    Returns:
        ``[N, k]`` non-negative weights, rows summing to 1 (0 for rows without neighbours).
    """
    v = torch.ones_like(f, dtype=torch.bool) if valid is None else valid
    vf = v.to(f.dtype)
    k = vf.sum(1, keepdim=True)
    s = (f * vf).sum(1, keepdim=True)
    # All neighbours at distance 0: the limit of equal distances, i.e. uniform weights.
    ratio = torch.where(s > 0, f / s.clamp_min(torch.finfo(f.dtype).tiny), torch.zeros_like(f))
    x = (1.0 - (k * k - 1.0) / k.clamp_min(1.0) * ratio) * vf
    return _sqrt_normalise(x, vf)


def exact_weights(f: Tensor, valid: Tensor | None = None, iters: int = 60) -> Tensor:
    """Exact row-wise minimiser of Eq. 4 over the kept neighbours.

    ``g_ij = sqrt((1 - 2 f_ij / lambda_i)_+)`` with ``lambda_i`` solving ``sum_j g_ij = 1``
    (found by bisection, without gradient: gradients reach ``f`` through the weights at
    fixed ``lambda``, followed by a renormalisation that absorbs the bisection residual).

    Args:
        f: ``[N, k]`` squared distances.
        valid: ``[N, k]`` real neighbours; default all.
        iters: Bisection steps on ``lambda / S`` (60 halve the bracket to machine precision).

    Returns:
        ``[N, k]`` weights, rows summing to 1.
    """
    v = torch.ones_like(f, dtype=torch.bool) if valid is None else valid
    vf = v.to(f.dtype)
    with torch.no_grad():
        k = vf.sum(1, keepdim=True)
        s = (f * vf).sum(1, keepdim=True)
        r = torch.where(s > 0, f / s.clamp_min(torch.finfo(f.dtype).tiny), torch.zeros_like(f))
        # lambda = 2 S u; g(u) = sum_j sqrt((1 - r_j / u)_+) grows with u; at u = 1/(k-1)
        # (Theorem 1's upper bound) g >= 1, at u = 0 g counts the zero-distance neighbours.
        lo = torch.zeros_like(s)
        hi = 1.0 / (k - 1.0).clamp_min(1.0)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            g = (((1.0 - r / mid.clamp_min(1e-30)).clamp_min(0.0)).sqrt() * vf).sum(1, keepdim=True)
            too_big = g > 1.0
            hi = torch.where(too_big, mid, hi)
            lo = torch.where(too_big, lo, mid)
        u = hi.clamp_min(1e-30)
    ratio = torch.where(s > 0, f / s.clamp_min(torch.finfo(f.dtype).tiny), torch.zeros_like(f))
    # A single neighbour takes all the mass (lambda -> infinity).
    x = torch.where(k > 1, (1.0 - ratio / u) * vf, vf)
    return _sqrt_normalise(x, vf)


def _sqrt_normalise(x: Tensor, vf: Tensor, eps: float = 1e-12) -> Tensor:
    # sqrt has an infinite slope at 0: take it on a clamped copy and zero the clipped
    # entries with where(), so clipped edges get exactly zero weight and zero gradient.
    pos = (x > eps) & (vf > 0)
    g = torch.where(pos, x.clamp_min(eps).sqrt(), torch.zeros_like(x))
    total = g.sum(1, keepdim=True)
    return g / total.clamp_min(torch.finfo(x.dtype).tiny)


def knn(dists: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The (at most) k nearest valid candidates of each row.

    Args:
        dists: ``[N, K]`` distances from queries to candidates.
        k: Neighbours wanted; each row keeps ``min(k, its valid candidates)``.
        valid: ``[N, K]`` allowed candidates (default: all).

    Returns:
        ``(index [N, k'], distance [N, k'], kept [N, k'])`` with ``k' = min(k, K)``.
    """
    if valid is None:
        valid = torch.ones_like(dists, dtype=torch.bool)
    k_eff = max(0, min(int(k), dists.shape[1]))
    masked = dists.masked_fill(~valid, float("inf"))
    dist, idx = torch.topk(masked, k_eff, dim=1, largest=False, sorted=True)
    kept = torch.isfinite(dist)
    return idx, torch.where(kept, dist, torch.zeros_like(dist)), kept


def semantic_graph_from_dists(
    dists: Tensor, k: int, valid: Tensor | None = None, lam: str = "lower_bound"
) -> Tensor:
    """Dense row-stochastic semantic graph from query-to-candidate distances (Eq. 4-5).

    Args:
        dists: ``[N, K]`` squared distances ``f_ij``.
        k: Neighbours per row (only controls sparsity, Sec. 4.2).
        valid: ``[N, K]`` allowed edges (e.g. no self-loops, present samples only).
        lam: ``lower_bound`` (Theorem 1, closed form, renormalised) or ``exact``.

    Returns:
        ``[N, K]`` graph; rows without any allowed candidate are zero.
    """
    if lam not in LAMBDA_MODES:
        raise ValueError(f"lam must be one of {LAMBDA_MODES}, got {lam!r}")
    idx, f, kept = knn(dists, k, valid)
    if idx.shape[1] == 0:
        return torch.zeros_like(dists)
    w = closed_form_weights(f, kept) if lam == "lower_bound" else exact_weights(f, kept)
    return torch.zeros_like(dists).scatter(1, idx, w * kept.to(w.dtype))


def semantic_graph(
    x: Tensor, k: int, present: Tensor | None = None, lam: str = "lower_bound"
) -> Tensor:
    """Parameter-free semantic graph ``G^m`` of one modality in a mini-batch (Theorem 1).

    Nodes are samples; each node links to its k nearest other present samples (no
    self-loops), with weights from :func:`closed_form_weights` (or :func:`exact_weights`).
    ``k`` adapts to small batches (at most the number of other present samples).

    Args:
        x: ``[N, d]`` features of the modality.
        k: Neighbours per node.
        present: ``[N]`` bool, samples that have the modality (absent ones get no edges).
        lam: ``lower_bound`` or ``exact``.

    Returns:
        ``[N, N]`` non-negative graph whose present rows sum to 1.

    Example:
        >>> g = semantic_graph(torch.randn(6, 3), k=3)
        >>> bool(torch.allclose(g.sum(1), torch.ones(6)))
        True
    """
    n = x.shape[0]
    valid = ~torch.eye(n, dtype=torch.bool, device=x.device)
    if present is not None:
        valid = valid & present[:, None] & present[None, :]
    return semantic_graph_from_dists(pairwise_sq_dists(x), k, valid, lam)


def graph_alignment_loss(graphs: Tensor, present: Tensor | None = None) -> Tensor:
    """``L_align`` (Eq. 6): ``2 / (M (M - 1)) sum_{m<n} ||G^m - G^n||_F^2 / N^2``.

    With missing modalities, a pair compares the rows of the samples that have both
    modalities and divides by the square of their count.

    Args:
        graphs: ``[M, N, N]`` semantic graphs.
        present: ``[M, N]`` bool (default: all present).

    Returns:
        Scalar loss (0 for a single modality).
    """
    m, n = graphs.shape[0], graphs.shape[1]
    if m < 2:
        return graphs.sum() * 0.0
    p = (torch.ones(m, n, dtype=torch.bool, device=graphs.device) if present is None
         else present.bool())
    total = graphs.sum() * 0.0
    for a in range(m):
        for b in range(a + 1, m):
            rows = (p[a] & p[b]).to(graphs.dtype)
            cnt = rows.sum()
            diff = ((graphs[a] - graphs[b]).pow(2).sum(1) * rows).sum()
            total = total + diff / cnt.clamp_min(1.0).pow(2)
    return total * 2.0 / (m * (m - 1))


def masked_softmax(scores: Tensor, mask: Tensor, mode: str = "masked") -> Tensor:
    """Row softmax restricted to the edges of ``mask`` (Sec. 4.3, structure-aware attention).

    Args:
        scores: ``[N, K]`` attention logits ``Q K^T / sqrt(d_c)``.
        mask: ``[N, K]`` bool edge set.
        mode: ``masked`` (softmax over the edges only; rows without an edge are zero) or
            ``literal`` (``softmax(M * softmax(scores))``, the formula as printed, where
            non-edges keep weight ``exp(0)``).

    Returns:
        ``[N, K]`` attention, rows summing to 1 (``masked``: rows with at least one edge).
    """
    if mode == "literal":
        return torch.softmax(mask.to(scores.dtype) * torch.softmax(scores, dim=-1), dim=-1)
    if mode != "masked":
        raise ValueError(f"mode must be 'masked' or 'literal', got {mode!r}")
    linked = mask.any(-1, keepdim=True)
    # Rows without an edge would be softmax(-inf, ...) = NaN, whose gradient is NaN even
    # where the output is masked away: give them finite scores, then zero them.
    filled = torch.where(linked, scores.masked_fill(~mask, float("-inf")),
                         torch.zeros_like(scores))
    att = torch.softmax(filled, dim=-1)
    return torch.where(linked, att, torch.zeros_like(att))


def diffusion_coefficients(xi: float, steps: int, normalize: bool = True,
                           device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """``sigma_t = xi (1 - xi)^t`` for ``t = 0..T`` (Sec. 4.3).

    The infinite series sums to 1; truncated at ``T`` it sums to ``1 - (1 - xi)^(T+1)``,
    so ``normalize`` rescales the kept terms to sum to 1 and the truncated operator stays
    row-stochastic (the property the paper's remark relies on).

    Args:
        xi: Decay rate in (0, 1); larger emphasises near hops.
        steps: Truncation step T (``T = 0`` keeps only the identity).
        normalize: Rescale the truncated coefficients to sum to 1.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        ``[T + 1]`` coefficients.
    """
    if not 0.0 < xi < 1.0:
        raise ValueError(f"xi must be in (0, 1), got {xi}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    t = torch.arange(steps + 1, device=device, dtype=dtype)
    sig = xi * (1.0 - xi) ** t
    return sig / sig.sum() if normalize else sig


def diffuse(att: Tensor, h: Tensor, coeffs: Tensor) -> Tensor:
    """``(sum_t sigma_t A^t) h`` by repeated products (never forms the powers).

    Args:
        att: ``[N, N]`` attention ``A``.
        h: ``[N, d]`` features.
        coeffs: ``[T + 1]`` from :func:`diffusion_coefficients`.

    Returns:
        ``[N, d]``.
    """
    out = coeffs[0] * h
    cur = h
    for t in range(1, coeffs.shape[0]):
        cur = att @ cur
        out = out + coeffs[t] * cur
    return out


def diffusion_matrix(att: Tensor, coeffs: Tensor) -> Tensor:
    """The dense diffusion operator ``A~ = sum_t sigma_t A^t`` (tests and diagnostics)."""
    eye = torch.eye(att.shape[0], device=att.device, dtype=att.dtype)
    return diffuse(att, eye, coeffs)


def dirichlet_energy(features: Tensor, graph: Tensor, weighted: bool = False) -> Tensor:
    """Dirichlet energy (Appendix C, Definition 1):
    ``E(F) = 1/|V| sum_i sum_{j in N_i} ||F_i - F_j||^2``.

    Over-smoothing drives it to 0 (neighbours become identical); Table 5 compares it for
    diffusion attention and GAT-style stacking.

    Args:
        features: ``[N, d]`` node features.
        graph: ``[N, N]`` adjacency; ``N_i = {j != i : graph_ij > 0}``.
        weighted: Weight each edge by ``graph_ij`` instead of counting it once.

    Returns:
        Scalar energy.
    """
    n = features.shape[0]
    edges = (graph > 0) & ~torch.eye(n, dtype=torch.bool, device=graph.device)
    w = graph * edges if weighted else edges.to(features.dtype)
    return (w * pairwise_sq_dists(features)).sum() / max(n, 1)
