"""MI-guided disentanglement through a similarity surrogate (SCOPE, Sec. 4.1, Eq. 3).

Maximising ``sum_{m != n} E_i I(h_i^m; h_i^n) - E_{i != j} I(h_i^m; h_j^n)`` is replaced by
pushing every cross-modal similarity matrix ``S^{m,n}`` towards the identity:
``L_dis = L_sim + L_diff`` with ``L_sim = sum_{m != n} sum_i (1 - s_ii)^2`` and
``L_diff = sum_{m != n} sum_{i != j} s_ij^2`` (Appendix A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("sum", "mean")


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``S_ij = cos(a_i, b_j)`` for ``a [N, d]`` and ``b [K, d]`` -> ``[N, K]``."""
    return F.normalize(a, dim=-1, eps=eps) @ F.normalize(b, dim=-1, eps=eps).t()


def similarity_surrogate(
    feats: Tensor, present: Tensor | None = None, reduction: str = "sum"
) -> tuple[Tensor, Tensor]:
    """``(L_sim, L_diff)`` of the dependence surrogate over all ordered pairs ``m != n``.

    Args:
        feats: ``[M, N, d]`` per-modality representations ``h^m``.
        present: ``[M, N]`` bool; entries involving an absent modality are skipped.
        reduction: ``sum`` (the paper's sums over samples and pairs) or ``mean`` (each term
            averaged over its valid entries, so its scale does not grow with ``N^2``).

    Returns:
        ``(L_sim, L_diff)`` scalars (0 with fewer than two modalities).

    Example:
        >>> h = torch.eye(3).expand(2, 3, 3)  # identical, mutually orthogonal samples
        >>> [float(v) for v in similarity_surrogate(h)]
        [0.0, 0.0]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    m, n = feats.shape[0], feats.shape[1]
    zero = feats.sum() * 0.0
    if m < 2:
        return zero, zero
    p = (torch.ones(m, n, dtype=torch.bool, device=feats.device) if present is None
         else present.bool()).to(feats.dtype)
    normed = F.normalize(feats, dim=-1, eps=1e-8)
    eye = torch.eye(n, device=feats.device, dtype=feats.dtype)
    sim_sum, diff_sum, sim_cnt, diff_cnt = zero, zero, zero, zero
    for a in range(m):
        for b in range(m):
            if a == b:
                continue
            s = normed[a] @ normed[b].t()
            w = p[a][:, None] * p[b][None, :]
            sim_sum = sim_sum + ((1.0 - torch.diagonal(s)).pow(2) * torch.diagonal(w)).sum()
            diff_sum = diff_sum + (s.pow(2) * w * (1.0 - eye)).sum()
            sim_cnt = sim_cnt + torch.diagonal(w).sum()
            diff_cnt = diff_cnt + (w * (1.0 - eye)).sum()
    if reduction == "sum":
        return sim_sum, diff_sum
    return sim_sum / sim_cnt.clamp_min(1.0), diff_sum / diff_cnt.clamp_min(1.0)
