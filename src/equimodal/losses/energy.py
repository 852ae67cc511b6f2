"""Modality energies and their equilibrium objectives (EBMC, He et al., Eq. 8-12, 20-40).

Energies are computed per sample (``[B]``); a modality's energy ``E(m)`` is their mean over
the samples where the modality is present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def squared_norm(z: Tensor, reduction: str = "sum") -> Tensor:
    """Per-sample ``||z_i||_2^2`` (``sum``, the paper) or its mean over features (``mean``).

    Args:
        z: ``[B, D]`` (extra trailing dims are flattened).
        reduction: ``sum`` or ``mean`` over features.

    Returns:
        ``[B]``.
    """
    sq = z.reshape(z.shape[0], -1).pow(2)
    if reduction == "sum":
        return sq.sum(1)
    if reduction == "mean":
        return sq.mean(1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def categorical_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``H(p) = -sum_y p(y) log p(y)`` of ``p = softmax(logits / T)`` per sample (Eq. 9).

    Args:
        logits: ``[B, C]``.
        temperature: Softmax temperature.

    Returns:
        ``[B]`` entropies in nats.
    """
    logp = F.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def modality_energy(
    z: Tensor | None,
    task_loss: Tensor | None,
    uncertainty: Tensor | None,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    norm_reduction: str = "sum",
) -> Tensor:
    """Per-sample modality energy ``e = alpha ||z||^2 + beta l + gamma u`` (Eq. 8 / 20).

    A term given as ``None`` is left out (Table 7 ablations).

    Args:
        z: ``[B, D]`` latent representation of the modality.
        task_loss: ``[B]`` per-sample modality-specific task loss ``l_m``.
        uncertainty: ``[B]`` per-sample predictive uncertainty ``u_m`` (Eq. 9).
        alpha: Weight of the norm term.
        beta: Weight of the loss term.
        gamma: Weight of the uncertainty term.
        norm_reduction: See :func:`squared_norm`.

    Returns:
        ``[B]`` energies.
    """
    terms: list[Tensor] = []
    if z is not None:
        terms.append(alpha * squared_norm(z, norm_reduction))
    if task_loss is not None:
        terms.append(beta * task_loss)
    if uncertainty is not None:
        terms.append(gamma * uncertainty)
    if not terms:
        raise ValueError("modality_energy needs at least one term")
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x [B]`` over ``mask [B]`` (zero when the mask is empty)."""
    if mask is None:
        return x.mean()
    w = mask.to(x.dtype)
    return (x * w).sum() / w.sum().clamp_min(1.0)


def energy_gap_loss(energies: Tensor) -> Tensor:
    """``L_gap = sum_{m < m'} (E(m) - E(m'))^2`` over unordered modality pairs (Eq. 27 / 39).

    Eq. 10 writes the sum over all ordered pairs ``(i, j)``, which is twice this value.

    Args:
        energies: ``[M]`` modality energies.

    Returns:
        Scalar loss (zero for fewer than two modalities).

    Example:
        >>> import torch
        >>> float(energy_gap_loss(torch.tensor([1.0, 2.0, 4.0])))  # 1 + 9 + 4
        14.0
    """
    if energies.dim() != 1:
        raise ValueError(f"energies must be [M], got {tuple(energies.shape)}")
    m = energies.shape[0]
    if m < 2:
        return energies.sum() * 0.0
    diff = energies[:, None] - energies[None, :]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=energies.device), diagonal=1)
    return diff[upper].pow(2).sum()


def energy_gradient_penalty(
    energy: Tensor | list[Tensor],
    z: Tensor | list[Tensor],
    create_graph: bool = True,
) -> list[Tensor]:
    """Per-sample ``||d e_i / d z_i||^2`` for the energy-gradient term of Eq. 12 / 31.

    ``energy[k]`` must be a per-sample energy ``[B]`` whose sample ``i`` depends only on row
    ``i`` of ``z[k]`` (true for per-sample encoders and heads), so the gradient of the summed
    energy gives every sample's own gradient at once. With ``create_graph=True`` the result
    is differentiable (double backpropagation): minimising it backpropagates through the
    energy's Hessian, the ``2 delta H_m g_m`` term of Eq. 40.

    Args:
        energy: One ``[B]`` tensor or a list (one per modality).
        z: The matching ``[B, D]`` representations (must be part of the graph).
        create_graph: Keep the graph of the gradient (needed to train on the penalty).

    Returns:
        One ``[B]`` tensor of squared gradient norms per modality (zeros where an energy does
        not depend on its ``z``).
    """
    energies = [energy] if isinstance(energy, Tensor) else list(energy)
    zs = [z] if isinstance(z, Tensor) else list(z)
    if len(energies) != len(zs):
        raise ValueError(f"{len(energies)} energies for {len(zs)} representations")
    total = energies[0].sum()
    for e in energies[1:]:
        total = total + e.sum()
    grads = torch.autograd.grad(total, zs, create_graph=create_graph, allow_unused=True)
    out = []
    for zk, g in zip(zs, grads, strict=True):
        if g is None:
            out.append(zk.new_zeros(zk.shape[0]))
        else:
            out.append(g.reshape(g.shape[0], -1).pow(2).sum(1))
    return out
