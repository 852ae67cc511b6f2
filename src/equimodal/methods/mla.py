"""MLA: Multimodal Learning with Alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao;
"Multimodal Representation Learning by Alternating Unimodal Adaptation", CVPR 2024).

* Model: one encoder per modality and ONE head ``W`` shared by every modality (Sec. 3.1).
* Alternating unimodal training (Eq. 2): for every mini-batch the modalities take turns; the
  turn of modality ``m`` minimises ``CE(W phi_m(x_m), y)`` and updates ``phi_m`` and ``W``
  immediately (``ctx.step()`` per modality), so modalities never compete inside one gradient.
* Gradient modification of the shared head (Sec. 3.2, orthogonal weight modification, OWM):
  a projector ``P`` (``H x H``, identity at start) keeps the memory of the input directions
  of the modalities trained before; before the turn of modality ``m`` it absorbs the mean head
  input ``r`` of the previous turn, ``k = P r^T``, ``P <- P - k k^T / (a + r k)`` with
  ``a = 0.1^(1 + i/n)`` (``i`` the batch index in the epoch, ``n`` the batches per epoch, as in
  the reference code), and the head's weight gradient becomes ``grad_W P`` so the new
  modality does not overwrite what the head learnt for the others.
* Test-time dynamic fusion (Sec. 3.3): ``y = sum_m w_m W phi_m(x_m)`` with per-sample weights
  ``w_m = exp(max_k e_k - e_m) / sum_j exp(max_k e_k - e_j)``, ``e_m`` the predictive
  entropy of modality ``m`` (absent modalities get weight 0).

``head_projection="owm_add"`` reproduces the reference code instead (BalanceBenchmark
``MLA_trainer.py``, ``GSPlugin.before_update``): from the second turn on, ``P`` absorbs the
current turn's mean input ``r`` ``[1, H]`` with ``k = P r^T`` ``[H, 1]`` and
``P <- P - (k k^T) / (a + k r)``, where ``k r`` is the ``H x H`` outer product and the division
is element-wise (not the scalar ``a + r k`` of the RLS update above); then ``P <- P / ||P||_F``
and ``grad_W <- grad_W + grad_W P^T`` (see :func:`owm_update_reference`). ``"none"`` disables
the modification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.engine.context import StepContext
from equimodal.losses.modulation import entropy_fusion_weights, isolated_grads, owm_update
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import build_encoders
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

PROJECTIONS = ("owm", "owm_add", "none")


def owm_update_reference(P: Tensor, r: Tensor, alpha: float) -> Tensor:
    """The reference code's projector update (``GSPlugin.before_update``), reproduced exactly:
    ``k = P r^T`` and ``P - (k k^T) / (alpha + k r)`` with ``k r`` the ``H x H`` outer product
    divided element-wise (no clamping, as in the reference; Frobenius normalisation follows
    in the caller).

    Args:
        P: ``[H, H]`` projector.
        r: Mean head input (``[H]`` or ``[1, H]``).
        alpha: Regulariser ``a = 0.1^(1 + i/n)``.
    """
    r = r.reshape(1, -1).to(P.dtype)
    k = P @ r.t()  # [H, 1]
    return P - (k @ k.t()) / (alpha + k @ r)
WEIGHTINGS = ("entropy", "uniform")


@dataclass
class MLAConfig(MethodConfig):
    """MLA hyper-parameters (paper / reference defaults).

    Attributes:
        head_projection: ``owm`` (the paper: ``grad_W P``, ``P`` from the previous
            modalities), ``owm_add`` (the reference code) or ``none``.
        owm_alpha: Base of the OWM regulariser ``a = owm_alpha^(1 + i/n)`` (0.1 in the code).
        fusion_weighting: ``entropy`` (test-time dynamic fusion) or ``uniform`` (mean of the
            present modalities' logits).
    """

    head_projection: str = "owm"
    owm_alpha: float = 0.1
    fusion_weighting: str = "entropy"


class SharedHeadModel(nn.Module):
    """Encoders (``ModuleDict`` by modality) + one head shared by every modality.

    Args:
        encoders: Modality -> encoder returning ``[B, H]`` (same H for all).
        head: The shared linear head ``H -> C``.
    """

    def __init__(self, encoders: nn.ModuleDict, head: nn.Linear) -> None:
        super().__init__()
        self.encoders = encoders
        self.head = head

    def encode_one(self, batch: Batch, name: str) -> Tensor:
        """Features of one modality ``[B, H]`` (zero where absent)."""
        h: Tensor = self.encoders[name](batch.inputs[name], batch.lengths.get(name))
        return h * batch.present[name].to(h.dtype).unsqueeze(1)

    def forward(self, batch: Batch) -> ModelOutput:
        """Per-modality features and shared-head logits; ``logits`` = their plain mean."""
        feats = {n: self.encode_one(batch, n) for n in self.encoders}
        uni = {n: self.head(h) for n, h in feats.items()}
        return ModelOutput(torch.stack(list(uni.values())).mean(0), feats, uni)


@register_method("mla")
class MLA(Method):
    """MLA: alternating unimodal updates of a shared head with OWM, entropy-weighted fusion.

    Zhang et al., "Multimodal Representation Learning by Alternating Unimodal Adaptation",
    CVPR 2024. Implements the alternating unimodal objective (one optimiser step per modality
    turn), the OWM gradient modification ``grad_W P`` of the shared head and the test-time
    fusion ``w_m = softmax_m(-entropy_m)``; see the module docstring.
    """

    Config = MLAConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Zhang et al., Multimodal Representation Learning by Alternating Unimodal "
             "Adaptation, CVPR 2024")
    family = "optimisation"

    projector: Tensor
    prev_input: Tensor
    has_prev: Tensor
    n_turns: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        check_choices("mla", cfg, {"head_projection": PROJECTIONS,
                                   "fusion_weighting": WEIGHTINGS})

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders (same width) and one shared linear head."""
        encoders = build_encoders(info, model_cfg)
        return SharedHeadModel(encoders, nn.Linear(model_cfg.hidden, info.num_outputs))

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: MLAConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        h = self.net.head.in_features
        # OWM state: the projector and the mean head input of the previous turn.
        self.register_buffer("projector", torch.eye(h))
        self.register_buffer("prev_input", torch.zeros(h))
        self.register_buffer("has_prev", torch.tensor(False))
        self.register_buffer("n_turns", torch.zeros((), dtype=torch.long))

    @property
    def net(self) -> SharedHeadModel:
        """The encoders + shared head."""
        return cast(SharedHeadModel, self.model)

    def forward(self, batch: Batch) -> ModelOutput:
        """Shared-head logits per modality, fused by entropy (or uniform) weights."""
        out = self.net(batch)
        uni = [out.unimodal_logits[n] for n in self.names]
        present = [batch.present[n] for n in self.names]
        if self.cfg.fusion_weighting == "entropy":
            w = entropy_fusion_weights(uni, present)
        else:
            mask = torch.stack([p.float() for p in present], 1)
            w = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
        stacked = torch.stack(uni, 1)  # [B, M, C]
        out.logits = (stacked * w.to(stacked.dtype).unsqueeze(-1)).sum(1)
        return out

    @torch.no_grad()
    def modify_head_grad(self, head_input: Tensor, alpha: float) -> None:
        """OWM on the shared head's weight gradient for the turn whose inputs are given."""
        weight = self.net.head.weight
        mode = self.cfg.head_projection
        r = head_input.float().mean(0)
        if mode == "owm":
            if bool(self.has_prev):
                self.projector.copy_(owm_update(self.projector, self.prev_input, alpha))
                if weight.grad is not None:
                    weight.grad.copy_(weight.grad @ self.projector.to(weight.grad.dtype))
            self.prev_input.copy_(r)
            self.has_prev.fill_(True)
        elif mode == "owm_add" and int(self.n_turns) > 0:
            # Reference code: P absorbs the current input, is normalised, and the projected
            # gradient is added to (not substituted for) the plain one.
            p = owm_update_reference(self.projector, r, alpha)
            self.projector.copy_(p / torch.linalg.matrix_norm(p).clamp_min(1e-12))
            if weight.grad is not None:
                weight.grad.add_(weight.grad @ self.projector.t().to(weight.grad.dtype))
        self.n_turns += 1

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """One turn per modality: unimodal CE through the shared head, OWM, optimiser step."""
        n_batches = max(1, len(ctx.train_split) // ctx.train.batch_size)
        alpha = self.cfg.owm_alpha ** (ctx.batch_index / n_batches + 1.0)
        logs: dict[str, Tensor] = {}
        for n in self.names:
            mask = batch.present[n].bool()
            if not mask.any():
                continue
            with ctx.autocast():
                h = self.net.encode_one(batch, n)
                loss = self.task_loss(self.net.head(h[mask]), batch.target[mask])
            with isolated_grads([cast(nn.Parameter, self.net.head.weight)]):
                ctx.backward(loss)
                self.modify_head_grad(h.detach()[mask], alpha)
            ctx.step()
            logs[f"loss/{n}"] = loss.detach()
        logs["loss"] = torch.stack(list(logs.values())).mean()
        return logs
