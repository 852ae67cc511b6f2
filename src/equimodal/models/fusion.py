"""Fusion modules: features of each modality -> fused logits (+ unimodal logits when the
fusion can be split per modality, as OGM-GE splits the concat layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from equimodal.registry import FUSIONS


@dataclass
class FusionOutput:
    """Fused logits, per-modality logits (if any) and the fused representation."""

    logits: Tensor
    unimodal_logits: dict[str, Tensor] = field(default_factory=dict)
    fused: Tensor | None = None


class Fusion(nn.Module):
    """Base class. Subclasses implement ``forward(features, present) -> FusionOutput``.

    Args:
        dims: Modality -> feature size, in the data's order.
        num_outputs: Output size of the head.
    """

    splittable: bool = False

    def __init__(self, dims: dict[str, int], num_outputs: int) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.num_outputs = num_outputs

    def head_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters of the fusion that belong to one modality only (empty if none)."""
        return []


def _presence_weights(present: dict[str, Tensor], names: list[str], ref: Tensor) -> Tensor:
    return torch.stack([present[n].to(ref.dtype) for n in names], dim=1)  # [B, M]


@FUSIONS.register("concat", "Concatenate features, one linear layer (splittable per modality)")
class ConcatFusion(Fusion):
    """``logits = W [h_1; ...; h_M] + b``; unimodal logits ``h_m W_m^T + b / M`` (OGM-GE split)."""

    splittable = True

    def __init__(self, dims: dict[str, int], num_outputs: int) -> None:
        super().__init__(dims, num_outputs)
        self.fc = nn.Linear(sum(dims.values()), num_outputs)
        offsets, start = {}, 0
        for name, d in dims.items():
            offsets[name] = (start, start + d)
            start += d
        self.offsets = offsets

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Fuse by concatenation."""
        fused = torch.cat([features[n] for n in self.dims], dim=1)
        logits = self.fc(fused)
        m = len(self.dims)
        uni = {
            n: features[n] @ self.fc.weight[:, a:b].t() + self.fc.bias / m
            for n, (a, b) in self.offsets.items()
        }
        return FusionOutput(logits, uni, fused)


@FUSIONS.register("sum", "One linear layer per modality, logits summed")
class SumFusion(Fusion):
    """``logits = sum_m (W_m h_m + b_m)``; each term is that modality's unimodal logits."""

    splittable = True

    def __init__(self, dims: dict[str, int], num_outputs: int) -> None:
        super().__init__(dims, num_outputs)
        self.fcs = nn.ModuleDict({n: nn.Linear(d, num_outputs) for n, d in dims.items()})

    def head_parameters(self, modality: str) -> list[nn.Parameter]:
        """The modality's own linear layer."""
        return list(self.fcs[modality].parameters())

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Fuse by summing per-modality logits."""
        uni = {n: fc(features[n]) for n, fc in self.fcs.items()}
        logits = torch.stack(list(uni.values())).sum(0)
        return FusionOutput(logits, uni, torch.cat([features[n] for n in self.dims], 1))


@FUSIONS.register("late", "Per-modality MLP heads, logits averaged over present modalities")
class LateFusion(Fusion):
    """Decision-level fusion: average of per-modality heads over the modalities present."""

    splittable = True

    def __init__(self, dims: dict[str, int], num_outputs: int, hidden: int = 64) -> None:
        super().__init__(dims, num_outputs)
        self.heads = nn.ModuleDict(
            {
                n: nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))
                for n, d in dims.items()
            }
        )

    def head_parameters(self, modality: str) -> list[nn.Parameter]:
        """The modality's own head."""
        return list(self.heads[modality].parameters())

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Average unimodal logits over present modalities."""
        names = list(self.dims)
        uni = {n: self.heads[n](features[n]) for n in names}
        stacked = torch.stack([uni[n] for n in names], dim=1)  # [B, M, C]
        w = _presence_weights(present, names, stacked)
        logits = (stacked * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        return FusionOutput(logits, uni, torch.cat([features[n] for n in names], 1))


@FUSIONS.register("gated", "Sigmoid gates per modality computed from all features")
class GatedFusion(Fusion):
    """``z = sum_m sigmoid(g_m([h])) * tanh(P_m h_m)``, logits ``= W z`` (gated multimodal unit)."""

    def __init__(self, dims: dict[str, int], num_outputs: int, hidden: int = 64) -> None:
        super().__init__(dims, num_outputs)
        total = sum(dims.values())
        self.proj = nn.ModuleDict({n: nn.Linear(d, hidden) for n, d in dims.items()})
        self.gate = nn.Linear(total, hidden * len(dims))
        self.fc = nn.Linear(hidden, num_outputs)
        self.hidden = hidden

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Gated sum of projected features."""
        names = list(self.dims)
        cat = torch.cat([features[n] for n in names], dim=1)
        gates = torch.sigmoid(self.gate(cat)).view(cat.shape[0], len(names), self.hidden)
        projected = torch.stack([torch.tanh(self.proj[n](features[n])) for n in names], 1)
        w = _presence_weights(present, names, projected).unsqueeze(-1)
        fused = (gates * projected * w).sum(1)
        return FusionOutput(self.fc(fused), {}, fused)


@FUSIONS.register("film", "FiLM: each later modality scales and shifts the first one's features")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation, chained: ``z <- gamma_m(h_m) * z + beta_m(h_m)``."""

    def __init__(self, dims: dict[str, int], num_outputs: int, hidden: int = 64) -> None:
        super().__init__(dims, num_outputs)
        names = list(dims)
        self.base = nn.Linear(dims[names[0]], hidden)
        self.film = nn.ModuleDict({n: nn.Linear(dims[n], 2 * hidden) for n in names[1:]})
        self.fc = nn.Linear(hidden, num_outputs)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """Modulate the first modality by the others (identity where a modality is absent)."""
        names = list(self.dims)
        z = self.base(features[names[0]])
        for n in names[1:]:
            gamma, beta = self.film[n](features[n]).chunk(2, dim=1)
            p = present[n].to(z.dtype).unsqueeze(1)
            z = p * ((1 + gamma) * z + beta) + (1 - p) * z
        fused = torch.relu(z)
        return FusionOutput(self.fc(fused), {}, fused)


def build_fusion(name: str, dims: dict[str, int], num_outputs: int, hidden: int = 64) -> Fusion:
    """Create fusion ``name`` (see ``FUSIONS``) for the given modality feature sizes."""
    cls = FUSIONS.get(name)
    if cls in (ConcatFusion, SumFusion):
        fusion: Fusion = cls(dims, num_outputs)
    else:
        fusion = cls(dims, num_outputs, hidden=hidden)
    return fusion
