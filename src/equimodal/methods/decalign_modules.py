"""Network of DecAlign (Qian et al.): temporal projection, decoupled encoders, cross-modal
transformers and the fusion head. The losses live in :mod:`equimodal.methods.decalign`."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from equimodal.models.encoders import length_mask
from equimodal.types import Batch, ModelOutput, TaskInfo


def sinusoidal_positions(t: int, d: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sinusoidal position table ``[t, d]`` (as in the multimodal transformer, MulT)."""
    pos = torch.arange(t, device=device, dtype=dtype)[:, None]
    half = (d + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=dtype) / half)
    ang = pos * freq[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)[:, :d]


class CrossModalBlock(nn.Module):
    """Pre-norm cross-attention block: ``x += Attn(LN x, LN kv); x += FFN(LN x)``.

    Args:
        dim: Model width.
        heads: Attention heads.
        dropout: Dropout in attention and feed-forward.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, kv: Tensor, kv_pad: Tensor, has_keys: Tensor) -> Tensor:
        """``x [B, T, d]`` attends to ``kv [B, S, d]``; ``kv_pad [B, S]`` is True on padding;
        ``has_keys [B]`` zeroes the attention update of samples without any valid key."""
        kvn = self.norm_kv(kv)
        att, _ = self.attn(self.norm_q(x), kvn, kvn, key_padding_mask=kv_pad, need_weights=False)
        x = x + self.drop(att) * has_keys.to(x.dtype)[:, None, None]
        return x + self.drop(self.ff(self.norm_ff(x)))


class CrossModalTransformer(nn.Module):
    """A stack of :class:`CrossModalBlock` (query: one modality, keys: the others)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossModalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, kv: Tensor, kv_pad: Tensor) -> Tensor:
        """Refined query sequence ``[B, T, d]``."""
        has_keys = (~kv_pad).any(1)
        # Attention over an all-padding row is NaN: unmask one key there, then drop its update.
        kv_pad = kv_pad.clone()
        kv_pad[~has_keys, 0] = False
        for blk in self.blocks:
            x = blk(x, kv, kv_pad, has_keys)
        return self.norm(x)


