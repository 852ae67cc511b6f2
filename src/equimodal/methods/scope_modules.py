"""Network of SCOPE (Yang et al.): encoders, attention-based feature refinement (AFR),
semantic graphs, balanced fusion (BF) with diffusion attention and the loss-weighting MLP.
The objective, the reference bank and the hooks live in :mod:`equimodal.methods.scope`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.losses.graphs import (
    diffuse,
    diffusion_coefficients,
    masked_softmax,
    pairwise_sq_dists,
    semantic_graph,
    semantic_graph_from_dists,
)
from equimodal.methods.gat_stack import GATStack
from equimodal.models.encoders import length_mask, masked_mean
from equimodal.models.multimodal import build_encoders
from equimodal.types import Batch, ModelOutput, TaskInfo

GRAPH_FUSIONS = ("diffusion", "gat_stack")
FUSIONS = (*GRAPH_FUSIONS, "mlp", "mean")


def single_key_attention(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """Attention where each query sees only its own token: the softmax over one key is 1,
    so the output is ``out_proj(v_proj(x))`` exactly (computed without the score matrix)."""
    d = x.shape[-1]
    w_v = attn.in_proj_weight[2 * d:]
    b_v = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
    out: Tensor = attn.out_proj(F.linear(x, w_v, b_v))
    return out


def feed_forward(dim: int, dropout: float) -> nn.Sequential:
    """The position-wise feed-forward layer of the attention blocks (width ``2 d``)."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(2 * dim, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention block over one modality's tokens (AFR, first half).

    Tokens are the frames of a sequence modality or the single feature vector of a vector
    modality (where attention reduces to a learned value/output map), so refinement is
    per sample and never mixes samples.

    Args:
        dim: Width.
        heads: Attention heads (paper: 8).
        dropout: Dropout after the feed-forward layer.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, dropout)

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """Refined tokens ``[B, T, d]`` (``valid [B, T]``: real frames)."""
        valid = valid.clone()
        valid[:, 0] = True  # a sample without frames would make attention NaN
        x = self.norm(tokens)
        if x.shape[1] == 1:
            att = single_key_attention(self.attn, x)
        else:
            att, _ = self.attn(x, x, x, key_padding_mask=~valid, need_weights=False)
        tokens = tokens + att
        return tokens + self.ff(self.norm_ff(tokens))


class CrossModalAttention(nn.Module):
    """Cross-attention over the modality tokens of each sample (AFR, second half).

    Every modality queries all present modalities; the attention a sample's modalities
    receive, averaged over heads and queries, gives its modality weights ``rho`` (they sum
    to 1 over the present modalities and are reused by balanced fusion).

    Args:
        dim: Width.
        heads: Attention heads.
        n_modalities: M.
        dropout: Dropout after the feed-forward layer.
    """

    def __init__(self, dim: int, heads: int, n_modalities: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.zeros(n_modalities, dim))
        nn.init.normal_(self.modality_embedding, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, dropout)

    def forward(self, x: Tensor, present: Tensor, self_only: bool = False) -> tuple[Tensor, Tensor]:
        """Refine ``x [B, M, d]``; ``present [B, M]``.

        Args:
            x: Modality tokens.
            present: Which modalities each sample has.
            self_only: Each modality attends to itself only (the unimodal pass used by the
                unimodal heads, so their features carry no other modality).

        Returns:
            ``(h [B, M, d], rho [B, M])``.
        """
        m = x.shape[1]
        z = self.norm(x + self.modality_embedding)
        if self_only:
            att = single_key_attention(self.attn, z)
            w = torch.eye(m, device=x.device, dtype=x.dtype).expand(x.shape[0], m, m)
        else:
            # A sample without any modality would make attention NaN: let it see everything.
            pad = ~present & present.any(1, keepdim=True)
            att, w = self.attn(z, z, z, key_padding_mask=pad)
        h = x + att
        h = h + self.ff(self.norm_ff(h))
        q = present.to(w.dtype)
        rho = (w * q[:, :, None]).sum(1) / q.sum(1, keepdim=True).clamp_min(1.0)
        return h, rho


