"""Helpers of the modality-imbalance baselines: discrepancy scores and ratios, gradient
modulation coefficients (OGM-GE, OPM, AGM), Shapley mono-modal responses (AGM), the two-task
min-norm solver (MMPareto) and the orthogonal-projection update (MLA / OWM).

Everything here is a function of tensors (plus :func:`scale_grad`, an identity whose backward
scales, and :func:`isolated_grads`, which keeps a micro-batch's gradients apart under
accumulation); the methods in ``equimodal.methods`` decide when to call them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# ----- discrepancy scores -------------------------------------------------------------------


def true_class_score(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean softmax probability of the true class, ``s = 1/N sum_i softmax(o_i)[y_i]``.

    OGM-GE (Peng et al. 2022, Eq. 8-9) and OPM/OGM (Wei et al. 2024) sum over the batch; the
    mean gives the same ratios when every sample has every modality and stays comparable when
    some samples miss one (only rows of ``mask`` count).

    Args:
        logits: ``[B, C]`` unimodal logits.
        target: ``[B]`` class indices.
        mask: Optional ``[B]`` bool rows to use (e.g. the modality is present).

    Returns:
        A detached scalar (``0`` when no row is used).
    """
    with torch.no_grad():
        p = torch.softmax(logits.float(), dim=-1).gather(1, target.long().view(-1, 1)).squeeze(1)
        if mask is not None:
            p = p[mask.bool()]
        return p.mean() if p.numel() else p.new_zeros(())


def discrepancy_ratios(scores: Tensor, eps: float = 1e-12) -> Tensor:
    """``rho_m = s_m / min_k s_k``: how far each modality is ahead of the weakest one.

    For two modalities the dominant one gets OGM-GE's ``rho = s_dominant / s_other`` (Eq. 9)
    and the other gets 1 (no modulation); for three or more it is the rule of the OGM-GE
    reference code (each score against the minimum).
    """
    return scores / scores.min().clamp_min(eps)


def ogm_coefficients(ratios: Tensor, alpha: float, minus_one: bool = False) -> Tensor:
    """OGM coefficients ``k_m = 1 - tanh(alpha * rho_m)`` where ``rho_m > 1``, else 1 (Eq. 10).

    Args:
        ratios: ``[M]`` discrepancy ratios (:func:`discrepancy_ratios`).
        alpha: Modulation strength.
        minus_one: Use ``rho - 1`` inside the tanh (the coefficient then starts at 1 when the
            modalities are balanced); the paper and its code use ``rho``.
    """
    arg = torch.relu(ratios - 1.0) if minus_one else torch.relu(ratios)
    return torch.where(ratios > 1.0, 1.0 - torch.tanh(alpha * arg), torch.ones_like(ratios))


def opm_drop_probabilities(ratios: Tensor, q_base: float, lam: float) -> Tensor:
    """OPM drop probabilities ``q_m = q_base (1 + lam tanh(relu(rho_m - 1)))`` for the
    dominant modalities (``rho_m > 1``), 0 otherwise, clipped to ``[0, 1]`` (Wei et al. 2024)."""
    t = torch.tanh(torch.relu(ratios - 1.0))
    q = torch.where(t > 0, q_base * (1.0 + lam * t), torch.zeros_like(t))
    return q.clamp(0.0, 1.0)


@torch.no_grad()
def modulate_grads_(params: Sequence[nn.Parameter], coeff: float, noise: bool,
                    generator: torch.Generator | None = None) -> None:
    """OGM(-GE) on parameter gradients, in place: ``g <- k g (+ N(0, std(g) + 1e-8))``.

    The generalisation-enhancement noise (Sec. 3.3) has, per parameter tensor, the standard
    deviation of that tensor's gradient (+1e-8) as in the reference code; tensors with a single
    element (whose std is undefined) get standard deviation 1e-8.
    """
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if noise:
            std = float(g.float().std()) if g.numel() > 1 else 0.0
            dev = g.device if generator is None else generator.device
            eps = torch.randn(g.shape, generator=generator, device=dev, dtype=torch.float32)
            p.grad = g * coeff + eps.to(g.device, g.dtype) * (std + 1e-8)
        else:
            g.mul_(coeff)


