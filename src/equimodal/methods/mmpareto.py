"""MMPareto: boosting multimodal learning with innocent unimodal assistance (Wei & Hu;
"MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024).

The objective is the multimodal loss plus one unimodal loss per modality (each modality's
features through its own linear head, as the reference model does). Each encoder ``m`` is
shared by two losses, the multimodal one and its unimodal one; per encoder (all its parameters
as one vector):

* gradients ``g_mm`` and ``g_m`` are taken separately (``ctx.grad``);
* if they agree (``cos(g_mm, g_m) > 0``) the weights are ``(1/2, 1/2)``, otherwise the
  min-norm (MGDA) weights ``(w, 1 - w)`` of the two (Sec. 4, Pareto integration); the
  min-norm direction has a non-negative inner product with both gradients;
* per parameter tensor the combination ``d = 2 (w g_mm + (1 - w) g_m)`` is rescaled to the
  norm of the plain sum ``g_mm + g_m`` when that is larger (magnitude preservation), then
  multiplied by ``gamma`` (1.5 in the reference code) to keep SGD's useful noise.

Fusion and heads take the gradient of the summed losses. The combined gradients are written
into ``.grad`` (added to what earlier accumulation micro-batches left) before ``ctx.step()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.engine.context import StepContext
from equimodal.losses.modulation import flat_dot, min_norm_weights
from equimodal.methods.base import Capabilities, FusionConfig, Method
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


@dataclass
class MMParetoConfig(FusionConfig):
    """MMPareto hyper-parameters (defaults of the reference code).

    Attributes:
        gamma: Magnitude multiplier of the combined encoder gradients (reference 1.5).
        separate_heads: Unimodal losses through a linear head per modality (reference);
            ``False`` uses the fusion's own unimodal logits (split concat layer).
        regression_loss: ``l1`` or ``mse`` for regression tasks.
    """

    gamma: float = 1.5
    separate_heads: bool = True


def combine_pair(g_mm: list[Tensor], g_uni: list[Tensor], gamma: float
                 ) -> tuple[list[Tensor], tuple[float, float], float]:
    """MMPareto's combination of the multimodal and unimodal gradients of one encoder.

    Returns:
        The combined per-tensor gradients, the weights ``(w_mm, w_uni)`` and the cosine.
    """
    dot = float(flat_dot(g_mm, g_uni))
    n1, n2 = float(flat_dot(g_mm, g_mm)) ** 0.5, float(flat_dot(g_uni, g_uni)) ** 0.5
    cos = dot / max(n1 * n2, 1e-20)
    weights = (0.5, 0.5) if cos > 0 else min_norm_weights(g_mm, g_uni)
    out = []
    for a, b in zip(g_mm, g_uni, strict=True):
        new = 2.0 * (weights[0] * a + weights[1] * b)
        plain = torch.linalg.vector_norm(a + b)
        norm = torch.linalg.vector_norm(new)
        ratio = plain / norm.clamp_min(1e-20)
        new = torch.where(ratio > 1.0, new * ratio, new)
        out.append(new * gamma)
    return out, weights, cos


@register_method("mmpareto")
class MMPareto(Method):
    """MMPareto: multimodal + unimodal losses, Pareto (min-norm) gradient integration.

    Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
    ICML 2024. Per encoder: equal weights when ``cos(g_mm, g_m) > 0``, else the min-norm
    (MGDA) weights; the combination is rescaled to at least ``||g_mm + g_m||`` per tensor and
    multiplied by ``gamma``; see the module docstring.
    """

    Config = MMParetoConfig
    capabilities = Capabilities(min_modalities=2)
    paper = ("Wei & Hu, MMPareto: Boosting Multimodal Learning with Innocent Unimodal "
             "Assistance, ICML 2024")
    family = "optimisation"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {cfg.gamma}")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: MMParetoConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        dims = self.net.fusion.dims
        self.heads: nn.ModuleDict | None = None
        if cfg.separate_heads:
            self.heads = nn.ModuleDict({n: nn.Linear(dims[n], info.num_outputs)
                                        for n in self.names})
        elif not self.net.fusion.splittable:
            raise ValueError("mmpareto with separate_heads=False needs a split fusion "
                             "(concat, sum, late)")
        self.last_weights: dict[str, tuple[float, float]] = {}
        self.last_cos: dict[str, float] = {}

    @property
    def net(self) -> MultimodalModel:
        """The wrapped multimodal model."""
        return cast(MultimodalModel, self.model)

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused output; unimodal logits from the unimodal heads (the trained ones)."""
        out = self.net(batch)
        if self.heads is not None:
            out.unimodal_logits = {n: self.heads[n](out.features[n]) for n in self.names}
        return out

    def unimodal_losses(self, batch: Batch, out: ModelOutput) -> dict[str, Tensor]:
        """Task loss of every modality's unimodal logits over its present samples."""
        return {n: self.masked_task_loss(out.unimodal_logits[n], batch.target, batch.present[n])
                for n in self.names}

    def encoder_params(self, name: str) -> list[nn.Parameter]:
        """Trainable parameters of modality ``name``'s encoder module."""
        return [p for p in self.net.encoders[name].parameters() if p.requires_grad]

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Separate gradients per encoder, Pareto combination, summed loss elsewhere."""
        with ctx.autocast():
            out = self(batch)
            loss_mm = self.task_loss(out.logits, batch.target)
            uni = self.unimodal_losses(batch, out)
            total = loss_mm + sum(uni.values(), torch.zeros((), device=loss_mm.device))
        enc = {n: self.encoder_params(n) for n in self.names}
        enc_all = [p for n in self.names for p in enc[n]]
        g_mm_all = ctx.grad(loss_mm, enc_all, retain_graph=True)
        g_mm, start = {}, 0
        for n in self.names:
            g_mm[n] = g_mm_all[start:start + len(enc[n])]
            start += len(enc[n])
        g_uni = {n: ctx.grad(uni[n], enc[n], retain_graph=True) for n in self.names}
        enc_ids = {id(p) for p in enc_all}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in enc_ids]
        ctx.backward(total, inputs=rest)
        logs: dict[str, Tensor] = {"loss": total.detach(), "loss_mm": loss_mm.detach()}
        for n in self.names:
            combined, weights, cos = combine_pair(g_mm[n], g_uni[n], self.cfg.gamma)
            self.last_weights[n], self.last_cos[n] = weights, cos
            for p, g in zip(enc[n], combined, strict=True):
                p.grad = g.to(p.dtype) if p.grad is None else p.grad + g.to(p.dtype)
            logs[f"loss/{n}"] = uni[n].detach()
            logs[f"cos/{n}"] = torch.tensor(cos)
        ctx.step()
        return logs

