"""AGM: Adaptive Gradient Modulation (Li, Li, Hu, Yang, Zhang, Liu, Ding; "Boosting
Multi-modal Model Performance with Adaptive Gradient Modulation", ICCV 2023).

Per mini-batch:

1. Mono-modal responses by Shapley values of the fused model (Sec. 3.2): ``v(S)`` is the fused
   output with the features of the modalities outside ``S`` zeroed, ``v(empty) = 0`` as in the
   reference code, and ``phi_m = sum_S |S|!(M-|S|-1)!/M! [v(S + m) - v(S)]``; for two
   modalities ``phi_a = (v(ab) - v(b) + v(a)) / 2``. Efficiency gives ``sum_m phi_m = v(all)``,
   the usual fused output. Every ``v(S)`` keeps its graph (2^M - 1 fusion passes, encoders run
   once).
2. Scores ``s_m`` = cross-entropy of ``phi_m`` (probabilities clamped at 1e-8), ratios
   ``r_m = exp(M/(M-1) (mean_k s_k - s_m))`` (two modalities: ``r_a = exp(s_v - s_a)``) and the
   same ratios ``eta_m`` of the running average of the scores since the start of training.
3. Coefficients ``c_m = exp(alpha * min(eta_m - r_m, 10))``: the fused logits are
   ``sum_m phi_m`` with the gradient flowing back through ``phi_m`` multiplied by ``c_m`` (the
   reference code's backward hooks). For an additive fusion this scales encoder ``m``'s
   gradient by exactly ``c_m``; for any fusion it modulates each modality's Shapley share.
4. The reference code's safeguard: when a fusion gradient entry exceeds ``grad_clip`` the
   whole gradient norm is clipped to ``grad_clip``.

The coefficients apply between ``modulation_starts`` and ``modulation_ends``; the running
average is updated on every step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.engine.context import StepContext
from equimodal.losses.modulation import agm_coefficients, scale_grad, shapley_responses
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import Batch, TaskInfo


@dataclass
class AGMConfig(MethodConfig):
    """AGM hyper-parameters (defaults of the reference code).

    Attributes:
        alpha: Modulation strength in ``exp(alpha * (eta - r))``.
        modulation_starts: First epoch (inclusive) with modulation.
        modulation_ends: Last epoch (inclusive) with modulation; ``None``: to the end (the
            reference's 20 with its 10-epoch default is the whole run).
        cap: Upper clamp of ``eta - r`` (10 in the reference code).
        grad_clip: Clip the gradient norm to this value when a fusion-layer gradient entry
            exceeds it (reference: 1.0); ``0`` disables.
    """

    alpha: float = 1.0
    modulation_starts: int = 0
    modulation_ends: int | None = None
    cap: float = 10.0
    grad_clip: float = 1.0


@register_method("agm")
class AGM(Method):
    """AGM: Shapley mono-modal responses, gradients scaled toward the running imbalance.

    Li et al., "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation",
    ICCV 2023. Implements the Shapley mono-modal responses ``phi_m`` (zeroed-modality
    coalitions), the ratios ``r_m = exp(M/(M-1)(mean s - s_m))`` of their cross-entropies, the
    coefficients ``exp(alpha min(eta_m - r_m, 10))`` against the running average and the
    gradient scaling of each ``phi_m``; see the module docstring.
    """

    Config = AGMConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Li et al., Boosting Multi-modal Model Performance with Adaptive Gradient "
             "Modulation, ICCV 2023")
    family = "optimisation"

    running_scores: Tensor
    n_iter: Tensor
    coeffs: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.alpha < 0 or cfg.grad_clip < 0:
            raise ValueError("alpha and grad_clip must be >= 0")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: AGMConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        m = len(self.names)
        # Running average of the per-modality scores (the reference's train_score_*).
        self.register_buffer("running_scores", torch.zeros(m))
        self.register_buffer("n_iter", torch.zeros((), dtype=torch.long))
        self.register_buffer("coeffs", torch.ones(m))

    @property
    def net(self) -> MultimodalModel:
        """The wrapped multimodal model."""
        return cast(MultimodalModel, self.model)

    def shapley(self, batch: Batch, features: dict[str, Tensor]) -> list[Tensor]:
        """Shapley mono-modal responses ``phi_m`` ``[B, C]`` of every modality (with graph)."""
        n = len(self.names)
        values: dict[frozenset[int], Tensor] = {}
        for size in range(1, n + 1):
            for combo in itertools.combinations(range(n), size):
                keep = set(combo)
                feats = {name: (features[name] if i in keep else torch.zeros_like(features[name]))
                         for i, name in enumerate(self.names)}
                values[frozenset(combo)] = self.net.fuse(batch, feats).logits
        return shapley_responses(values, n)

    @torch.no_grad()
    def scores(self, batch: Batch, responses: list[Tensor]) -> Tensor:
        """Per-modality cross-entropy of the mono-modal responses (present samples)."""
        out = []
        for name, phi in zip(self.names, responses, strict=True):
            p = torch.softmax(phi.float(), dim=-1).gather(1, batch.target.view(-1, 1)).squeeze(1)
            nll = -torch.log(p.clamp_min(1e-8))
            mask = batch.present[name].bool()
            out.append(nll[mask].mean() if mask.any() else nll.new_zeros(()))
        return torch.stack(out)

    def modulation_active(self, ctx: StepContext) -> bool:
        """Whether the current epoch lies in the modulation window."""
        end = self.cfg.modulation_ends
        return bool(self.cfg.modulation_starts <= ctx.epoch and (end is None or ctx.epoch <= end))

    @torch.no_grad()
    def update_coefficients(self, scores: Tensor, active: bool) -> Tensor:
        """Coefficients from the batch scores and the running average *before* this batch,
        then the cumulative running-average update."""
        coeffs = agm_coefficients(scores, self.running_scores, self.cfg.alpha, self.cfg.cap)
        if not active:
            coeffs = torch.ones_like(coeffs)
        t = float(self.n_iter) + 1.0
        self.running_scores.mul_((t - 1.0) / t).add_(scores / t)
        self.n_iter += 1
        self.coeffs.copy_(coeffs)
        return coeffs

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Shapley responses, coefficients, gradient-scaled fused loss, conditional clip."""
        with ctx.autocast():
            feats = self.net.encode(batch)
            phi = self.shapley(batch, feats)
            coeffs = self.update_coefficients(self.scores(batch, phi), self.modulation_active(ctx))
            logits = torch.stack([scale_grad(p, float(c)) for p, c in zip(phi, coeffs,
                                                                          strict=True)]).sum(0)
            loss = self.task_loss(logits, batch.target)
        ctx.backward(loss)
        self._conditional_clip(ctx)
        ctx.step()
        out = {"loss": loss.detach()}
        out.update({f"coeff/{n}": coeffs[i].clone() for i, n in enumerate(self.names)})
        return out

    @torch.no_grad()
    def _conditional_clip(self, ctx: StepContext) -> None:
        # Coefficients reach exp(alpha * cap): the reference clips when the fusion layer's
        # gradient blows up. The threshold follows the AMP loss scale so it compares true
        # gradients.
        if self.cfg.grad_clip <= 0 or not ctx.will_step:
            return
        scale = ctx.loss_scale
        thr = self.cfg.grad_clip * scale
        grads = [p.grad for p in self.net.fusion.parameters() if p.grad is not None]
        if grads and max(float(g.abs().max()) for g in grads) > thr:
            params = [p for p in self.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, thr)