@contextlib.contextmanager
def isolated_grads(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Keep already accumulated ``.grad`` aside while a block runs, then add it back.

    Gradient modulation must scale only the current micro-batch's gradients, not the ones
    accumulated from earlier micro-batches (``train.accum_steps > 1``).
    """
    saved = {id(p): p.grad for p in params if p.grad is not None}
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p in params:
            old = saved.get(id(p))
            if old is None:
                continue
            p.grad = old if p.grad is None else p.grad + old


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.coeff, None


def scale_grad(x: Tensor, coeff: float) -> Tensor:
    """``x`` unchanged, but gradients flowing back through it are multiplied by ``coeff``
    (AGM's backward hooks on the mono-modal responses)."""
    out: Tensor = _ScaleGrad.apply(x, float(coeff))
    return out


# ----- AGM ------------------------------------------------------------------------------------


def shapley_responses(values: dict[frozenset[int], Tensor], n: int) -> list[Tensor]:
    """Shapley mono-modal responses ``phi_m = sum_S |S|!(n-|S|-1)!/n! [v(S+m) - v(S)]``.

    ``values`` maps every non-empty coalition (a frozenset of modality indices) to the fused
    output with the other modalities zeroed. As in the AGM reference code the empty coalition
    is worth 0, so ``sum_m phi_m = v(all)`` (efficiency) and for two modalities
    ``phi_a = (v(ab) - v(b) + v(a)) / 2``.
    """
    out = []
    for m in range(n):
        others = [k for k in range(n) if k != m]
        total: Tensor | None = None
        for size in range(n):
            w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for combo in itertools.combinations(others, size):
                s = frozenset(combo)
                with_m = values[s | {m}]
                term = with_m - values[s] if s else with_m
                total = w * term if total is None else total + w * term
        assert total is not None
        out.append(total)
    return out


def agm_ratios(scores: Tensor) -> Tensor:
    """AGM imbalance ratios ``r_m = exp(M/(M-1) (mean_k s_k - s_m))`` of per-modality
    cross-entropies ``s`` (lower loss = stronger modality = larger ratio); for two modalities
    ``r_a = exp(s_v - s_a)`` as in the reference code."""
    m = scores.numel()
    return torch.exp(m / (m - 1) * (scores.mean() - scores))


def agm_coefficients(scores: Tensor, running: Tensor, alpha: float, cap: float = 10.0) -> Tensor:
    """AGM coefficients ``c_m = exp(alpha * min(eta_m - r_m, cap))``: ``r`` from the batch
    scores, the target ``eta`` from the running average of the scores; a modality ahead of
    its running position is slowed down, one behind it is sped up."""
    diff = agm_ratios(running) - agm_ratios(scores)
    return torch.exp(alpha * diff.clamp(max=cap))


# ----- MMPareto -------------------------------------------------------------------------------


def flat_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two gradient lists seen as one flat vector."""
    return sum(((x.float() * y.float()).sum() for x, y in zip(a, b, strict=True)),
               torch.zeros((), device=a[0].device))


def min_norm_weights(g1: Sequence[Tensor], g2: Sequence[Tensor]) -> tuple[float, float]:
    """Weights ``(w, 1 - w)`` of the minimum-norm point of the segment between two gradients
    (MGDA for two tasks, Sener & Koltun 2018), with the 0.999 / 0.001 end points of the
    reference ``MinNormSolver``. The combination has inner product ``||d||^2 >= 0`` with both
    gradients when the optimum is interior."""
    v11, v12, v22 = float(flat_dot(g1, g1)), float(flat_dot(g1, g2)), float(flat_dot(g2, g2))
    if v12 >= v11:
        w = 0.999
    elif v12 >= v22:
        w = 0.001
    else:
        w = (v22 - v12) / max(v11 + v22 - 2.0 * v12, 1e-20)
    return w, 1.0 - w


# ----- MLA (orthogonal weight modification) ---------------------------------------------------


def owm_update(P: Tensor, r: Tensor, alpha: float) -> Tensor:
    """One recursive-least-squares step of the OWM projector (Zeng et al. 2019), used by MLA:
    ``k = P r^T``, ``P <- P - k k^T / (alpha + r k)`` for the mean input ``r`` ``[1, H]``."""
    r = r.reshape(1, -1).to(P.dtype)
    k = P @ r.t()
    return P - (k @ k.t()) / (alpha + (r @ k)).clamp_min(1e-12)


def entropy_fusion_weights(logits: Sequence[Tensor], present: Sequence[Tensor] | None = None
                           ) -> Tensor:
    """MLA test-time fusion weights ``w_m = exp(max_k e_k - e_m) / sum_j exp(max_k e_k - e_j)``
    (``e_m`` = per-sample predictive entropy of modality m): confident modalities count more.

    Returns:
        ``[B, M]`` weights summing to 1 over the present modalities of each sample.
    """
    ent = []
    for lg in logits:
        logp = torch.log_softmax(lg.float(), dim=-1)
        ent.append(-(logp.exp() * logp).sum(-1))
    e = torch.stack(ent, dim=1)  # [B, M]
    score = e.max(dim=1, keepdim=True).values - e
    if present is not None:
        mask = torch.stack([p.bool() for p in present], dim=1)
        score = score.masked_fill(~mask, float("-inf"))
        # A sample with no modality present keeps uniform weights (its logits are all bias).
        score = torch.where(mask.any(1, keepdim=True), score, torch.zeros_like(score))
    return torch.softmax(score, dim=1)