def masked_pool(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid frames: ``x [..., T, d]``, ``mask [..., T]`` -> ``[..., d]``."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class DecAlignNet(nn.Module):
    """DecAlign's network (Sec. 3.1 and 3.4).

    Per modality a temporal Conv1d maps ``[B, T_m, D_m]`` to the common width ``d`` (vectors
    are length-1 sequences); a per-modality 1x1 Conv1d ``E_uni^(m)`` and ONE shared 1x1
    Conv1d ``E_com`` give unique and common features. Each modality's unique sequence is
    refined by a cross-modal transformer that attends to the other modalities' unique
    sequences; the pooled outputs and the pooled common features are concatenated into the
    fused representation and a linear layer predicts. Unimodal heads read the pooled unique
    and common features of one modality (detached by default, so they only probe).

    Args:
        info: Task description (modality names, dims, outputs).
        dim: Common width ``d``.
        heads: Attention heads of the cross-modal transformers.
        layers: Blocks per cross-modal transformer.
        dropout: Dropout inside the transformers.
        proj_kernel: Kernel size of the temporal projection.
        input_projection: ``always`` (paper) or ``when_needed`` (identity when ``D_m == d``).
        decouple: Build the shared common encoder (``False``: common := unique, no MFD).
        cross_modal: Build the cross-modal transformers (``False``: pooled unique features
            go straight to the fusion).
        homo_projector: Add the MLP ``d -> d -> d`` applied to common features before the
            homogeneity losses.
        unimodal_heads: Build per-modality probe heads.
        unimodal_detach: Stop the probe heads' gradient at the features.
        encoders: Modality-unique encoders applied before the projection, by modality (the
            others' inputs go to the projection as they are); each maps ``[B, D_m]`` to
            ``[B, encoder_dim]``.
        encoder_dim: Output width of ``encoders``.
    """

    def __init__(
        self,
        info: TaskInfo,
        dim: int,
        heads: int,
        layers: int,
        dropout: float = 0.0,
        proj_kernel: int = 3,
        input_projection: str = "always",
        decouple: bool = True,
        cross_modal: bool = True,
        homo_projector: bool = True,
        unimodal_heads: bool = True,
        unimodal_detach: bool = True,
        encoders: nn.ModuleDict | None = None,
        encoder_dim: int = 0,
    ) -> None:
        super().__init__()
        if input_projection not in ("always", "when_needed"):
            raise ValueError(f"input_projection must be always/when_needed: {input_projection!r}")
        if proj_kernel < 1 or proj_kernel % 2 == 0:
            # 'same' padding k // 2 keeps the frame count (and the length masks) only for odd k.
            raise ValueError(f"proj_kernel must be a positive odd number, got {proj_kernel}")
        self.names = info.modality_names
        self.dim = dim
        self.unimodal_detach = unimodal_detach
        self.encoders = encoders if encoders is not None else nn.ModuleDict()
        self.proj = nn.ModuleDict()
        for n, spec in info.modalities.items():
            width = encoder_dim if n in self.encoders else spec.dim
            if input_projection == "when_needed" and width == dim:
                self.proj[n] = nn.Identity()
            else:
                self.proj[n] = nn.Conv1d(width, dim, proj_kernel, padding=proj_kernel // 2,
                                         bias=False)
        self.unique = nn.ModuleDict({n: nn.Conv1d(dim, dim, 1, bias=False) for n in self.names})
        self.common = nn.Conv1d(dim, dim, 1, bias=False) if decouple else None
        self.cross = (
            nn.ModuleDict({n: CrossModalTransformer(dim, heads, layers, dropout)
                           for n in self.names}) if cross_modal else None
        )
        self.projector = (
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
            if homo_projector else None
        )
        m = len(self.names)
        self.head = nn.Linear(2 * m * dim, info.num_outputs)
        self.uni_heads = (
            nn.ModuleDict({n: nn.Linear(2 * dim, info.num_outputs) for n in self.names})
            if unimodal_heads else None
        )

    def _project(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        # Pad every modality to the longest sequence so modalities stack on one axis.
        seqs, masks = [], []
        for n in self.names:
            x = batch.inputs[n]
            x = self.encoders[n](x) if n in self.encoders else x
            x = x.unsqueeze(1) if x.dim() == 2 else x
            b, t, _ = x.shape
            mask = length_mask(batch.lengths.get(n), t, b, x.device)
            x = x * mask.unsqueeze(-1)  # padded frames must not leak through the kernel
            proj = self.proj[n]
            h = x if isinstance(proj, nn.Identity) else proj(x.transpose(1, 2)).transpose(1, 2)
            seqs.append(h * mask.unsqueeze(-1))
            masks.append(mask)
        t_max = max(s.shape[1] for s in seqs)
        seq = torch.stack([nn.functional.pad(s, (0, 0, 0, t_max - s.shape[1])) for s in seqs])
        frame = torch.stack([nn.functional.pad(mk, (0, t_max - mk.shape[1])) for mk in masks])
        present = torch.stack([batch.present[n] for n in self.names]).to(seq.dtype)  # [M, B]
        return seq, frame, present

    def forward(self, batch: Batch) -> ModelOutput:
        """Run the network; ``extras`` holds what the DecAlign losses need."""
        seq, frame, present = self._project(batch)  # [M, B, T, d], [M, B, T], [M, B]
        w_uni = torch.stack([cast(nn.Conv1d, self.unique[n]).weight[..., 0] for n in self.names])
        uni = torch.einsum("mbtd,med->mbte", seq, w_uni)  # all unique encoders at once
        com = uni if self.common is None else seq @ self.common.weight[..., 0].t()
        fmask = frame & (present > 0).unsqueeze(-1)
        uni_pooled = masked_pool(uni, fmask) * present.unsqueeze(-1)  # [M, B, d]
        com_pooled = masked_pool(com, fmask) * present.unsqueeze(-1)
        if self.cross is not None:
            m, b, t, d = uni.shape
            pos = sinusoidal_positions(t, d, uni.device, uni.dtype)
            tok = uni + pos
            refined = []
            for i, n in enumerate(self.names):
                others = [j for j in range(m) if j != i]
                kv = tok[others].permute(1, 0, 2, 3).reshape(b, len(others) * t, d)
                kv_pad = ~fmask[others].permute(1, 0, 2).reshape(b, len(others) * t)
                block = cast(CrossModalTransformer, self.cross[n])
                refined.append(masked_pool(block(tok[i], kv, kv_pad), fmask[i]))
            hete = torch.stack(refined) * present.unsqueeze(-1)
        else:
            hete = uni_pooled
        # [M, B, d] -> [B, M * d]: modality blocks side by side.
        fused = torch.cat([hete.transpose(0, 1).flatten(1), com_pooled.transpose(0, 1).flatten(1)],
                          dim=1)
        logits = self.head(fused)
        unimodal: dict[str, Tensor] = {}
        if self.uni_heads is not None:
            probe = torch.cat([uni_pooled, com_pooled], dim=-1)
            probe = probe.detach() if self.unimodal_detach else probe
            unimodal = {n: self.uni_heads[n](probe[i]) for i, n in enumerate(self.names)}
        feats = {n: torch.cat([uni_pooled[i], com_pooled[i]], -1) for i, n in enumerate(self.names)}
        extras = {
            "uni_seq": uni, "com_seq": com, "frame_mask": fmask, "present": present,
            "uni_pooled": uni_pooled, "com_pooled": com_pooled,
        }
        return ModelOutput(logits, feats, unimodal, fused, extras)

    def homo_features(self, com_pooled: Tensor) -> Tensor:
        """Common features mapped into the latent space of the homogeneity losses."""
        return com_pooled if self.projector is None else self.projector(com_pooled)
