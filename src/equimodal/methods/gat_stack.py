"""GAT-style stacking: the over-smoothing baseline of SCOPE's Table 5.

SCOPE (Yang et al., Sec. 5.3) compares its diffusion attention with "a graph attention
network (GAT)-style stacking baseline" at equal depth ``T``: instead of one attention
matrix diffused over ``T`` hops, ``T`` graph-attention layers are stacked, each recomputing
GAT's additive attention ``e_ij = LeakyReLU(a_s . W h_i + a_d . W h_j)`` on the current
features and aggregating over the graph's edges. Both operators aggregate un-projected
features, so they act on the same feature space and their Dirichlet energies compare
directly. Used by SCOPE as ``fusion="gat_stack"`` (in place of balanced fusion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.losses.graphs import masked_softmax


class GATLayerAttention(nn.Module):
    """GAT's additive attention coefficients for one layer.

    Args:
        dim: Feature size.
        negative_slope: LeakyReLU slope (GAT: 0.2).
    """

    def __init__(self, dim: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        self.a_src = nn.Parameter(torch.empty(dim))
        self.a_dst = nn.Parameter(torch.empty(dim))
        bound = 1.0 / dim**0.5
        nn.init.uniform_(self.a_src, -bound, bound)
        nn.init.uniform_(self.a_dst, -bound, bound)
        self.negative_slope = negative_slope

    def forward(self, q: Tensor, keys: Tensor, mask: Tensor, mode: str = "masked") -> Tensor:
        """Attention ``[n, K]`` of queries ``q [n, d]`` over ``keys [K, d]`` on ``mask``."""
        e = (self.proj(q) @ self.a_src)[:, None] + (self.proj(keys) @ self.a_dst)[None, :]
        return masked_softmax(F.leaky_relu(e, self.negative_slope), mask, mode)


class GATStack(nn.Module):
    """``T`` stacked GAT-style layers ``h <- A_l(h) h`` over a fixed graph (no residual).

    Args:
        dim: Feature size.
        layers: Depth ``T`` (``0`` returns the input).
        mask_mode: ``masked`` or ``literal`` (see :func:`masked_softmax`).
    """

    def __init__(self, dim: int, layers: int, mask_mode: str = "masked") -> None:
        super().__init__()
        self.layers = nn.ModuleList(GATLayerAttention(dim) for _ in range(layers))
        self.mask_mode = mask_mode

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """Propagated features ``[N, d]`` of ``h [N, d]`` on the edge set ``mask [N, N]``."""
        for layer in self.layers:
            h = layer(h, h, mask, self.mask_mode) @ h
        return h

    def bank_states(self, bank: Tensor, bank_mask: Tensor) -> list[Tensor]:
        """Bank features after 0..T layers over the bank's own graph ``bank_mask``."""
        states = [bank]
        for layer in self.layers:
            bank = layer(bank, bank, bank_mask, self.mask_mode) @ bank
            states.append(bank)
        return states

    def bank_output(self, states: list[Tensor]) -> Tensor:
        """The bank's own propagated features (the last layer)."""
        return states[-1]

    def query_forward(self, q: Tensor, q_mask: Tensor, states: list[Tensor]) -> Tensor:
        """Propagate queries attached to a reference bank (inference).

        Queries link to bank nodes only (``q_mask [n, Nb]``); the bank propagates over its
        own graph (``states`` from :meth:`bank_states`) and never sees the queries, so a
        query's output does not depend on the other queries. This equals running
        :meth:`forward` on the graph ``bank + query`` and reading the query's row; a query
        without bank neighbours keeps its self-loop (it is returned unchanged).
        """
        linked = q_mask.any(1, keepdim=True)
        for layer, bank in zip(self.layers, states, strict=False):
            q = torch.where(linked, layer(q, bank, q_mask, self.mask_mode) @ bank, q)
        return q
