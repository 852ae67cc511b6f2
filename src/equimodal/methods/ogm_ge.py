"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng, Wei, Deng,
Wang, Hu; "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022).

Per mini-batch, after backward:

* unimodal logits come from the split fusion layer, ``o_m = h_m W_m^T + b / M`` (Eq. 7);
* discrepancy scores ``s_m = sum_i softmax(o_m)_i[y_i]`` (Eq. 8; we average over the samples
  that have the modality, which gives the same ratios on complete batches);
* ratios ``rho_m = s_m / min_k s_k`` (Eq. 9 for two modalities: ``s_dominant / s_other``; the
  reference code's rule for three or more);
* coefficients ``k_m = 1 - tanh(alpha * rho_m)`` for ``rho_m > 1``, else 1 (Eq. 10; option:
  ``rho_m - 1``);
* every gradient of encoder ``m`` becomes ``k_m g`` (OGM, Eq. 11) plus, with GE, Gaussian
  noise ``N(0, std(g) + 1e-8)`` per parameter tensor on every encoder (Sec. 3.3),

between ``modulation_starts`` and ``modulation_ends`` (epochs, inclusive). The encoders are
the model's ``encoders[m]`` modules (selected as modules, never by parameter names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.engine.context import StepContext
from equimodal.losses.modulation import (
    discrepancy_ratios,
    isolated_grads,
    modulate_grads_,
    ogm_coefficients,
    true_class_score,
)
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel, build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

PARAM_FILTERS = ("all", "weights")


@dataclass
class OGMGEConfig(MethodConfig):
    """OGM-GE hyper-parameters (defaults of the paper / its reference code).

    Attributes:
        alpha: Modulation strength of Eq. 10 (0.8 recommended for CREMA-D, 0.1 for VGGSound).
        modulation_starts: First epoch (0-based, inclusive) with modulation.
        modulation_ends: Last epoch (inclusive) with modulation (reference default 50).
        ge: Generalisation enhancement: add ``N(0, std(g) + 1e-8)`` noise (``False``: OGM).
        ratio_minus_one: Use ``tanh(alpha * (rho - 1))`` instead of the paper's
            ``tanh(alpha * rho)``.
        param_filter: ``all`` encoder parameters (the paper's theta^u) or ``weights`` (tensors
            with two or more dimensions: the reference code modulates conv kernels only).
        reference_tie: On an exact tie (no ratio above 1) follow the reference code's
            ``else`` branch: the first modality in the task's order (the reference's audio,
            ``a, v, out = model(...)``) gets ``k = 1 - tanh(alpha * relu(rho))`` with
            ``rho = 1``. ``False``: Eq. 10 read literally (every ``k = 1`` on a tie).
    """

    alpha: float = 0.8
    modulation_starts: int = 0
    modulation_ends: int = 50
    ge: bool = True
    ratio_minus_one: bool = False
    param_filter: str = "all"
    reference_tie: bool = True


class GradientModulationBase(Method):
    """Shared machinery of OGM-GE and OPM's OGM variant: split-fusion scores, ratios,
    coefficients and in-place modulation of the encoder modules' gradients."""

    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    family = "optimisation"

    coeffs: Tensor
    ratios: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.param_filter not in PARAM_FILTERS:
            raise ValueError(f"param_filter must be one of {PARAM_FILTERS}, got "
                             f"{cfg.param_filter!r}")
        if cfg.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {cfg.alpha}")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """The generic model; its fusion must give unimodal logits (concat, sum or late)."""
        model = build_multimodal_model(info, model_cfg)
        if not model.fusion.splittable:
            raise ValueError(
                f"method {cls.name!r} needs a fusion split into per-modality logits "
                f"(concat, sum, late); got {model_cfg.fusion!r}"
            )
        return model

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: Any) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        m = len(self.names)
        # Last step's ratios and coefficients (diagnostics; tests read them).
        self.register_buffer("coeffs", torch.ones(m))
        self.register_buffer("ratios", torch.ones(m))

    @property
    def net(self) -> MultimodalModel:
        """The wrapped multimodal model."""
        return cast(MultimodalModel, self.model)

    def encoder_params(self, name: str) -> list[nn.Parameter]:
        """Trainable parameters of modality ``name``'s encoder module (after ``param_filter``)."""
        params = [p for p in self.net.encoders[name].parameters() if p.requires_grad]
        if self.cfg.param_filter == "weights":
            params = [p for p in params if p.dim() >= 2]
        return params

    def all_encoder_params(self) -> list[nn.Parameter]:
        """Encoder parameters of every modality."""
        return [p for n in self.names for p in self.encoder_params(n)]

    def modulation_active(self, ctx: StepContext) -> bool:
        """Whether the current epoch lies in the modulation window."""
        return bool(self.cfg.modulation_starts <= ctx.epoch <= self.cfg.modulation_ends)

    @torch.no_grad()
    def update_coefficients(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Scores (Eq. 8), ratios (Eq. 9) and coefficients (Eq. 10) of this batch."""
        scores = torch.stack([
            true_class_score(out.unimodal_logits[n], batch.target, batch.present[n])
            for n in self.names
        ])
        ratios = discrepancy_ratios(scores)
        coeffs = ogm_coefficients(ratios, self.cfg.alpha, self.cfg.ratio_minus_one)
        self.ratios.copy_(ratios)
        self.coeffs.copy_(coeffs)
        return coeffs

    def apply_modulation(self, coeffs: Tensor) -> None:
        """Scale every encoder's gradients by its coefficient (+ GE noise)."""
        for i, n in enumerate(self.names):
            modulate_grads_(self.encoder_params(n), float(coeffs[i]), noise=self.cfg.ge)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """Cross-entropy of the fused logits (the method changes gradients, not the loss)."""
        return {"loss": self.task_loss(out.logits, batch.target)}

    def on_after_backward(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> None:
        """OGM(-GE) on the encoder modules' gradients inside the modulation window."""
        coeffs = self.update_coefficients(batch, out)
        if self.modulation_active(ctx):
            self.apply_modulation(coeffs)

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Forward, backward, modulate this micro-batch's encoder gradients, step."""
        with ctx.autocast():
            out = self(batch)
            losses = self.compute_loss(batch, out, ctx)
        with isolated_grads(self.all_encoder_params()):
            ctx.backward(losses["loss"])
            self.on_after_backward(batch, out, ctx)
        ctx.step()
        losses.update({f"coeff/{n}": self.coeffs[i].clone() for i, n in enumerate(self.names)})
        return losses


@register_method("ogm_ge")
class OGMGE(GradientModulationBase):
    """OGM-GE: scale the dominant modality's encoder gradients by 1 - tanh(alpha * rho) + noise.

    Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
    Implements the split-fusion unimodal logits (Eq. 7), discrepancy scores and ratios
    (Eq. 8-9, ``rho_m = s_m / min_k s_k`` for three or more modalities), the coefficients
    ``k = 1 - tanh(alpha * rho)`` (Eq. 10) applied to the encoder gradients (Eq. 11) and the GE
    noise ``N(0, std(g) + 1e-8)`` (Sec. 3.3); see the module docstring.
    """

    Config = OGMGEConfig
    paper = ("Peng et al., Balanced Multimodal Learning via On-the-fly Gradient Modulation, "
             "CVPR 2022")

    @torch.no_grad()
    def update_coefficients(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Eq. 8-10, plus the reference code's tie rule (``reference_tie``)."""
        coeffs = super().update_coefficients(batch, out)
        if self.cfg.reference_tie and not bool((self.ratios > 1.0).any()):
            rho = self.ratios[0] - 1.0 if self.cfg.ratio_minus_one else self.ratios[0]
            coeffs = coeffs.clone()
            coeffs[0] = 1.0 - torch.tanh(self.cfg.alpha * torch.relu(rho))
            self.coeffs.copy_(coeffs)
        return coeffs
