"""Cross-modal InfoNCE baseline (the "InfoNCE [52]" row of InfoBridge's Table 1) and the
pieces InfoBridge shares with it.

``L = L_task + alpha * mean_{pairs (a, b)} InfoNCE(g_a(z^a), g_b(z^b))``: every unordered
modality pair, in-batch negatives, cosine similarity over learned linear projections with a
temperature (van den Oord et al. 2018 use a log-bilinear critic; the projected cosine is the
common modern form). No context conditioning and no protective margin: it maximises the
unconditional ``I(z^a; z^b)`` lower bound ``log B - InfoNCE`` jointly with the task.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.losses.nce import info_nce
from equimodal.methods.base import ALL_TASKS, Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel, build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


@torch.no_grad()
def feature_dims(model: nn.Module, info: TaskInfo) -> dict[str, int]:
    """Per-modality feature sizes of ``model.encode``, from one zero batch in eval mode.

    Eval mode keeps normalisation statistics untouched, so the probe changes no state.
    """
    net = cast(MultimodalModel, model)
    was = net.training
    net.eval()
    inputs, lengths = {}, {}
    for name, spec in info.modalities.items():
        if spec.is_sequence:
            inputs[name] = torch.zeros(2, int(spec.seq_len or 1), spec.dim)
            lengths[name] = torch.full((2,), int(spec.seq_len or 1), dtype=torch.long)
        else:
            inputs[name] = torch.zeros(2, spec.dim)
    present = {n: torch.ones(2, dtype=torch.bool) for n in info.modalities}
    feats = net.encode(Batch(inputs, torch.zeros(2, dtype=torch.long), present, lengths))
    net.train(was)
    return {n: int(f.shape[1]) for n, f in feats.items()}


class PairwiseContrastive(Method):
    """Base of cross-modal contrastive methods over all modality pairs.

    For ``M > 2`` modalities the pairwise term is averaged over the ``M (M - 1) / 2``
    unordered pairs (in the data's modality order). Fusions that cannot be split per
    modality get linear unimodal heads trained as probes on detached features, so
    ``ModelOutput.unimodal_logits`` is always filled without changing the encoders' loss.
    """

    capabilities = Capabilities(tasks=ALL_TASKS, min_modalities=2)
    family = "objective"

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic model; unimodal heads are added only where the fusion cannot be split."""
        return build_multimodal_model(info, replace(model_cfg, unimodal_heads=True))

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: Any) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.pairs: list[tuple[str, str]] = list(itertools.combinations(self.names, 2))
        self.dims = feature_dims(model, info)

    @property
    def net(self) -> MultimodalModel:
        """The generic network (encoders + fusion)."""
        return cast(MultimodalModel, self.model)

    def probe_loss(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Task loss of the unimodal probe heads on detached features (zero without heads)."""
        heads = self.net.unimodal_heads
        total = out.logits.new_zeros(())
        if heads is None:
            return total
        for name, head in heads.items():
            mask = batch.present[name]
            if bool(mask.any()):
                logits = head(out.features[name].detach()[mask])
                total = total + self.task_loss(logits, batch.target[mask])
        return total


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


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity (shared helper)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