class DiffusionAttention(nn.Module):
    """Structure-aware masked attention + diffusion (balanced fusion, Sec. 4.3).

    ``A = masked_softmax(Q K^T / sqrt(d_c))`` on the edges of the fused graph and
    ``A~ h = sum_{t=0..T} sigma_t A^t h`` with ``sigma_t = xi (1 - xi)^t`` (renormalised).

    Args:
        dim: ``d_c``.
        steps: Truncation step ``T`` (paper: 3).
        xi: Decay rate.
        mask_mode: ``masked`` or ``literal`` (see :func:`masked_softmax`).
    """

    def __init__(self, dim: int, steps: int, xi: float, mask_mode: str = "masked") -> None:
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.steps, self.xi, self.mask_mode = steps, xi, mask_mode
        diffusion_coefficients(xi, steps)  # validate early

    def attention(self, q: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """``A [n, K]`` of queries over keys restricted to ``mask``."""
        scores = self.w_q(q) @ self.w_k(keys).t() / math.sqrt(q.shape[-1])
        return masked_softmax(scores, mask, self.mask_mode)

    def coefficients(self, ref: Tensor) -> Tensor:
        """``sigma_0..sigma_T`` on ``ref``'s device and dtype."""
        return diffusion_coefficients(self.xi, self.steps, True, ref.device, ref.dtype)

    def operator(self, h: Tensor, mask: Tensor) -> Tensor:
        """The dense diffusion operator ``A~ [N, N]`` (row-stochastic)."""
        eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
        return diffuse(self.attention(h, h, mask), eye, self.coefficients(h))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``A~ h`` over a mini-batch graph (``mask [N, N]``)."""
        return diffuse(self.attention(h, h, mask), h, self.coefficients(h))

    def bank_states(self, bank: Tensor, bank_mask: Tensor) -> list[Tensor]:
        """``[A^t h_bank for t = 0..T]`` over the bank's own graph ``bank_mask``."""
        att = self.attention(bank, bank, bank_mask)
        states = [bank]
        for _ in range(self.steps):
            states.append(att @ states[-1])
        return states

    def bank_output(self, states: list[Tensor]) -> Tensor:
        """The bank's own ``A~ h``."""
        c = self.coefficients(states[0])
        return sum((c[t] * s for t, s in enumerate(states)), torch.zeros_like(states[0]))

    def query_forward(self, q: Tensor, q_mask: Tensor, states: list[Tensor]) -> Tensor:
        """``A~ h`` for queries attached to a reference bank (see ``GATStack.query_forward``):
        ``sigma_0 q + sum_{t>=1} sigma_t a_q A_bank^(t-1) h_bank``."""
        c = self.coefficients(q)
        a_q = self.attention(q, states[0], q_mask)
        linked = q_mask.any(1, keepdim=True)
        out = c[0] * q
        for t in range(1, c.shape[0]):
            # A query without bank neighbours keeps its self-loop: every hop returns itself.
            out = out + c[t] * torch.where(linked, a_q @ states[t - 1], q)
        return out


class LossWeightNet(nn.Module):
    """The lightweight MLP ``Phi`` of Sec. 4.4: current loss values -> softmax weights.

    Inputs are ``log(1 + L)`` of the detached losses (their scales differ by orders of
    magnitude); the last layer starts at zero, so training starts from equal weights.
    Disabled terms are excluded from the softmax.

    Trained jointly with ``L = sum_i phi_i L_i`` (the paper does not say otherwise), Phi
    moves weight towards the smallest loss; ``floor`` keeps every active weight at least
    ``floor`` (``phi = floor + (1 - n_active floor) softmax``; 0 = the paper's softmax).

    Args:
        n_losses: Number of loss terms.
        hidden: Hidden width.
        floor: Minimum weight of each active term, in ``[0, 1 / n_losses)``.
    """

    def __init__(self, n_losses: int = 3, hidden: int = 16, floor: float = 0.0) -> None:
        super().__init__()
        last = nn.Linear(hidden, n_losses)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(n_losses, hidden), nn.ReLU(), last)
        self.floor = floor

    def forward(self, losses: Tensor, active: Tensor) -> Tensor:
        """Weights ``[n]`` (zero for inactive terms, summing to 1 over active ones)."""
        x = torch.log1p(losses.detach().clamp_min(0.0)) * active.to(losses.dtype)
        w = torch.softmax(self.net(x).masked_fill(~active, float("-inf")), dim=-1)
        if self.floor > 0:
            on = active.to(w.dtype)
            w = self.floor * on + (1.0 - self.floor * on.sum()) * w
        return w


@dataclass
class Refined:
    """AFR outputs: ``h [M, B, d]``, unimodal-pass ``h_uni [M, B, d]``, ``rho [B, M]`` and
    ``present [M, B]``."""

    h: Tensor
    h_uni: Tensor
    rho: Tensor
    present: Tensor


