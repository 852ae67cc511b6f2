"""Helpers shared by several methods: one home, so no method module imports another.

* :func:`check_choices`: the one validator of enum-valued config fields;
* :func:`encoder_dims`, :func:`feature_dims`: per-modality feature sizes of a model;
* :class:`UnimodalHeads`: separate linear heads on each modality's encoder features
  (G-Blending, InfoReg);
* :func:`cosine`: row-wise cosine similarity;
* :class:`GradientModulationBase`: the machinery OGM-GE and OPM share;
* :class:`PairwiseContrastive`: the base of InfoNCE and InfoBridge.

Batches of a split in order come from :meth:`MultimodalSplit.iter_batches
<equimodal.data.dataset.MultimodalSplit.iter_batches>` (``ctx.iter_train()`` for the
training split).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.losses.modulation import (
    discrepancy_ratios,
    isolated_grads,
    modulate_grads_,
    ogm_coefficients,
    true_class_score,
)
from equimodal.methods.base import ALL_TASKS, Capabilities, Method
from equimodal.models.multimodal import MultimodalModel, build_multimodal_model
from equimodal.types import Batch, ModelOutput, TaskInfo

if TYPE_CHECKING:
    from equimodal.engine.context import StepContext

PARAM_FILTERS = ("all", "weights", "conv")


def check_choices(name: str, cfg: Any, choices: Mapping[str, tuple[str, ...]]) -> None:
    """Raise ``ValueError`` when an enum-valued config field is outside its choices.

    The one validator of ``"must be one of"`` checks: every method calls it with a mapping
    field -> allowed values, so messages read the same everywhere.

    Args:
        name: Method name, the message's prefix.
        cfg: The method's config dataclass.
        choices: Field name -> allowed values.

    Raises:
        ValueError: ``"<name>: <field> must be one of (...), got <value>"``.
    """
    for field_name, allowed in choices.items():
        if getattr(cfg, field_name) not in allowed:
            raise ValueError(f"{name}: {field_name} must be one of {allowed}, "
                             f"got {getattr(cfg, field_name)!r}")


def encoder_dims(model: nn.Module, info: TaskInfo) -> dict[str, int]:
    """Feature size of each modality's encoder (its ``out_dim``, else a zero-batch probe)."""
    net = cast(MultimodalModel, model)
    dims: dict[str, int] = {}
    for name, enc in net.encoders.items():
        width = getattr(enc, "out_dim", None)
        if width is None:
            spec = info.modalities[name]
            shape = (2, int(spec.seq_len or 1), spec.dim) if spec.is_sequence else (2, spec.dim)
            was = enc.training
            enc.eval()
            with torch.no_grad():
                width = int(enc(torch.zeros(shape)).shape[-1])
            enc.train(was)
        dims[name] = int(width)
    return dims


class UnimodalHeads(nn.Module):
    """One linear head per modality on that modality's encoder features.

    Unlike the split concat layer (whose unimodal logits share the fused layer), these heads
    are separate classifiers, as G-Blend and InfoReg attach them.

    Args:
        dims: Modality -> feature size.
        num_outputs: Classes / outputs.
    """

    def __init__(self, dims: dict[str, int], num_outputs: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({n: nn.Linear(d, num_outputs) for n, d in dims.items()})

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality logits."""
        return {n: head(features[n]) for n, head in self.heads.items()}



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



def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity (shared helper)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


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
        check_choices(cls.name, cfg, {"param_filter": PARAM_FILTERS})
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
        elif self.cfg.param_filter == "conv":  # the reference's ``len(grad.size()) == 4``
            params = [p for p in params if p.dim() == 4]
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

