"""MulT: the multimodal transformer for unaligned multimodal language sequences.

Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov, "Multimodal Transformer for Unaligned
Multimodal Language Sequences" (ACL 2019). Each modality is projected by a temporal Conv1d
to width ``d``; for every ordered pair a directional cross-modal transformer lets the
target's frames attend to the source's frames (Eq. 3-4: ``CM_{b->a}(X_a, X_b) =
softmax(Q_a K_b^T / sqrt(d)) V_b`` with pre-norm residual blocks and positional
embeddings); a target's ``M - 1`` streams are concatenated and refined by a self-attention
transformer (Sec. 3.3); the last step of every target's memory is concatenated and a
residual MLP predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from equimodal.config import ModelConfig
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.crossmodal import (
    MulTStreams,
    ResidualHead,
    TemporalProjection,
    masked_pool,
    modality_masks,
)
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

_CHOICES = {"pooling": ("last", "mean"), "input_projection": ("when_needed", "always"),
            "regression_loss": ("l1", "mse")}


@dataclass
class MulTConfig(MethodConfig):
    """MulT settings; defaults from the paper / reference code on CMU-MOSI.

    Attributes:
        d_model: Per-stream width ``d`` (reference 30; ``None``: ``ModelConfig.hidden``).
        heads: Attention heads, must divide ``d`` (reference 5; ``None``: ``ModelConfig.heads``).
        layers: Layers per cross-modal transformer (reference ``nlevels`` 5; ``None``:
            ``ModelConfig.layers``).
        mem_layers: Layers of each memory (self-attention) transformer (``None``: the
            reference's ``max(layers, 3)``).
        proj_kernel: Kernel of the temporal Conv1d projection (reference 1).
        input_projection: ``when_needed`` (reference: identity when ``D_m == d``) or
            ``always``.
        attn_dropout: Attention dropout of streams targeting the primary modality and of the
            memory transformers (reference 0.1).
        attn_dropout_other: Attention dropout of streams targeting other modalities
            (reference ``attn_dropout_a`` = ``attn_dropout_v`` = 0.0).
        relu_dropout: FFN dropout (reference 0.1).
        res_dropout: Residual dropout (reference 0.1).
        embed_dropout: Dropout on the primary modality's input and on every transformer's
            embedded input (reference 0.25).
        out_dropout: Dropout inside the output residual block (reference 0.0).
        primary: The text-like modality (``None``: the data's first modality).
        pooling: ``last`` valid step of each memory (paper) or ``mean`` over valid steps.
        causal: The reference code's "future" attention mask (``attn_mask``; the paper does
            not use one).
        regression_loss: ``l1`` (reference on MOSI/MOSEI) or ``mse``.
        targets: Ablation (Table 3 ``[V,A -> L]`` etc., reference ``--lonly`` / ``--aonly``
            / ``--vonly``): only these target modalities get cross-modal streams, a memory
            and a slot in the output head (``None``: every modality, the full MulT).
    """

    d_model: int | None = None
    heads: int | None = None
    layers: int | None = None
    mem_layers: int | None = None
    proj_kernel: int = 1
    input_projection: str = "when_needed"
    attn_dropout: float = 0.1
    attn_dropout_other: float = 0.0
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    out_dropout: float = 0.0
    primary: str | None = None
    pooling: str = "last"
    causal: bool = False
    regression_loss: str = "l1"
    targets: tuple[str, ...] | None = None


class MulTNet(nn.Module):
    """MulT's network for any ``M >= 2`` modalities (see :class:`MulTStreams`).

    Args:
        info: Task description.
        cfg: A :class:`MulTConfig` (resolved widths passed separately).
        dim: Per-stream width ``d``.
        heads: Attention heads.
        layers: Layers per cross-modal transformer.
    """

    def __init__(self, info: TaskInfo, cfg: MulTConfig, dim: int, heads: int, layers: int
                 ) -> None:
        super().__init__()
        self.names = info.modality_names
        self.primary = cfg.primary or self.names[0]
        self.pooling = cfg.pooling
        self.embed_dropout = cfg.embed_dropout
        self.proj = TemporalProjection(info, dim, cfg.proj_kernel,
                                       cfg.input_projection == "when_needed")
        mem = cfg.mem_layers if cfg.mem_layers is not None else max(layers, 3)
        self.streams = MulTStreams(
            self.names, dim, heads, layers, mem, cfg.attn_dropout, cfg.attn_dropout_other,
            cfg.relu_dropout, cfg.res_dropout, cfg.embed_dropout, self.primary, cfg.causal,
            cfg.targets)
        self.targets = self.streams.targets
        combined = len(self.targets) * self.streams.out_dim
        self.head = ResidualHead(combined, info.num_outputs, cfg.out_dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused prediction; ``features`` are each target's pooled memory output (only the
        ``targets`` when the ablation restricts them)."""
        masks = modality_masks(batch, self.names)
        seqs = {}
        for n in self.names:
            x = batch.inputs[n]
            if n == self.primary:
                # MulT drops out the text input before its projection (``embed_dropout``).
                x = F.dropout(x, self.embed_dropout, self.training)
            seqs[n] = self.proj(x, masks[n], n)
        memory = self.streams(seqs, masks)
        feats = {}
        for n in self.targets:
            pooled = masked_pool(memory[n], masks[n], self.pooling)
            # A missing target modality contributes zeros, not the memory of its padding.
            feats[n] = pooled * batch.present[n].to(pooled.dtype)[:, None]
        fused = torch.cat([feats[n] for n in self.targets], dim=-1)
        _, _, logits = self.head(fused)
        return ModelOutput(logits, feats, {}, fused)


@register_method("mult")
class MulT(Method):
    """MulT: directional pairwise cross-modal transformers on unaligned sequences.

    Tsai et al. (ACL 2019), Eq. 3-4 and Sec. 3.3; every ordered modality pair has its own
    cross-modal transformer; the prediction is a residual MLP over the last steps.
    """

    Config = MulTConfig
    capabilities = Capabilities(tasks=("regression", "classification"), min_modalities=2)
    paper = "Tsai et al., MulT, ACL 2019"
    family = "fusion"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the enum fields and the primary modality."""
        super().check_task(info, cfg)
        check_choices("mult", cfg, _CHOICES)
        if cfg.primary is not None:
            info.check_modality(cfg.primary)
        if cfg.targets is not None:
            if isinstance(cfg.targets, str):  # ``--set method.targets=text``
                cfg.targets = (cfg.targets,)
            if not cfg.targets:
                raise ValueError("mult: targets must name at least one modality")
            for t in cfg.targets:
                info.check_modality(t)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """The MulT network at width ``d_model``."""
        return MulTNet(info, cast(MulTConfig, cfg), cfg.d_model or model_cfg.hidden,
                       cfg.heads or model_cfg.heads, cfg.layers or model_cfg.layers)

    def modality_features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """None: each stream's feature is a cross-modal attention output (queries of one
        modality over the others' keys), not that modality's own, so no probe is reported."""
        return {}