def fused_graph(graphs: Tensor, rho: Tensor, self_loops: bool = True) -> tuple[Tensor, Tensor]:
    """``G = sum_m rho^m G^m`` with per-sample ``rho [N, M]`` (rows stay stochastic) and its
    edge mask; with ``self_loops`` (square graphs) a node without edges gets a self-loop so
    attention stays defined."""
    g = torch.einsum("nm,mnk->nk", rho.to(graphs.dtype), graphs)
    mask = g > 0
    if self_loops:
        mask = mask | torch.diag(~mask.any(1))
    return g, mask


class ScopeNet(nn.Module):
    """SCOPE's network.

    Args:
        info: Task description.
        model_cfg: Encoder settings (``hidden`` is the width ``d`` of every stage).
        cfg: :class:`~equimodal.methods.scope.ScopeConfig`.
    """

    def __init__(self, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> None:
        super().__init__()
        names = info.modality_names
        d = model_cfg.hidden
        heads = math.gcd(d, cfg.heads)  # a head count that divides d (cfg.heads when it does)
        self.names, self.dim, self.cfg = names, d, cfg
        self.encoders = build_encoders(info, model_cfg, names, hidden=d)
        self.sa: nn.ModuleDict | None = nn.ModuleDict(
            {n: SelfAttentionBlock(d, heads, model_cfg.dropout) for n in names}
        ) if cfg.use_sa else None
        self.ca = CrossModalAttention(d, heads, len(names), model_cfg.dropout) if cfg.use_ca \
            else None
        self.propagate: DiffusionAttention | GATStack | None = None
        self.mlp: nn.Module | None = None
        if cfg.fusion == "diffusion":
            self.propagate = DiffusionAttention(d, cfg.diffusion_steps, cfg.xi, cfg.attention_mask)
        elif cfg.fusion == "gat_stack":
            self.propagate = GATStack(d, cfg.diffusion_steps, cfg.attention_mask)
        elif cfg.fusion == "mlp":
            self.mlp = nn.Sequential(nn.Linear(len(names) * d, d), nn.ReLU())
        self.head = nn.Linear(d, info.num_outputs)
        self.probes = nn.ModuleDict(
            {n: nn.Linear(d, info.num_outputs) for n in names}
        ) if cfg.unimodal_heads else None
        self.weighting: LossWeightNet | None = LossWeightNet(3, floor=cfg.phi_floor) \
            if cfg.loss_weighting in ("mlp", "normalized") else None

    # ----- AFR ---------------------------------------------------------------------------
    def _tokens(self, batch: Batch, name: str) -> Tensor:
        enc, x = self.encoders[name], batch.inputs[name]
        lengths = batch.lengths.get(name)
        keep = batch.present[name].to(x.dtype)
        if self.sa is None or x.dim() == 2 or not hasattr(enc, "forward_sequence"):
            u = enc(x, lengths) * keep[:, None]
            if self.sa is None:
                return u
            return self.sa[name](u[:, None, :], torch.ones_like(u[:, :1], dtype=torch.bool))[:, 0]
        frames: Tensor = enc.forward_sequence(x, lengths)  # type: ignore[operator]
        frames = frames * keep[:, None, None]
        valid = length_mask(lengths, frames.shape[1], frames.shape[0], frames.device)
        refined = self.sa[name](frames, valid)
        valid = valid.clone()
        valid[:, 0] = True
        return masked_mean(refined, valid)

    def refine(self, batch: Batch) -> Refined:
        """Attention-based feature refinement: ``h^m`` and modality weights ``rho``."""
        x = torch.stack([self._tokens(batch, n) for n in self.names], dim=1)  # [B, M, d]
        present = torch.stack([batch.present[n] for n in self.names], dim=1)  # [B, M]
        if self.ca is None:
            h, h_uni = x, x
            q = present.to(x.dtype)
            rho = q / q.sum(1, keepdim=True).clamp_min(1.0)
        else:
            h, rho = self.ca(x, present)
            h_uni = self.ca(x, present, self_only=True)[0] if self.probes is not None else h
        return Refined(h.transpose(0, 1), h_uni.transpose(0, 1), rho, present.t())

    # ----- SCA ---------------------------------------------------------------------------
    def graphs(self, h: Tensor, present: Tensor, k: int) -> Tensor:
        """Per-modality semantic graphs ``[M, N, N]`` (Theorem 1), in float32 even under
        autocast (distances and the square root need the precision)."""
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            return torch.stack([semantic_graph(h[m], k, present[m], self.cfg.graph_lambda)
                                for m in range(h.shape[0])])

    def query_graphs(self, h: Tensor, present: Tensor, bank_h: Tensor, bank_present: Tensor,
                     k: int) -> Tensor:
        """Per-modality graphs ``[M, n, Nb]`` linking queries to bank nodes."""
        out = []
        h, bank_h = h.float(), bank_h.float()
        for m in range(h.shape[0]):
            valid = present[m][:, None] & bank_present[m][None, :]
            out.append(semantic_graph_from_dists(pairwise_sq_dists(h[m], bank_h[m]), k, valid,
                                                 self.cfg.graph_lambda))
        return torch.stack(out)

    # ----- fusion ------------------------------------------------------------------------
    @staticmethod
    def weighted(h: Tensor, rho: Tensor) -> Tensor:
        """``sum_m rho^m h^m`` -> ``[N, d]`` (adaptive integration)."""
        return torch.einsum("nm,mnd->nd", rho, h)

    def fuse_local(self, r: Refined) -> Tensor:
        """Fusions that need no graph: ``mlp`` (w/o SCA) and ``mean`` (w/o BF)."""
        keep = r.present.to(r.h.dtype)[:, :, None]
        if self.mlp is not None:
            return self.mlp(torch.cat(list(r.h * keep), dim=1))
        return (r.h * keep).sum(0) / keep.sum(0).clamp_min(1.0)

    def outputs(self, r: Refined, z: Tensor, extras: dict[str, Tensor]) -> ModelOutput:
        """Fused logits, unimodal-head logits and the extras the losses need."""
        uni: dict[str, Tensor] = {}
        if self.probes is not None:
            src = r.h_uni.detach() if self.cfg.unimodal_detach else r.h_uni
            uni = {n: self.probes[n](src[i]) for i, n in enumerate(self.names)}
        feats = {n: r.h[i] for i, n in enumerate(self.names)}
        extras = {"h": r.h, "present": r.present, "rho": r.rho, **extras}
        return ModelOutput(self.head(z), feats, uni, z, extras)

    def forward(self, batch: Batch, k: int | None = None, need_graphs: bool = True) -> ModelOutput:
        """In-batch SCOPE: graphs over the mini-batch (training, Sec. 4.2-4.3).

        Args:
            batch: Mini-batch.
            k: Neighbours (default: ``cfg.k`` or half the batch).
            need_graphs: Build the semantic graphs even when the fusion does not use them
                (for ``L_align``).
        """
        r = self.refine(batch)
        k = k if k is not None else (self.cfg.k or max(1, batch.size // 2))
        extras: dict[str, Tensor] = {}
        if self.propagate is None:
            if need_graphs:
                extras["graphs"] = self.graphs(r.h, r.present, k)
            return self.outputs(r, self.fuse_local(r), extras)
        graphs = self.graphs(r.h, r.present, k)
        g, mask = fused_graph(graphs.detach(), r.rho.detach())
        hbar = self.weighted(r.h, r.rho)
        z = hbar + self.propagate(hbar, mask)
        return self.outputs(r, z, {"graphs": graphs, "fused_graph": g, "hbar": hbar})

    def bank_states(self, bank_h: Tensor, bank_present: Tensor, bank_rho: Tensor,
                    k: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The bank side of inference: fused graph ``[Nb, Nb]``, its edge mask and the bank
        features at every hop/layer of the propagation (they do not depend on queries)."""
        assert self.propagate is not None
        g, mask = fused_graph(self.graphs(bank_h, bank_present, k), bank_rho)
        return g, mask, self.propagate.bank_states(self.weighted(bank_h, bank_rho), mask)

    def forward_bank(self, batch: Batch, bank_h: Tensor, bank_present: Tensor,
                     states: list[Tensor], k: int) -> ModelOutput:
        """Inference against a reference bank of training embeddings: each query links to
        its k nearest bank nodes per modality and propagates over the bank's graph
        (``states`` from :meth:`bank_states`). A query's output never depends on the other
        queries of the batch."""
        r = self.refine(batch)
        if self.propagate is None:
            return self.outputs(r, self.fuse_local(r), {})
        q_graphs = self.query_graphs(r.h, r.present, bank_h, bank_present, k)
        _, q_mask = fused_graph(q_graphs, r.rho, self_loops=False)
        hbar = self.weighted(r.h, r.rho)
        z = hbar + self.propagate.query_forward(hbar, q_mask, states)
        return self.outputs(r, z, {})
