"""LFM: dynamically integrating contrastive and supervised learning against modality
imbalance (Yang, Wan, Jiang & Xu, "Facilitating Multimodal Classification via Dynamically
Learning Modality Gap", NeurIPS 2024).

Modalities fit the labels at different speeds; an unsupervised cross-modal contrastive term
intervenes in that label fitting. The objective is a convex combination

``L = alpha_cls * L_cls + alpha_align * L_align``,  ``alpha_cls + alpha_align = 1``,

* ``L_cls = CE(fused) + sum_m CE(unimodal_m)`` (the authors' code adds the unimodal terms);
* ``L_align`` = mean over modality pairs of the symmetric InfoNCE between L2-normalised
  encoder features, temperature 0.07 (positives: the same sample's other modality).

The weights change during training:

* ``strategy="learned"`` (learning-based integration, the paper's best): once per epoch,
  before training it, ``alpha_align`` takes one hyper-gradient step of the bi-level problem
  ``min_alpha L_val(theta'(alpha))``, ``theta' = theta - eta grad_theta L_train(alpha)``.
  Unrolling one step gives ``dL_val/d alpha_align = -eta <grad L_val, grad L_align -
  grad L_cls>``; with ``eta`` absorbed into the step size ``alpha_lr`` the update is
  ``alpha_align += alpha_lr * <g_val, g_align - g_cls>``, clipped to ``alpha_bounds``.
  ``g_val`` is the gradient of ``L_cls`` on a fixed held-out mini-batch of the validation
  split (the authors hold out 16 training samples and use half), ``g_cls`` and ``g_align``
  those of the two terms on a training mini-batch. ``alpha_lr`` halves every 20 epochs.
* ``strategy="heuristic"``: the authors' polynomial fit of the learned trajectory,
  ``alpha_cls(t) = sum_i c_i t^i`` with ``t`` the epoch rescaled to a
  ``schedule_span``-epoch run (0.20 at the start, 0.54 after 100 epochs).

Both start contrastive-heavy (``alpha_cls = 0.05`` / ``0.20``) and hand weight to the
supervised term as training proceeds.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.engine.context import StepContext
from equimodal.losses.nce import info_nce
from equimodal.methods._shared import check_choices, encoder_dims
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

log = logging.getLogger(__name__)

# The authors' fit of the learned alpha_cls over a 100-epoch run (getAlpha_Learnable_Fitted).
HEURISTIC_COEFS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06,
                   2.23835486e-08, -5.39717505e-11)


def heuristic_alpha_cls(epoch: float) -> float:
    """Supervised weight of the heuristic schedule at (rescaled) ``epoch``, in [0.05, 0.95]."""
    value = sum(c * epoch**i for i, c in enumerate(HEURISTIC_COEFS))
    return min(0.95, max(0.05, value))


def alpha_step(alpha_align: float, g_val: list[Tensor], g_cls: list[Tensor],
               g_align: list[Tensor], lr: float, bounds: tuple[float, float]) -> float:
    """One hyper-gradient step on ``alpha_align`` (``alpha_cls = 1 - alpha_align``).

    ``alpha_align + lr * <g_val, g_align - g_cls>`` clipped to ``bounds``: the weight of the
    term whose gradient agrees with the held-out gradient grows.
    """
    inner = sum(float((v * (a - c)).sum()) for v, a, c in zip(g_val, g_align, g_cls,
                                                               strict=True))
    return min(bounds[1], max(bounds[0], alpha_align + lr * inner))


@dataclass
class LFMConfig(MethodConfig):
    """LFM hyper-parameters (the authors' code defaults).

    Attributes:
        strategy: ``learned`` (bi-level hyper-gradient on the weights) or ``heuristic``
            (the authors' fitted schedule).
        alpha_align_init: Initial contrastive weight (code: ``cls_k = [0.05, 0.95]``).
        alpha_bounds: Clip range of ``alpha_align`` (code: ``[0.05, 0.95]``).
        alpha_lr: Step size of the weight update (code: ``lr_alpha = 1e-4``).
        alpha_lr_halve_every: Halve ``alpha_lr`` every this many epochs (code: 20).
        val_batch_size: Held-out samples for ``g_val`` (code: 16 held out, half used).
        temperature: InfoNCE temperature (code: 0.07).
        schedule_span: Length in epochs of the run the heuristic curve was fitted on (100).
        unimodal_ce: Add the unimodal cross-entropies to ``L_cls`` (code: yes).
    """

    strategy: str = "learned"
    alpha_align_init: float = 0.95
    alpha_bounds: tuple[float, float] = (0.05, 0.95)
    alpha_lr: float = 1e-4
    alpha_lr_halve_every: int = 20
    val_batch_size: int = 8
    temperature: float = 0.07
    schedule_span: int = 100
    unimodal_ce: bool = True


@register_method("lfm")
class LFM(Method):
    """LFM: supervised + cross-modal contrastive loss with dynamically learned weights.

    Yang, Wan, Jiang & Xu, NeurIPS 2024. ``L = alpha_cls (CE(fused) + sum_m CE_m) +
    alpha_align mean_pairs InfoNCE``, ``alpha_cls = 1 - alpha_align``; ``alpha_align`` takes
    one bi-level hyper-gradient step per epoch, ``alpha_align += alpha_lr <g_val, g_align -
    g_cls>`` (learned) or follows the authors' fitted schedule (heuristic).
    """

    Config = LFMConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Yang et al., Facilitating Multimodal Classification via Dynamically Learning "
             "Modality Gap, NeurIPS 2024")
    family = "objective"

    alpha_align: Tensor
    alpha_lr_now: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        lo, hi = cfg.alpha_bounds
        check_choices(cls.name, cfg, {"strategy": ("learned", "heuristic")})
        if not 0.0 <= lo <= hi <= 1.0 or cfg.temperature <= 0:
            raise ValueError("lfm: need 0 <= alpha_bounds[0] <= alpha_bounds[1] <= 1, "
                             "temperature > 0")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic model; unimodal heads only where the fusion cannot be split."""
        return build_multimodal_model(info, replace(model_cfg, unimodal_heads=True))

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: LFMConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.pairs = list(itertools.combinations(self.names, 2))
        dims = encoder_dims(model, info)
        width = min(dims.values())
        # Features of unequal width are projected to a common size for the InfoNCE.
        self.projections = nn.ModuleDict(
            {n: nn.Linear(d, width, bias=False) for n, d in dims.items() if d != width})
        self.register_buffer("alpha_align", torch.tensor(float(cfg.alpha_align_init)))
        self.register_buffer("alpha_lr_now", torch.tensor(float(cfg.alpha_lr)))
        self._epochs = 1

    # ----- losses -------------------------------------------------------------------------
    def cls_loss(self, batch: Batch, out: ModelOutput) -> Tensor:
        """``CE(fused) + sum_m CE(unimodal_m)`` (rows with the modality present)."""
        loss = self.task_loss(out.logits, batch.target)
        if self.cfg.unimodal_ce:
            for n in self.names:
                loss = loss + self.masked_task_loss(out.unimodal_logits[n], batch.target,
                                          batch.present[n])
        return loss

    def align_loss(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Mean over modality pairs of the symmetric InfoNCE of the encoder features."""
        z = {n: self.projections[n](f) if n in self.projections else f
             for n, f in out.features.items()}
        terms = []
        for a, b in self.pairs:
            mask = batch.present[a] & batch.present[b]
            if int(mask.sum()) < 2:  # no negative to contrast with
                continue
            keep = None if bool(mask.all()) else mask
            t = self.cfg.temperature
            terms.append(0.5 * (info_nce(z[a], z[b], t, keep) + info_nce(z[b], z[a], t, keep)))
        return torch.stack(terms).mean() if terms else out.logits.new_zeros(())

    def weights(self) -> tuple[float, float]:
        """Current ``(alpha_cls, alpha_align)``."""
        a = float(self.alpha_align)
        return 1.0 - a, a

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """``alpha_cls L_cls + alpha_align L_align``."""
        cls, align = self.cls_loss(batch, out), self.align_loss(batch, out)
        w_cls, w_align = self.weights()
        return {"loss": w_cls * cls + w_align * align, "cls": cls.detach(),
                "align": align.detach()}

    # ----- dynamic weights ----------------------------------------------------------------
    def stages(self, train: Any) -> list[Any]:
        """One joint stage; remembers the run length for the heuristic schedule."""
        self._epochs = int(train.epochs)
        return super().stages(train)

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Set this epoch's weights (schedule or one hyper-gradient step)."""
        e = ctx.stage_epoch
        if self.cfg.strategy == "heuristic":
            t = e * self.cfg.schedule_span / max(1, self._epochs)
            self.alpha_align.fill_(1.0 - heuristic_alpha_cls(t))
            return
        every = self.cfg.alpha_lr_halve_every
        if e > 0 and every > 0 and e % every == 0:
            self.alpha_lr_now.mul_(0.5)
        if ctx.valid_split is None or len(ctx.valid_split) == 0:
            return
        self.alpha_align.fill_(self.hyper_step(ctx))

    def hyper_step(self, ctx: StepContext) -> float:
        """The new ``alpha_align`` after one bi-level hyper-gradient step."""
        params = [p for p in self.parameters() if p.requires_grad]
        valid = ctx.valid_split
        assert valid is not None
        n_val = min(self.cfg.val_batch_size, len(valid))
        val_batch = valid.batch(torch.arange(n_val, device=valid.target.device))
        train_batch = ctx.sample_batch()

        def grads(loss: Tensor) -> list[Tensor]:
            gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs,
                                                                           strict=True)]

        out_v = self(val_batch)
        g_val = grads(self.cls_loss(val_batch, out_v))
        out_t = self(train_batch)
        g_cls = grads(self.cls_loss(train_batch, out_t))
        g_align = grads(self.align_loss(train_batch, out_t))
        return alpha_step(float(self.alpha_align), g_val, g_cls, g_align,
                          float(self.alpha_lr_now), tuple(self.cfg.alpha_bounds))

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Log the weights."""
        w_cls, w_align = self.weights()
        return {"alpha_cls": w_cls, "alpha_align": w_align}
