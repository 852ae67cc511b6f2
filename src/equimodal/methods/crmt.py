"""CRMT: Certifiable Robust Multi-modal Training (Yang, Wei, Liang & Hu, "Quantifying and
Enhancing Multi-modal Robustness with Modality Preference", ICLR 2024).

The last linear layer is re-parameterised per modality as an orthogonal classifier
``W~^(m)`` (OWN of its column block of the concat layer) and per-class integration weights
``a^(m)`` (initialised to 0.1): ``h(x) = sum_m a^(m) * (W~^(m) phi^(m)(x^(m))) + b``. Two steps
(the CRMT-JT variant):

1. ``joint``: all parameters minimise ``CE(h(x), y) + rho * log sum_m sum_{k != y}
   exp(h~_k^(m) - h~_y^(m))`` with ``h~^(m) = W~^(m) phi^(m)`` (the unimodal representation
   margin regulariser, ``rho = 1``).
2. ``integration``: with ``W~`` and ``phi`` fixed, the integration weights alone maximise the
   certified bound ``r(x)`` of :func:`~equimodal.losses.robust.certified_bound` (loss
   ``-mean r``; SGD at ``0.03 lr``, weight decay ``1e-2``). The Lipschitz constants
   ``L_k^(m)`` are estimated when the stage starts, as the code does, by the largest input
   gradient norm ``||d h~_k^(m) / d x^(m)||`` over the training split, and kept in a buffer.

:meth:`CRMT.certified_radius` evaluates ``r(x)`` for any batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.context import StepContext
from equimodal.losses.robust import certified_bound, crmt_margin_loss, own_normalize
from equimodal.methods.base import Capabilities, Method, MethodConfig, Stage
from equimodal.models.fusion import Fusion, FusionOutput
from equimodal.models.multimodal import MultimodalModel, build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

log = logging.getLogger(__name__)

JOINT, INTEGRATION = "joint", "integration"


class OrthogonalFusion(Fusion):
    """``h = sum_m a^(m) * (phi^(m) W~^(m)T) + b`` with OWN-normalised column blocks ``W~^(m)``.

    Args:
        dims: Modality -> feature size.
        num_outputs: Classes.
        orthogonal: Whiten each block jointly (rows orthonormal, the paper); ``False``
            normalises each row (the released code's one-group-per-row OWN). Blocks with
            ``C >= D`` fall back to row normalisation.
        a_init: Initial integration weights.
    """

    splittable = True

    def __init__(self, dims: dict[str, int], num_outputs: int, orthogonal: bool = True,
                 a_init: float = 0.1) -> None:
        super().__init__(dims, num_outputs)
        self.fc = nn.Linear(sum(dims.values()), num_outputs)
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name, d in dims.items():
            self.offsets[name] = (start, start + d)
            start += d
        self.orthogonal = {n: orthogonal and num_outputs < d for n, d in dims.items()}
        self.scale = nn.Parameter(torch.full((len(dims), num_outputs), float(a_init)))

    def normalized_weight(self, name: str) -> Tensor:
        """``W~^(m)`` ``[C, D_m]``."""
        a, b = self.offsets[name]
        return own_normalize(self.fc.weight[:, a:b], self.orthogonal[name])

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Unimodal scores ``h~^(m)`` and their ``a``-weighted sum plus bias."""
        uni = {n: features[n] @ self.normalized_weight(n).t() for n in self.dims}
        logits = self.fc.bias + sum(
            (self.scale[i] * uni[n] for i, n in enumerate(self.dims)),
            start=torch.zeros_like(uni[next(iter(self.dims))]))
        return FusionOutput(logits, uni, torch.cat([features[n] for n in self.dims], 1))


@dataclass
class CRMTConfig(MethodConfig):
    """CRMT-JT hyper-parameters (official code defaults).

    Attributes:
        rho: Weight of the margin regulariser (``CRMT_JT.yaml``: 1.0).
        joint_epochs: Epochs of step 1 (``None``: ``train.epochs``).
        integration_epochs: Epochs of step 2 (``None``: ``max(1, epochs // 3 - 1)``, the
            code's ``range(1, n_epochs // 3)``).
        integration_lr_scale: Step-2 learning rate relative to ``train.lr`` (code: 0.03).
        integration_weight_decay: Step-2 weight decay (code: 1e-2; SGD, momentum 0.9).
        a_init: Initial integration weights (code: 0.1).
        orthogonal: Orthonormal classifier rows (paper); ``False``: row-normalised (code).
    """

    rho: float = 1.0
    joint_epochs: int | None = None
    integration_epochs: int | None = None
    integration_lr_scale: float = 0.03
    integration_weight_decay: float = 1e-2
    a_init: float = 0.1
    orthogonal: bool = True


@register_method("crmt")
class CRMT(Method):
    """CRMT: orthogonal unimodal classifiers + margin regulariser, then certified-bound weights.

    Yang, Wei, Liang & Hu, ICLR 2024 (CRMT-JT). Step 1: ``CE(h(x), y) + rho log sum_m
    sum_{k != y} exp(h~_k^(m) - h~_y^(m))``; step 2: maximise ``r(x) = (sum_m [a_y h~_y -
    a_j h~_j]^(m) + b_y - b_j) / sqrt(sum_m (a_y L_y + a_j L_j)^(m)^2)`` over ``a`` only.
    """

    Config = CRMTConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Yang et al., Quantifying and Enhancing Multi-modal Robustness with Modality "
             "Preference, ICLR 2024")
    family = "objective"

    lipschitz: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.rho < 0 or cfg.integration_lr_scale <= 0:
            raise ValueError("crmt: rho must be >= 0 and integration_lr_scale > 0")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders + :class:`OrthogonalFusion`."""
        base = build_multimodal_model(info, replace(model_cfg, fusion="concat",
                                                    unimodal_heads=False))
        fusion = OrthogonalFusion(base.fusion.dims, info.num_outputs, cfg.orthogonal,
                                  cfg.a_init)
        return MultimodalModel(base.encoders, fusion)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: CRMTConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.register_buffer("lipschitz", torch.zeros(len(self.names), info.num_outputs))

    @property
    def net(self) -> MultimodalModel:
        """The encoders + orthogonal fusion."""
        return cast(MultimodalModel, self.model)

    @property
    def fusion(self) -> OrthogonalFusion:
        """The orthogonal fusion layer."""
        return cast(OrthogonalFusion, self.net.fusion)

    # ----- declarations -------------------------------------------------------------------
    def stages(self, train: TrainConfig) -> list[Stage]:
        """Step 1 (everything) then step 2 (integration weights only)."""
        e = train.epochs
        first = self.cfg.joint_epochs if self.cfg.joint_epochs is not None else e
        second = (self.cfg.integration_epochs if self.cfg.integration_epochs is not None
                  else max(1, e // 3 - 1))
        return [Stage(JOINT, first, groups=("main",)),
                Stage(INTEGRATION, second, groups=(INTEGRATION,))]

    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """``main`` (all) in step 1, ``integration`` (the ``a^(m)``) in step 2."""
        if stage.key == INTEGRATION:
            return {INTEGRATION: [self.fusion.scale]}
        return {"main": list(self.parameters())}

    def group_options(self) -> dict[str, dict[str, float]]:
        """Step 2 uses SGD at ``0.03 lr`` with weight decay ``1e-2`` (official code)."""
        # build_optimizer also reads a string "optimizer" key; the base annotation says float.
        opts: dict[str, Any] = {"lr_scale": self.cfg.integration_lr_scale,
                                "weight_decay": self.cfg.integration_weight_decay,
                                "optimizer": "sgd"}
        return {INTEGRATION: cast(dict[str, float], opts)}

    # ----- losses -------------------------------------------------------------------------
    def stacked(self, out: ModelOutput) -> Tensor:
        """``[M, B, C]`` unimodal scores ``h~^(m)``."""
        return torch.stack([out.unimodal_logits[n] for n in self.names])

    def certified_radius(self, batch: Batch, out: ModelOutput | None = None) -> Tensor:
        """``[B]`` certified l2 radius ``r(x)`` (negative where misclassified)."""
        out = out if out is not None else self(batch)
        return certified_bound(self.stacked(out), self.fusion.scale, self.fusion.fc.bias,
                               self.lipschitz, batch.target)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """Step 1: ``CE + rho * margin``; step 2: ``-mean r(x)``."""
        if getattr(ctx.stage, "key", JOINT) == INTEGRATION:
            radius = self.certified_radius(batch, out)
            return {"loss": -radius.mean(), "radius": radius.detach().mean()}
        ce = self.task_loss(out.logits, batch.target)
        margin = crmt_margin_loss([out.unimodal_logits[n] for n in self.names], batch.target)
        return {"loss": ce + self.cfg.rho * margin, "ce": ce.detach(), "margin": margin.detach()}

    # ----- Lipschitz estimate -------------------------------------------------------------
    def estimate_lipschitz(self, split: MultimodalSplit, batch_size: int) -> Tensor:
        """``L_k^(m) = max_i ||d h~_k^(m)(x_i) / d x_i^(m)||_2`` over ``split`` (stored)."""
        was = self.training
        self.eval()
        lip = torch.zeros_like(self.lipschitz)
        for batch in split.iter_batches(batch_size):
            for i, n in enumerate(self.names):
                keep = batch.present[n]
                if not bool(keep.any()):
                    continue
                x = batch.inputs[n].detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    phi = self.net.encoders[n](x, batch.lengths.get(n))
                    scores = phi @ self.fusion.normalized_weight(n).t()
                    for c in range(scores.shape[1]):
                        (g,) = torch.autograd.grad(scores[:, c].sum(), x, retain_graph=True)
                        norms = g.flatten(1).norm(dim=1)[keep]
                        lip[i, c] = torch.maximum(lip[i, c], norms.max().detach())
        self.train(was)
        self.lipschitz.copy_(lip)
        return lip

    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """Estimate the Lipschitz constants before step 2 (a resumed run restores them)."""
        if stage.key == INTEGRATION and not resumed:
            lip = self.estimate_lipschitz(ctx.train_split, ctx.train.batch_size)
            log.info("crmt Lipschitz estimate per modality: %s", lip.max(1).values.tolist())

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Log the mean integration weight per modality."""
        scale = self.fusion.scale.detach()
        return {f"a_{n}": float(scale[i].mean()) for i, n in enumerate(self.names)}
