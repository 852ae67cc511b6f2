"""Plain fusion baselines (joint training with one cross-entropy on the fused output) and
the unimodal baseline."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from equimodal.config import ModelConfig
from equimodal.methods.base import FusionConfig, Method
from equimodal.models.multimodal import build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


class _FixedFusion(Method):
    """Joint training of encoders + a fixed fusion module."""

    fusion_name = "concat"
    paper = "baseline"

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic model with this baseline's fusion."""
        return build_multimodal_model(info, replace(model_cfg, fusion=cls.fusion_name))


@register_method("concat")
class Concat(_FixedFusion):
    """Concatenation fusion (feature-level), jointly trained with one task loss."""

    fusion_name = "concat"


@register_method("sum")
class Sum(_FixedFusion):
    """Summation fusion: per-modality linear heads whose logits are added."""

    fusion_name = "sum"


@register_method("late")
class Late(_FixedFusion):
    """Late (decision-level) fusion: per-modality heads averaged over present modalities."""

    fusion_name = "late"


@register_method("gated")
class Gated(_FixedFusion):
    """Gated fusion (gated multimodal unit) over projected features."""

    fusion_name = "gated"


@register_method("film")
class FiLM(_FixedFusion):
    """FiLM fusion: later modalities scale and shift the first modality's features."""

    fusion_name = "film"
    paper = "Perez et al., FiLM, AAAI 2018"


@dataclass
class UnimodalConfig(FusionConfig):
    """Config of the unimodal baseline.

    Attributes:
        modality: The modality to train on (``None``: the data's first modality).
    """

    modality: str | None = None


@register_method("unimodal")
class Unimodal(Method):
    """One modality only: its encoder and a linear head (the others are ignored)."""

    Config = UnimodalConfig
    paper = "baseline"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also check that the chosen modality exists."""
        super().check_task(info, cfg)
        if cfg.modality is not None:
            info.check_modality(cfg.modality)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Encoder of the chosen modality + concat (i.e. linear) head."""
        name = cfg.modality or info.modality_names[0]
        cfg.modality = name  # resolved, so the saved config names it
        return build_multimodal_model(info, replace(model_cfg, fusion="concat"), [name])

    @property
    def modalities_in_use(self) -> list[str]:
        """The one modality this baseline reads (evaluation reports no score for the rest)."""
        return [self.cfg.modality or self.info.modality_names[0]]

    def forward(self, batch: Batch) -> ModelOutput:
        """Predict from the chosen modality alone."""
        out: ModelOutput = self.model(batch)
        return out
