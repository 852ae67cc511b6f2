"""Calibrating Multimodal Learning (CML; Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, ICML 2023).

A trustworthy multimodal classifier should not become more confident when a modality is
removed: ``Conf(x^{T'}) <= Conf(x^T)`` for ``T' subset T`` with ``Conf = max softmax``.
Each training sample draws a random removal order; ``x^(0) = x`` and ``x^(j)`` drops the
next modality of that order (``j = 1 .. M-1``, zero features and absent mask, as the model
treats a missing modality). The objective (official code) is

``L = mean_j CE(f(x^(j)), y) + lambda * sum_i sum_j R(x_i^(j), x_i^(j+1))``

with the ranking penalty ``R = max(0, Conf(x^(j+1)) - Conf(x^(j)) - epsilon)`` where the
fuller prediction is correct, plus the same penalty (fuller confidence detached) where both
predictions are wrong (the code's "trick 1" and "trick 2"; see
:func:`~equimodal.losses.calibration.cml_rank_penalty`). The penalty is summed over the
batch, as in the code (``rank_loss * beta / 100`` with ``beta = 10``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor

from equimodal.engine.context import StepContext
from equimodal.losses.calibration import cml_rank_penalty, max_confidence, removal_masks
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


@dataclass
class CMLConfig(MethodConfig):
    """CML hyper-parameters (official code defaults).

    Attributes:
        lam: Weight ``lambda`` of the ranking penalty (the code's ``beta / 100`` with the
            README's ``--beta 10``).
        epsilon: Tolerance margin inside the hinge (``--epsilon 0``).
        both_wrong: Also penalise confidence gains when both predictions are wrong, pushing
            only the reduced prediction down ("trick 2").
        subset_ce: Train the reduced predictions with cross-entropy too (the code averages
            the CE over the full and every reduced input).
    """

    lam: float = 0.1
    epsilon: float = 0.0
    both_wrong: bool = True
    subset_ce: bool = True


@register_method("cml")
class CML(Method):
    """CML: penalise confidence that rises when a modality is removed (ranking regulariser).

    Ma et al., ICML 2023. ``L = mean_j CE(f(x^(j)), y) + lambda sum_i sum_j
    max(0, Conf(x_i^(j+1)) - Conf(x_i^(j)) - epsilon)`` over a random chain of nested modality
    subsets per sample (``Conf`` = max softmax; applied where the fuller prediction is
    right, and, pushing the reduced one only, where both are wrong).
    """

    Config = CMLConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = "Ma et al., Calibrating Multimodal Learning, ICML 2023"
    family = "objective"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.lam < 0 or cfg.epsilon < 0:
            raise ValueError("cml: lam and epsilon must be >= 0")

    def subset_outputs(self, batch: Batch, out: ModelOutput) -> list[Tensor]:
        """Fused logits of the nested subsets ``x^(0) .. x^(M-1)`` (one random chain per row)."""
        net = cast(MultimodalModel, self.model)
        logits = [out.logits]
        for present in removal_masks(batch.present)[1:]:
            feats = {n: f * present[n].to(f.dtype).unsqueeze(1) for n, f in out.features.items()}
            logits.append(net.fuse(replace(batch, present=present), feats).logits)
        return logits

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """``mean_j CE_j + lambda * sum R`` over the removal chain."""
        chain = self.subset_outputs(batch, out)
        y = batch.target
        ce_full = self.task_loss(chain[0], y)
        if self.cfg.subset_ce:
            ce = torch.stack([self.task_loss(z, y) for z in chain]).mean()
        else:
            ce = ce_full
        conf = [max_confidence(z) for z in chain]
        penalty = ce.new_zeros(())
        for (c_more, p_more), (c_less, p_less) in zip(conf[:-1], conf[1:], strict=True):
            penalty = penalty + cml_rank_penalty(c_more, p_more, c_less, p_less, y,
                                                 self.cfg.epsilon, self.cfg.both_wrong)
        loss = ce + self.cfg.lam * penalty
        return {"loss": loss, "ce": ce_full.detach(), "ce_subsets": ce.detach(),
                "cml": penalty.detach()}
