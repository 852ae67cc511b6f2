"""Cross-modal InfoNCE baseline (the "InfoNCE [52]" row of InfoBridge's Table 1) and the
pieces InfoBridge shares with it.

``L = L_task + alpha * mean_{pairs (a, b)} InfoNCE(g_a(z^a), g_b(z^b))``: every unordered
modality pair, in-batch negatives, cosine similarity over learned linear projections with a
temperature (van den Oord et al. 2018 use a log-bilinear critic; the projected cosine is the
common modern form). No context conditioning and no protective margin: it maximises the
unconditional ``I(z^a; z^b)`` lower bound ``log B - InfoNCE`` jointly with the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from equimodal.losses.nce import info_nce
from equimodal.methods._shared import PairwiseContrastive
from equimodal.methods.base import MethodConfig
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


@dataclass
class InfoNCEConfig(MethodConfig):
    """Cross-modal InfoNCE baseline.

    Attributes:
        alpha: Weight of the InfoNCE term (InfoBridge's alpha, 0.1, for a like-for-like
            comparison; the paper does not state the baseline's weight).
        temperature: Softmax temperature of the cosine logits.
        proj_dim: Width of the per-modality projection heads (``None``: 64).
        symmetric: Average both directions (a -> b and b -> a); ``False`` uses a -> b only.
        regression_loss: ``l1`` or ``mse`` for regression tasks.
    """

    alpha: float = 0.1
    temperature: float = 0.1
    proj_dim: int | None = None
    symmetric: bool = True
    regression_loss: str = "l1"


@register_method("infonce")
class InfoNCE(PairwiseContrastive):
    """Task loss + unconditional cross-modal InfoNCE over all modality pairs (CPC [52])."""

    Config = InfoNCEConfig
    paper = "van den Oord et al., Representation Learning with Contrastive Predictive Coding, 2018"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.temperature <= 0:
            raise ValueError(f"infonce: temperature must be > 0, got {cfg.temperature}")
        if cfg.alpha < 0:
            raise ValueError(f"infonce: alpha must be >= 0, got {cfg.alpha}")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: InfoNCEConfig) -> None:
        super().__init__(model, info, cfg)
        width = cfg.proj_dim or 64
        self.projections = nn.ModuleDict(
            {n: nn.Linear(self.dims[n], width) for n in self.names}
        )

    def contrastive_loss(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Mean over modality pairs of the (symmetric) InfoNCE on rows with both present."""
        z = {n: self.projections[n](out.features[n]) for n in self.names}
        terms = []
        for a, b in self.pairs:
            mask = batch.present[a] & batch.present[b]
            if int(mask.sum()) < 2:  # one row has no negative: nothing to contrast
                continue
            keep = None if bool(mask.all()) else mask
            t = self.cfg.temperature
            ab = info_nce(z[a], z[b], t, keep)
            terms.append(0.5 * (ab + info_nce(z[b], z[a], t, keep)) if self.cfg.symmetric else ab)
        if not terms:
            return out.logits.new_zeros(())
        return torch.stack(terms).mean()

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: Any) -> dict[str, Tensor]:
        """``L_task + alpha * InfoNCE`` (+ probe heads for non-splittable fusions)."""
        task = self.task_loss(out.logits, batch.target)
        nce = self.contrastive_loss(batch, out)
        loss = task + self.cfg.alpha * nce + self.probe_loss(batch, out)
        return {"loss": loss, "task": task.detach(), "infonce": nce.detach()}

