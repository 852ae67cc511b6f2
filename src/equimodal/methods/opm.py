"""OPM / OGM: On-the-fly Prediction (and Gradient) Modulation (Wei, Hu, Du, Wen; "On-the-fly
Modulation for Balanced Multimodal Learning", TPAMI 2024; the journal extension of OGM-GE).

Both variants monitor the same discrepancy as OGM-GE on every mini-batch: scores
``s_m = mean_i softmax(o_m)_i[y_i]`` of the split-fusion unimodal logits (computed on the clean
features, without gradient) and ratios ``rho_m = s_m / min_k s_k`` (two modalities:
``s_dominant / s_other``).

* ``variant="opm"`` (feed-forward): with probability ``p_exe`` per batch, the features of
  modality ``m`` are dropped per sample with probability
  ``q_m = q_base (1 + lam tanh(relu(rho_m - 1)))`` (only the dominant modalities, ``rho > 1``;
  clipped to [0, 1]) and the kept features are rescaled by ``1 / (1 - theta)`` with
  ``theta = sum_m d_m q_m / sum_m d_m`` (dropout-style, ``d_m`` the feature sizes). Samples
  that lost every modality leave the loss. The fused prediction of the dropped features is
  trained with cross-entropy.
* ``variant="ogm"`` (back-propagation): OGM(-GE) with the same discrepancy, i.e.
  ``k_m = 1 - tanh(alpha rho_m)`` on the dominant encoder's gradients (+ GE noise), as in
  :mod:`equimodal.methods.ogm_ge`.

Both start after ``warmup_epochs`` epochs of plain joint training (the reference code warms up
for epochs 0-5); OGM also needs the epoch inside ``[modulation_starts, modulation_ends]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from equimodal.engine.context import StepContext
from equimodal.losses.modulation import (
    discrepancy_ratios,
    opm_drop_probabilities,
    true_class_score,
)
from equimodal.methods._shared import GradientModulationBase, check_choices
from equimodal.methods.base import MethodConfig
from equimodal.registry import register_method
from equimodal.types import Batch, TaskInfo

VARIANTS = ("opm", "ogm")


@dataclass
class OPMConfig(MethodConfig):
    """OPM / OGM hyper-parameters (defaults of the TPAMI reference code).

    Attributes:
        variant: ``opm`` (drop the dominant modality's features on the forward pass) or
            ``ogm`` (modulate its gradients).
        q_base: Base drop probability of a dominant modality (OPM).
        lam: Growth of the drop probability with the discrepancy (OPM's lambda).
        p_exe: Probability that a batch is modulated at all (OPM).
        warmup_epochs: Epochs of plain joint training before any modulation.
        alpha: OGM strength in ``1 - tanh(alpha * rho)``.
        modulation_starts: First epoch (inclusive) of OGM modulation.
        modulation_ends: Last epoch (inclusive) of OGM modulation.
        ge: OGM with generalisation-enhancement noise (the reference code's default).
        ratio_minus_one: OGM with ``tanh(alpha * (rho - 1))``.
        param_filter: OGM on ``all`` encoder parameters, only ``weights`` (ndim >= 2) or
            only ``conv`` kernels (ndim == 4, the OGM-GE reference code's rule).
    """

    variant: str = "opm"
    q_base: float = 0.5
    lam: float = 0.5
    p_exe: float = 0.7
    warmup_epochs: int = 6
    alpha: float = 0.8
    modulation_starts: int = 0
    modulation_ends: int = 80
    ge: bool = True
    ratio_minus_one: bool = False
    param_filter: str = "all"


@register_method("opm")
class OPM(GradientModulationBase):
    """OPM: drop the dominant modality's features with a discrepancy-driven probability.

    Wei et al., "On-the-fly Modulation for Balanced Multimodal Learning", TPAMI 2024. OPM drops
    modality ``m`` per sample with ``q_m = q_base (1 + lam tanh(relu(rho_m - 1)))`` and rescales
    the kept features by ``1 / (1 - theta)``; ``variant="ogm"`` is the paper's OGM
    (``1 - tanh(alpha rho)`` on the dominant encoder's gradients). See the module docstring.
    """

    Config = OPMConfig
    paper = "Wei et al., On-the-fly Modulation for Balanced Multimodal Learning, TPAMI 2024"
    family = "feed-forward"

    drop_probs: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the OPM fields."""
        super().check_task(info, cfg)
        check_choices("opm", cfg, {"variant": VARIANTS})
        for field in ("q_base", "p_exe"):
            if not 0.0 <= getattr(cfg, field) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {getattr(cfg, field)}")

    def __init__(self, model: Any, info: TaskInfo, cfg: OPMConfig) -> None:
        super().__init__(model, info, cfg)
        self.register_buffer("drop_probs", torch.zeros(len(self.names)))

    def modulation_active(self, ctx: StepContext) -> bool:
        """After the warm-up (and, for OGM, inside the modulation window)."""
        if ctx.epoch < self.cfg.warmup_epochs:
            return False
        return self.cfg.variant == "opm" or super().modulation_active(ctx)

    @torch.no_grad()
    def update_drop_probs(self, batch: Batch, unimodal: dict[str, Tensor]) -> Tensor:
        """Discrepancy ratios of this batch and the OPM drop probabilities ``q_m``."""
        scores = torch.stack([true_class_score(unimodal[n], batch.target, batch.present[n])
                              for n in self.names])
        ratios = discrepancy_ratios(scores)
        q = opm_drop_probabilities(ratios, self.cfg.q_base, self.cfg.lam)
        self.ratios.copy_(ratios)
        self.drop_probs.copy_(q)
        return q

    def drop_features(self, features: dict[str, Tensor], q: Tensor
                      ) -> tuple[dict[str, Tensor], Tensor]:
        """Drop each modality's features per sample with probability ``q_m`` and rescale the
        kept ones by ``1 / (1 - theta)``; also return which samples kept any modality."""
        first = features[self.names[0]]
        b = first.shape[0]
        keep = torch.bernoulli((1.0 - q).to(first.device).float().expand(b, -1))  # [B, M]
        dims = torch.tensor([float(features[n].shape[1]) for n in self.names],
                            device=first.device)
        theta = float((dims * q.to(dims.device)).sum() / dims.sum())
        scale = 1.0 / max(1.0 - theta, 1e-5)
        dropped = {n: features[n] * keep[:, i:i + 1].to(features[n].dtype) * scale
                   for i, n in enumerate(self.names)}
        return dropped, keep.sum(1) > 0

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """OGM: the shared gradient-modulation step. OPM: maybe drop features, fuse, CE."""
        if self.cfg.variant == "ogm":
            return super().training_step(batch, ctx)
        with ctx.autocast():
            feats = self.net.encode(batch)
            clean = self.net.fuse(batch, feats)
            q = self.update_drop_probs(batch, clean.unimodal_logits)
            dropped = False
            if self.modulation_active(ctx) and float(torch.rand(())) < self.cfg.p_exe:
                kept, flag = self.drop_features(feats, q)
                out = self.net.fuse(batch, kept)
                dropped = True
                if flag.any():
                    loss = self.task_loss(out.logits[flag], batch.target[flag])
                else:
                    loss = out.logits.sum() * 0.0
            else:
                loss = self.task_loss(clean.logits, batch.target)
        ctx.backward(loss)
        ctx.step()
        losses = {"loss": loss.detach(), "dropped": torch.tensor(float(dropped))}
        losses.update({f"q/{n}": self.drop_probs[i].clone() for i, n in enumerate(self.names)})
        return losses
