"""Conditional cross-modal information (InfoBridge, Li et al.) as pure functions.

InfoBridge ("Balanced Multimodal Integration through Conditional Dependency Modeling")
trains a critic ``h(z^a, z^b, T) -> [0, 1]`` to tell positive pairs (two modalities of one
sample, drawn from ``p(z^a, z^b | T)``) from negative pairs (two samples, drawn from
``p(z^a | T) p(z^b | T)``) with the prior-weighted binary NCE objective (Eq. 1 / 7)

    L_NCE = E_pos[log h] + (N0 / N1) E_neg[log(1 - h)].

Its maximiser is the posterior ``h* = r / (r + N0/N1)`` with ``r`` the conditional density
ratio (Eq. 3, 6), i.e. ``logit h* = log r + gamma`` with the *protective margin*
``gamma = log(N1 / N0)`` (Eq. 5; ``-log 5`` for N0 = 5, N1 = 1). Taking Eq. 4 in expectation
gives the estimate ``I(z^a; z^b | T) >= E_pos[log h*] - gamma`` (CMC's bound), which never
exceeds ``log(N0 / N1)``: the margin caps how much alignment the objective can reward.

Sign note: Eq. 5 and 8 print ``+ log(N1/N0)``; the inequality of Eq. 4 they are derived from
gives ``- log(N1/N0) = + log(N0/N1)`` (with the printed sign every estimate would be below
``-log 5 < 0``). :func:`nce_mi_estimate` and :func:`nce_mi_lower_bound` use the derived sign.

Also here: the context builders of Table 3 (k-means in torch, quantised similarity) and the
negative sampler (same-context negatives from a pool).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# ----- objective and bounds -----------------------------------------------------------------
def protective_margin(n_negatives: int, n_positives: int = 1) -> float:
    """The protective margin ``gamma = log(N1 / N0)`` of Eq. 5 / 8.

    Args:
        n_negatives: ``N0``, negatives per positive group.
        n_positives: ``N1``, positives per group (1 in the paper).

    Returns:
        ``log(N1 / N0)`` (``-log 5 ~ -1.609`` with the paper's N0 = 5, N1 = 1).

    Example:
        >>> round(protective_margin(5), 3)
        -1.609
    """
    if n_negatives < 1 or n_positives < 1:
        raise ValueError(f"N0 and N1 must be >= 1, got {n_negatives}, {n_positives}")
    return math.log(n_positives / n_negatives)


def conditional_nce_objective(
    pos_logits: Tensor,
    neg_logits: Tensor,
    prior_ratio: float,
    neg_mask: Tensor | None = None,
) -> Tensor:
    """``L_NCE`` of Eq. 1 / 7 (to be *maximised*), with ``h = sigmoid(logit)``.

    ``E_pos[log h] + prior_ratio * E_neg[log(1 - h)]`` where the negative expectation is the
    mean over every negative pair, so ``prior_ratio = N0 / N1`` is the weight of Eq. 1 and the
    maximiser is ``h* = p / (p + prior_ratio * q)`` (Eq. 3, 6).

    Args:
        pos_logits: ``[N]`` critic logits of positive pairs.
        neg_logits: ``[N, K]`` critic logits of the negatives of each positive.
        prior_ratio: ``N0 / N1`` (``1`` gives the unweighted, margin-free objective).
        neg_mask: Optional ``[N]`` bool: rows whose negatives are valid (others ignored in
            the negative term, e.g. when no candidate existed).

    Returns:
        Scalar objective (float32), ``<= 0``.

    Example:
        >>> import torch
        >>> round(float(conditional_nce_objective(torch.zeros(2), torch.zeros(2, 3), 1.0)), 4)
        -1.3863
    """
    if neg_logits.dim() != 2 or neg_logits.shape[0] != pos_logits.shape[0]:
        raise ValueError(
            f"neg_logits must be [N, K] with N = {pos_logits.shape[0]}, "
            f"got {tuple(neg_logits.shape)}"
        )
    pos = F.logsigmoid(pos_logits.float())
    neg = F.logsigmoid(-neg_logits.float())  # log(1 - sigmoid(s)) = logsigmoid(-s)
    pos_term = pos.mean() if pos.numel() else pos.sum()
    if neg_mask is not None:
        neg = neg[neg_mask.to(torch.bool)]
    neg_term = neg.mean() if neg.numel() else neg.sum()
    return pos_term + prior_ratio * neg_term


def nce_mi_estimate(pos_logits: Tensor, margin: float) -> Tensor:
    """Conditional-MI estimate ``E_pos[log h] - gamma`` (Eq. 4 in expectation).

    For the optimal critic of :func:`conditional_nce_objective` this equals
    ``I - E_pos[log(1 + r * N1/N0)] <= I`` and approaches ``I`` as ``N0`` grows; for any
    critic it is ``<= -gamma = log(N0 / N1)``. It is only a bound for a (near-)optimal critic:
    use :func:`nce_mi_lower_bound` for a guarantee with any critic.

    Args:
        pos_logits: ``[N]`` critic logits of positive pairs (margin already included).
        margin: ``gamma = log(N1 / N0)`` the logits were shifted by (``0`` without margin).

    Returns:
        Scalar estimate in nats.
    """
    return F.logsigmoid(pos_logits.float()).mean() - margin


def nce_mi_lower_bound(
    pos_logits: Tensor, neg_logits: Tensor, prior_ratio: float, neg_mask: Tensor | None = None
) -> Tensor:
    """Eq. 8 with the derived sign: ``log(N0 / N1) + L_NCE(h) <= I`` for *every* critic.

    Since ``L_NCE(h) <= L_NCE(h*)`` and the value at ``h*`` is ``<= I``, this holds for any
    ``h``; the negative term makes it looser than :func:`nce_mi_estimate` (by about one nat
    for large ``N0``).

    Args:
        pos_logits: ``[N]`` positive logits. neg_logits: ``[N, K]`` negative logits.
        prior_ratio: ``N0 / N1`` used to weight the negatives (must match the critic's).
        neg_mask: Optional ``[N]`` valid-negative rows.

    Returns:
        Scalar bound in nats.
    """
    obj = conditional_nce_objective(pos_logits, neg_logits, prior_ratio, neg_mask)
    return obj + math.log(prior_ratio)


# ----- negatives ----------------------------------------------------------------------------
def sample_negative_indices(
    anchor_context: Tensor,
    pool_context: Tensor,
    n_negatives: int,
    exclude: Tensor | None = None,
    same_context: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``n_negatives`` pool entries per anchor (with replacement).

    Negatives follow ``p(z^a | T) p(z^b | T)`` (Sec. 3): with ``same_context`` each anchor's
    candidates are the pool entries of its own context. An anchor with no such candidate
    falls back to any other entry (flagged); one with no candidate at all is flagged invalid.

    Args:
        anchor_context: ``[N]`` long contexts of the anchors.
        pool_context: ``[P]`` long contexts of the candidates.
        n_negatives: ``N0``.
        exclude: ``[N, P]`` bool, True where a candidate is the anchor's own sample (its
            positive partner, possibly a stale copy in a memory bank): never drawn.
        same_context: Restrict candidates to the anchor's context.
        generator: Optional generator (on the pool's device) for reproducible draws.

    Returns:
        ``(index [N, N0], valid [N] bool, fallback [N] bool)``.
    """
    n, p = anchor_context.shape[0], pool_context.shape[0]
    device = pool_context.device
    if exclude is None:
        allowed = torch.ones(n, p, dtype=torch.bool, device=device)
    else:
        allowed = ~exclude.to(torch.bool)
    fallback = torch.zeros(n, dtype=torch.bool, device=device)
    weights = allowed
    if same_context:
        match = allowed & (anchor_context[:, None] == pool_context[None, :])
        fallback = ~match.any(1) & allowed.any(1)
        weights = torch.where(fallback[:, None], allowed, match)
    valid = weights.any(1)
    if n == 0 or p == 0:
        return torch.zeros(n, n_negatives, dtype=torch.long, device=device), valid, fallback
    # Rows without any candidate draw anything; ``valid`` removes them from the loss.
    weights = weights | ~valid[:, None]
    index = torch.multinomial(weights.float(), n_negatives, replacement=True, generator=generator)
    return index, valid, fallback


# ----- context builders (Table 3) -----------------------------------------------------------
def assign_clusters(x: Tensor, centroids: Tensor) -> Tensor:
    """Nearest-centroid assignment ``argmin_k ||x - c_k||^2`` as ``[N]`` long."""
    d2 = (x.float().pow(2).sum(1, keepdim=True) - 2.0 * x.float() @ centroids.float().t()
          + centroids.float().pow(2).sum(1)[None, :])
    return d2.argmin(1)


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) in torch.

    Args:
        x: ``[N, D]`` points. k: Number of centroids.
        generator: CPU generator for reproducible seeding.

    Returns:
        ``[k, D]`` initial centroids (repeats points when ``N < k``).
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans needs at least one point")
    xf = x.float()
    first = int(torch.randint(n, (1,), generator=generator))
    cents = [xf[first]]
    d2 = (xf - xf[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:  # every point coincides with a centroid: draw uniformly
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial((d2 / total).cpu(), 1, generator=generator))
        cents.append(xf[idx])
        d2 = torch.minimum(d2, (xf - xf[idx]).pow(2).sum(1))
    return torch.stack(cents)


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
) -> Tensor:
    """Lloyd's k-means in torch (deterministic one-hot updates, no scatter atomics).

    An emptied cluster is re-seeded at the point farthest from its centroid, so every one
    of the ``k`` contexts stays in use.

    Args:
        x: ``[N, D]`` points. k: Clusters.
        iters: Maximum Lloyd iterations.
        init: ``[k, D]`` warm start (e.g. last epoch's centroids); k-means++ when ``None``.
        generator: CPU generator for the k-means++ seeding.
        tol: Stop when the centroids move less than this (max norm).

    Returns:
        ``[k, D]`` centroids (float32).
    """
    xf = x.float()
    c = kmeans_plusplus(xf, k, generator) if init is None else init.float().clone()
    for _ in range(iters):
        assign = assign_clusters(xf, c)
        onehot = F.one_hot(assign, k).to(xf.dtype)  # [N, k]
        counts = onehot.sum(0)
        new = (onehot.t() @ xf) / counts.clamp_min(1.0)[:, None]
        empty = counts == 0
        if bool(empty.any()):
            far = (xf - c[assign]).pow(2).sum(1)
            order = far.argsort(descending=True)
            for j, ci in enumerate(empty.nonzero().flatten().tolist()):
                new[ci] = xf[order[j % xf.shape[0]]]
        shift = float((new - c).norm(dim=1).max())
        c = new
        if shift < tol:
            break
    return c


def quantize_similarity(values: Tensor, levels: int = 3, reference: Tensor | None = None) -> Tensor:
    """Quantise scores into ``levels`` equal-mass bins (the 3-level "Retrieval" T of Table 3).

    Args:
        values: ``[N]`` scores to quantise (e.g. cosine similarity of a sample's two
            modalities).
        levels: Number of levels.
        reference: Scores that define the quantile thresholds (default: ``values``), so a
            batch and a memory bank share one scale.

    Returns:
        ``[N]`` long levels in ``[0, levels)`` (higher = more similar).
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    ref = (values if reference is None else reference).detach().float()
    if levels == 1 or ref.numel() == 0:
        return torch.zeros_like(values, dtype=torch.long)
    q = torch.linspace(0.0, 1.0, levels + 1, device=ref.device)[1:-1]
    thresholds = torch.quantile(ref, q)
    return torch.bucketize(values.detach().float().contiguous(), thresholds.contiguous())
