"""The generic multimodal model: one encoder per modality + a fusion module."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.models.encoders import build_encoder
from equimodal.models.fusion import Fusion, build_fusion
from equimodal.types import Batch, ModelOutput, TaskInfo


class MultimodalModel(nn.Module):
    """Encoders (``ModuleDict`` keyed by modality name) + fusion (+ optional unimodal heads).

    Features of a sample's missing modality are zeroed, so absent inputs never leak a bias
    term into the fusion.

    Args:
        encoders: Modality -> encoder returning ``[B, H_m]``.
        fusion: Fusion module over the encoders' features.
        unimodal_heads: Optional modality -> head for fusions that cannot be split.
    """

    def __init__(
        self,
        encoders: nn.ModuleDict,
        fusion: Fusion,
        unimodal_heads: nn.ModuleDict | None = None,
    ) -> None:
        super().__init__()
        self.encoders = encoders
        self.fusion = fusion
        self.unimodal_heads = unimodal_heads

    @property
    def modalities(self) -> list[str]:
        """Modality names, in the data's order."""
        return list(self.encoders.keys())

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per-modality features ``[B, H]`` (zero for absent modalities)."""
        feats = {}
        for name, enc in self.encoders.items():
            h = enc(batch.inputs[name], batch.lengths.get(name))
            feats[name] = h * batch.present[name].to(h.dtype).unsqueeze(1)
        return feats

    def fuse(self, batch: Batch, features: dict[str, Tensor]) -> ModelOutput:
        """Run the fusion (and unimodal heads) on given features."""
        out = self.fusion(features, batch.present)
        uni = dict(out.unimodal_logits)
        if self.unimodal_heads is not None:
            for n, head in self.unimodal_heads.items():
                uni.setdefault(n, head(features[n]))
        return ModelOutput(out.logits, features, uni, out.fused)

    def forward(self, batch: Batch) -> ModelOutput:
        """Encode, fuse and return :class:`ModelOutput`."""
        return self.fuse(batch, self.encode(batch))


def build_encoders(
    info: TaskInfo, cfg: ModelConfig, modalities: list[str] | None = None,
    hidden: int | None = None,
) -> nn.ModuleDict:
    """One encoder per modality from ``cfg``, honouring ``cfg.encoders`` / ``encoder_kwargs``.

    Methods that build their own model use this too, so per-modality encoder settings apply
    to every method alike.

    Args:
        info: The task (modality shapes).
        cfg: Backbone settings.
        modalities: Modalities to encode (default: all of the task's).
        hidden: Output feature size (default ``cfg.hidden``).

    Raises:
        KeyError: A modality named in ``modalities`` or in the per-modality settings is not
            one of the data's (a typo must not silently fall back to the default encoder).
    """
    names = modalities or info.modality_names
    for n in [*names, *cfg.encoders, *(k for k in cfg.encoder_kwargs if k != "*")]:
        info.check_modality(n)
    width = cfg.hidden if hidden is None else hidden

    def extra(n: str) -> dict[str, Any]:
        return {**cfg.encoder_kwargs.get("*", {}), **cfg.encoder_kwargs.get(n, {})}

    return nn.ModuleDict({
        n: build_encoder(info.modalities[n], cfg.encoders.get(n, cfg.encoder), width,
                         cfg.layers, cfg.dropout, cfg.heads, cfg.seq_encoder, extra(n))
        for n in names
    })


def build_multimodal_model(
    info: TaskInfo, cfg: ModelConfig, modalities: list[str] | None = None
) -> MultimodalModel:
    """Build encoders for ``modalities`` (default: all of the task's) and the configured fusion."""
    names = modalities or info.modality_names
    encoders = build_encoders(info, cfg, names)
    dims = {n: cfg.hidden for n in names}
    fusion = build_fusion(cfg.fusion, dims, info.num_outputs, cfg.hidden)
    heads = None
    if cfg.unimodal_heads and not fusion.splittable:
        heads = nn.ModuleDict({n: nn.Linear(cfg.hidden, info.num_outputs) for n in names})
    return MultimodalModel(encoders, fusion, heads)
