"""Prediction-consistency losses: Jensen-Shannon divergence between categorical outputs.

UDI (Wang et al.) aligns a follower's predictions with the anchor's (or, for three or more
modalities, with the fused output of the branches trained before it) through
``L_con = 1/2 [KL(p || (p+q)/2) + KL(q || (p+q)/2)]`` (Eq. 4-5, Eq. 26). Pure functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def js_divergence(
    p_logits: Tensor,
    q_logits: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Jensen-Shannon divergence between ``softmax(p_logits)`` and ``softmax(q_logits)``.

    Computed in log space (``log H = logsumexp(log p, log q) - log 2``) so it stays finite
    for saturated predictions. Gradients flow into both arguments; detach the guide.

    Args:
        p_logits: ``[N, C]`` logits of the first distribution (the anchor / guide, Eq. 4).
        q_logits: ``[N, C]`` logits of the second distribution (the follower).
        mask: Optional ``[N]`` bool rows to use.
        reduction: ``mean`` over rows (default), ``sum`` (Eq. 5 as written) or ``none``.

    Returns:
        Scalar (or ``[N]`` for ``none``) in ``[0, log 2]`` per row.

    Example:
        >>> import torch
        >>> float(js_divergence(torch.tensor([[9., -9.]]), torch.tensor([[-9., 9.]])))
        0.6931...
    """
    logp = torch.log_softmax(p_logits.float(), dim=-1)
    logq = torch.log_softmax(q_logits.float(), dim=-1)
    logh = torch.logaddexp(logp, logq) - math.log(2.0)
    per = 0.5 * (logp.exp() * (logp - logh)).sum(-1) + 0.5 * (logq.exp() * (logq - logh)).sum(-1)
    if mask is not None:
        per = per[mask]
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    if per.numel() == 0:
        return (p_logits.float().sum() + q_logits.float().sum()) * 0.0
    return per.mean()


def predictive_entropy(logits: Tensor) -> Tensor:
    """Per-row entropy ``H(y) = -sum_c y_c log y_c`` of ``softmax(logits)`` (UDI Sec. 3.1,
    the anchor tie-break).

    Args:
        logits: ``[N, C]``.

    Returns:
        ``[N]`` entropies in nats.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
