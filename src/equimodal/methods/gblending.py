"""Gradient-Blending (G-Blend; Wang, Tran & Feiszli, "What Makes Training Multi-modal
Classification Networks Hard?", CVPR 2020).

Every modality gets its own linear head on its encoder features and the fusion keeps its
fused head; the loss blends the ``M + 1`` supervised losses,
``L = sum_k w_k L_k`` (Eq. 4), with weights from the overfitting-to-generalisation ratio.
Between checkpoints ``N`` and ``N + n`` of a model trained on ``L_k`` alone:

* overfitting ``O_N = L^V_N - L^T_N`` (held-out minus training loss), ``dO_k = O_{N+n} -
  O_N``;
* generalisation ``dG_k = L^V_N - L^V_{N+n}``; ``OGR = |dO / dG|``;
* weights (Proposition 1 with ``sigma_k^2 ~ dO_k^2``): ``w_k ∝ dG_k / dO_k^2``, normalised to
  sum to 1 (the paper's ``Z`` makes them sum to 2; a global factor only rescales the loss).

``GB_Estimate`` trains one throw-away copy of the network per loss ``k`` for
``estimate_epochs`` epochs and measures ``L^T`` (training split, eval mode) and ``L^V``
before and after. ``mode="offline"`` (Algorithm 1) estimates once, from the initial
weights, before training; ``mode="online"`` (Algorithm 2) re-estimates from the current
weights at the start of every super-epoch.

Held-out estimate without touching test: ``L^V`` is measured on the validation split (the
engine's model-selection split, ``ctx.valid_split``); if a run has none, the last
``holdout_fraction`` of the training split is held out and the probes train on the rest. The
test split is never read. The probes are deep copies trained by the engine's
:meth:`~equimodal.engine.context.StepContext.train_module` (an optimiser from the engine's
own factory with the run's ``TrainConfig``, its clipping and generator); they never touch
the method's parameters, optimisers or checkpoints, and are discarded after measuring.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.context import StepContext
from equimodal.methods._shared import UnimodalHeads, check_choices, encoder_dims
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

log = logging.getLogger(__name__)


def ogr_blend_weights(train_before: Tensor, valid_before: Tensor, train_after: Tensor,
                      valid_after: Tensor, eps: float = 1e-8) -> Tensor:
    """G-Blend weights from losses measured at checkpoints ``N`` and ``N + n``.

    ``dG = L^V_N - L^V_{N+n}``, ``dO = (L^V_{N+n} - L^T_{N+n}) - (L^V_N - L^T_N)``,
    ``w_k = max(dG_k, 0) / (dO_k^2 + eps)`` normalised to sum 1 (uniform if no loss
    generalises). A loss whose held-out value got worse gets weight 0.

    Args:
        train_before: ``[K]`` training losses at ``N``.
        valid_before: ``[K]`` held-out losses at ``N``.
        train_after: ``[K]`` training losses at ``N + n``.
        valid_after: ``[K]`` held-out losses at ``N + n``.
        eps: Keeps the ratio finite when ``dO = 0``.

    Returns:
        ``[K]`` weights summing to 1.
    """
    gain = valid_before - valid_after
    over = (valid_after - train_after) - (valid_before - train_before)
    raw = gain.clamp_min(0.0) / (over.pow(2) + eps)
    total = raw.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0.0:
        return torch.full_like(raw, 1.0 / raw.numel())
    return raw / total


# ----- method ---------------------------------------------------------------------------------
@dataclass
class GBlendingConfig(MethodConfig):
    """Gradient-Blending hyper-parameters.

    Attributes:
        mode: ``offline`` (Algorithm 1: weights estimated once, from the initial weights) or
            ``online`` (Algorithm 2: re-estimated every super-epoch from the current weights).
        super_epoch: Online: epochs between estimates (``None``: ``max(1, epochs // 7)``,
            BalanceBenchmark's 10 of 70; the paper leaves it to the user).
        estimate_epochs: Epochs each probe copy trains between the two checkpoints ``N`` and
            ``N + n`` (``None``: ``max(1, epochs // 7)``).
        holdout_fraction: Fraction of the training split held out for ``L^V`` when the run
            has no validation split.
        eps: Added to ``dO^2`` in the weight formula.
        regression_loss: ``l1`` or ``mse`` for regression tasks.
    """

    mode: str = "offline"
    super_epoch: int | None = None
    estimate_epochs: int | None = None
    holdout_fraction: float = 0.2
    eps: float = 1e-8
    regression_loss: str = "l1"


@register_method("gblending")
class GradientBlending(Method):
    """Gradient-Blending: unimodal + fused losses blended by OGR-estimated weights (G-Blend).

    Wang, Tran & Feiszli, CVPR 2020. ``L = sum_k w_k L_k`` over the per-modality heads and
    the fused head (Eq. 4), ``w_k ∝ dG_k / dO_k^2`` from ``GB_Estimate`` (Proposition 1,
    Algorithms 1-2): ``dG = L^V_N - L^V_{N+n}``, ``dO = O_{N+n} - O_N``,
    ``O = L^V - L^T``.
    """

    Config = GBlendingConfig
    capabilities = Capabilities(min_modalities=2)
    paper = ("Wang, Tran & Feiszli, What Makes Training Multi-modal Classification Networks "
             "Hard?, CVPR 2020")
    family = "objective"

    weights: Tensor
    ogr: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        check_choices(cls.name, cfg, {"mode": ("offline", "online")})
        if not 0.0 < cfg.holdout_fraction < 1.0:
            raise ValueError("gblending: holdout_fraction must be in (0, 1)")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: GBlendingConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.heads = UnimodalHeads(encoder_dims(model, info), info.num_outputs)
        k = len(self.names) + 1
        self.register_buffer("weights", torch.full((k,), 1.0 / k))
        self.register_buffer("ogr", torch.zeros(k))
        self._epochs = 1

    @property
    def keys(self) -> list[str]:
        """Loss names: the modalities, then ``fused``."""
        return [*self.names, "fused"]

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused output; unimodal logits come from the separate per-modality heads."""
        out: ModelOutput = self.model(batch)
        out.unimodal_logits = self.heads(out.features)
        return out

    def head_losses(self, batch: Batch, out: ModelOutput) -> Tensor:
        """``[M + 1]`` losses: each unimodal head on rows with its modality, then fused."""
        terms = [self.masked_task_loss(out.unimodal_logits[n], batch.target, batch.present[n])
                 for n in self.names]
        terms.append(self.task_loss(out.logits, batch.target))
        return torch.stack(terms)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """``L = sum_k w_k L_k`` (Eq. 4)."""
        losses = self.head_losses(batch, out)
        terms = {"loss": (self.weights.to(losses.dtype) * losses).sum()}
        for i, key in enumerate(self.keys):
            terms[f"loss_{key}"] = losses[i].detach()
            terms[f"w_{key}"] = self.weights[i].detach()
        return terms

    # ----- schedule -----------------------------------------------------------------------
    def stages(self, train: Any) -> list[Any]:
        """One joint stage; remembers the run length for the derived defaults."""
        self._epochs = int(train.epochs)
        return super().stages(train)

    def _derived(self, value: int | None) -> int:
        """A configured epoch count, or ``max(1, epochs // 7)`` when unset."""
        return int(value) if value is not None else max(1, self._epochs // 7)

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Estimate the blend weights (offline: first epoch only; online: each super-epoch)."""
        e = ctx.stage_epoch
        every = 0 if self.cfg.mode == "offline" else self._derived(self.cfg.super_epoch)
        if e == 0 or (every > 0 and e % every == 0):
            self.estimate(ctx)

    # ----- GB_Estimate --------------------------------------------------------------------
    def holdout(self, ctx: StepContext) -> tuple[MultimodalSplit, MultimodalSplit]:
        """(probe training split, held-out split); never the test split."""
        if ctx.valid_split is not None and len(ctx.valid_split) > 0:
            return ctx.train_split, ctx.valid_split
        split = ctx.train_split
        idx = torch.arange(len(split), device=split.target.device)
        cut = max(1, int(round(len(split) * (1.0 - self.cfg.holdout_fraction))))
        return split.subset(idx[:cut]), split.subset(idx[cut:])

    def _key_loss(self, model: nn.Module, heads: UnimodalHeads, batch: Batch, k: int) -> Tensor:
        """Loss ``k`` (a unimodal head, or ``M`` for the fused head) of a (copied) network."""
        out: ModelOutput = model(batch)
        if k == len(self.names):
            return self.task_loss(out.logits, batch.target)
        name = self.names[k]
        logits = heads.heads[name](out.features[name])
        return self.masked_task_loss(logits, batch.target, batch.present[name])

    @torch.no_grad()
    def _split_losses(self, model: nn.Module, heads: UnimodalHeads, split: MultimodalSplit,
                      keys: list[int], batch_size: int) -> Tensor:
        """Mean losses ``keys`` over a split, in eval mode (``[len(keys)]``)."""
        was = model.training
        model.eval()
        heads.eval()
        sums = torch.zeros(len(keys), dtype=torch.float64)
        count = 0
        for batch in split.iter_batches(batch_size):
            for i, k in enumerate(keys):
                sums[i] += float(self._key_loss(model, heads, batch, k)) * batch.size
            count += batch.size
        model.train(was)
        heads.train(was)
        return (sums / max(count, 1)).float()

    def _probe(self, ctx: StepContext, k: int, train_split: MultimodalSplit,
               held: MultimodalSplit, epochs: int) -> tuple[float, float]:
        """Train a copy on loss ``k`` alone; return its (training, held-out) loss after.

        The copy trains through the engine's :meth:`StepContext.train_module` (its optimiser
        factory, clipping and generator), never through the method's own optimiser loop.
        """
        model, heads = copy.deepcopy(self.model), copy.deepcopy(self.heads)
        ctx.train_module(nn.ModuleList([model, heads]),
                         lambda batch: self._key_loss(model, heads, batch, k), train_split,
                         epochs)
        bs = ctx.train.batch_size
        after_t = self._split_losses(model, heads, train_split, [k], bs)
        after_v = self._split_losses(model, heads, held, [k], bs)
        return float(after_t[0]), float(after_v[0])

    def estimate(self, ctx: StepContext) -> Tensor:
        """Run ``GB_Estimate`` and store the new weights (also returned)."""
        train_split, held = self.holdout(ctx)
        keys = list(range(len(self.keys)))
        bs = ctx.train.batch_size
        before_t = self._split_losses(self.model, self.heads, train_split, keys, bs)
        before_v = self._split_losses(self.model, self.heads, held, keys, bs)
        epochs = self._derived(self.cfg.estimate_epochs)
        after = [self._probe(ctx, k, train_split, held, epochs) for k in keys]
        after_t = torch.tensor([a[0] for a in after])
        after_v = torch.tensor([a[1] for a in after])
        w = ogr_blend_weights(before_t, before_v, after_t, after_v, self.cfg.eps)
        gain = before_v - after_v
        over = (after_v - after_t) - (before_v - before_t)
        self.ogr.copy_((over / gain.abs().clamp_min(1e-12)).abs())
        self.weights.copy_(w)
        log.info("gblending weights %s", dict(zip(self.keys, w.tolist(), strict=True)))
        return w

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Log the current weights and OGRs."""
        row = {f"w_{k}": float(self.weights[i]) for i, k in enumerate(self.keys)}
        row.update({f"ogr_{k}": float(self.ogr[i]) for i, k in enumerate(self.keys)})
        return row
