"""Balanced multi-modal learning against greedy learning (Wu, Jastrzebski, Cho, Geras;
"Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural
Networks", ICML 2022).

Model (Sec. 3): one branch per modality (encoder + head) and a multimodal transfer module
(MMTM) between them: a shared squeeze ``z = relu(W_s [h_1; ...; h_M])`` and per-modality
excitations ``s_m = sigmoid(W_m z)`` that rescale each branch, ``h_m <- h_m * s_m``. The
prediction is the mean of the branches' logits; training minimises the sum of the branches'
cross-entropies (the reference code's ``blend_loss``; ``loss="fused"``: the mean's). ``W_s``
and ``W_m`` are the cross-modal ("bypass") parameters; encoder ``m`` + head ``m`` are the
unimodal ("main") ones.

* Conditional utilisation rate (Eq. 2): ``u(m | rest) = (A(all) - A(rest)) / A(all)``, where
  ``A(rest)`` is the accuracy of the other branches with their excitation replaced by its
  running average, i.e. with no information from ``m`` (:meth:`conditional_utilization`;
  for two modalities exactly the paper's ``u(m1|m0)``).
* Conditional learning speed (Eq. 3-4): after every regular step the ratios
  ``||grad||^2 / ||theta||^2`` of each modality's main and bypass parameters are accumulated
  (the shared squeeze counts for every modality); ``BDR_m = log10(sum bypass / sum main)``.
* Balanced training (Alg. 1): from ``start_epoch``, when ``max_m BDR_m - min_m BDR_m``
  exceeds ``threshold`` the next ``window`` steps are re-balancing steps for the modality with
  the largest BDR (it leans on the others, so it learns slower on its own): its excitation is
  replaced by the running average, cutting its cross-modal input so its own branch must learn
  (two modalities: the sign of ``BDR_0 - BDR_1`` as in the reference code). ``mode="random"``
  is the paper's random re-balancing ablation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.context import StepContext
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import build_encoders
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

MODES = ("guided", "random", "off")
LOSSES = ("branches", "fused")


@dataclass
class GreedyConfig(MethodConfig):
    """Hyper-parameters of balanced multi-modal learning (defaults of the reference configs).

    Attributes:
        threshold: Imbalance ``epsilon`` of the conditional learning speeds (BDR spread).
        window: Re-balancing steps ``Q`` once triggered.
        start_epoch: Epoch from which re-balancing may start (speeds accumulate before).
        squeeze_ratio: MMTM squeeze size ``2 * sum(H_m) / ratio``.
        mode: ``guided`` (the paper's algorithm), ``random`` (random re-balancing steps) or
            ``off`` (plain MMTM training).
        log_utilization: Log the conditional utilisation rates on validation every epoch.
        loss: ``branches`` (default): the sum of every branch's cross-entropy, as the
            reference code trains (``blend_loss`` in ``train.py``: one loss per branch
            output, the prediction is their mean); ``fused``: the cross-entropy of the mean
            logits (this module's reading before). Measured on CG-MNIST (HSV palette, 6
            epochs, 8k images, seed 0, jitter 0.030): with ``fused`` the gray branch collapsed
            to one class (read-out 10.1 %, the color branch's logits carried the mean to a
            training loss of 0.08) and the fused test accuracy was 21.2 %; see
            docs/reproductions/cgmnist-hsv.md for ``branches``.
    """

    threshold: float = 0.01
    window: int = 5
    start_epoch: int = 2
    squeeze_ratio: int = 4
    mode: str = "guided"
    log_utilization: bool = False
    loss: str = "branches"


class MMTM(nn.Module):
    """Multimodal transfer module for M vector features, with running-average excitations.

    Args:
        dims: Feature size per modality.
        ratio: Squeeze reduction ratio.
    """

    avg_scale: Tensor
    avg_steps: Tensor

    def __init__(self, dims: list[int], ratio: int) -> None:
        super().__init__()
        width = max(1, int(2 * sum(dims) / ratio))
        self.squeeze = nn.Linear(sum(dims), width)
        self.excite = nn.ModuleList([nn.Linear(width, d) for d in dims])
        self.register_buffer("avg_scale", torch.zeros(len(dims), max(dims)))
        self.register_buffer("avg_steps", torch.zeros((), dtype=torch.long))

    def forward(self, feats: list[Tensor], caring: int | None = None) -> list[Tensor]:
        """Rescaled features; ``caring`` replaces that branch's excitation by its average."""
        z = torch.relu(self.squeeze(torch.cat(feats, dim=1)))
        scales = [torch.sigmoid(e(z)) for e in self.excite]
        if self.training:
            with torch.no_grad():
                t = float(self.avg_steps)
                for i, s in enumerate(scales):
                    d = s.shape[1]
                    old = self.avg_scale[i, :d]
                    self.avg_scale[i, :d] = (s.mean(0).float() + old * t) / (t + 1)
                self.avg_steps += 1
        if caring is not None:
            d = scales[caring].shape[1]
            avg = self.avg_scale[caring, :d].to(scales[caring].dtype)
            scales[caring] = avg.expand_as(scales[caring])
        return [f * s for f, s in zip(feats, scales, strict=True)]


class GreedyModel(nn.Module):
    """Branches (encoder + head per modality) joined by one MMTM.

    Args:
        encoders: Modality -> encoder.
        heads: Modality -> linear head.
        mmtm: The cross-modal transfer module.
    """

    def __init__(self, encoders: nn.ModuleDict, heads: nn.ModuleDict, mmtm: MMTM) -> None:
        super().__init__()
        self.encoders = encoders
        self.heads = heads
        self.mmtm = mmtm

    def forward(self, batch: Batch, caring: int | None = None,
                cut: list[int] | None = None) -> ModelOutput:
        """Branch logits and their presence-weighted mean; ``cut`` branches use the average
        excitation and leave the mean (utilisation rates)."""
        names = list(self.encoders)
        feats = []
        for n in names:
            h = self.encoders[n](batch.inputs[n], batch.lengths.get(n))
            feats.append(h * batch.present[n].to(h.dtype).unsqueeze(1))
        if cut:
            outs = self.mmtm(feats, None)
            for k in cut:
                outs[k] = self.mmtm(feats, k)[k]
        else:
            outs = self.mmtm(feats, caring)
        uni = {n: self.heads[n](o) for n, o in zip(names, outs, strict=True)}
        w = torch.stack([batch.present[n].to(outs[0].dtype) for n in names], 1)
        stacked = torch.stack([uni[n] for n in names], 1)
        logits = (stacked * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        return ModelOutput(logits, dict(zip(names, feats, strict=True)), uni)


@register_method("greedy")
class Greedy(Method):
    """Greedy learner: MMTM branches, re-balancing steps when conditional learning speeds split.

    Wu et al., "Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal
    Deep Neural Networks", ICML 2022. Implements the conditional utilisation rate (Eq. 2), the
    conditional learning speed ``BDR_m = log10(sum ||g||^2/||theta||^2 bypass / main)``
    (Eq. 3-4) and the balanced training algorithm (Alg. 1); see the module docstring.
    """

    Config = GreedyConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Wu et al., Characterizing and Overcoming the Greedy Nature of Learning in "
             "Multi-modal Deep Neural Networks, ICML 2022")
    # The intervention is on the forward pass (a re-balancing step replaces a branch's MMTM
    # excitation by its running average), as BalanceBenchmark classifies it.
    family = "feed-forward"

    speed: Tensor
    curation: Tensor
    caring: Tensor
    curation_step: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        check_choices("greedy", cfg, {"mode": MODES, "loss": LOSSES})
        if cfg.window < 1 or cfg.squeeze_ratio < 1:
            raise ValueError("window and squeeze_ratio must be >= 1")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders, a linear head per branch and an MMTM between the branches."""
        encoders = build_encoders(info, model_cfg)
        heads = nn.ModuleDict({n: nn.Linear(model_cfg.hidden, info.num_outputs)
                               for n in info.modality_names})
        mmtm = MMTM([model_cfg.hidden] * len(info.modalities), cfg.squeeze_ratio)
        return GreedyModel(encoders, heads, mmtm)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: GreedyConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        # Accumulated ||g||^2/||theta||^2 per modality: column 0 main, column 1 bypass.
        self.register_buffer("speed", torch.zeros(len(self.names), 2, dtype=torch.float64))
        self.register_buffer("curation", torch.tensor(False))
        self.register_buffer("caring", torch.tensor(0))
        self.register_buffer("curation_step", torch.tensor(0))

    @property
    def net(self) -> GreedyModel:
        """The branches and the MMTM."""
        return cast(GreedyModel, self.model)

    def main_modules(self, index: int) -> list[nn.Module]:
        """Unimodal ("main") modules of modality ``index``: its encoder and head."""
        name = self.names[index]
        return [self.net.encoders[name], self.net.heads[name]]

    def bypass_modules(self, index: int) -> list[nn.Module]:
        """Cross-modal ("bypass") modules of ``index``: its excitation and the shared squeeze."""
        return [self.net.mmtm.excite[index], self.net.mmtm.squeeze]

    @staticmethod
    def _ratio(modules: list[nn.Module]) -> float:
        gn = wn = 0.0
        for mod in modules:
            for p in mod.parameters():
                if p.grad is not None:
                    gn += float(p.grad.float().pow(2).sum())
                    wn += float(p.detach().float().pow(2).sum())
        return gn / wn if wn > 0 else 0.0

    @torch.no_grad()
    def accumulate_speed(self) -> None:
        """Add this step's ``||g||^2/||theta||^2`` of every main and bypass group."""
        for i in range(len(self.names)):
            self.speed[i, 0] += self._ratio(self.main_modules(i))
            self.speed[i, 1] += self._ratio(self.bypass_modules(i))

    def bdr(self) -> Tensor:
        """``BDR_m = log10(sum bypass / sum main)`` of the accumulated speeds."""
        eps = 1e-30
        return torch.log10(self.speed[:, 1].clamp_min(eps) / self.speed[:, 0].clamp_min(eps))

    @torch.no_grad()
    def update_controller(self, ctx: StepContext) -> None:
        """Alg. 1 after backward: accumulate speeds on regular steps; enter / leave
        re-balancing."""
        mode = self.cfg.mode
        unlocked = ctx.epoch >= self.cfg.start_epoch
        if mode == "off":
            return
        if mode == "random":
            # One of: regular step, or re-balancing for a random modality.
            pick = int(torch.randint(len(self.names) + 1, ())) if unlocked else 0
            self.curation.fill_(pick > 0)
            self.caring.fill_(max(pick - 1, 0))
            return
        if not unlocked or not bool(self.curation):
            self.accumulate_speed()
            b = self.bdr()
            if unlocked and float(b.max() - b.min()) > self.cfg.threshold:
                self.curation.fill_(True)
                self.curation_step.zero_()
                self.caring.fill_(int(b.argmax()))
            else:
                self.curation.fill_(False)
            return
        self.curation_step += 1
        if int(self.curation_step) >= self.cfg.window:
            self.curation.fill_(False)

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """A regular or re-balancing step (the state set after the previous backward)."""
        rebalancing = bool(self.curation)
        caring = int(self.caring) if rebalancing else None
        with ctx.autocast():
            out = self.net(batch, caring)
            if self.cfg.loss == "branches":  # the reference's blend_loss
                loss = self.unimodal_loss(batch, out)
            else:
                loss = self.task_loss(out.logits, batch.target)
        ctx.backward(loss)
        if ctx.will_step:
            self.update_controller(ctx)
        ctx.step()
        return {"loss": loss.detach(), "rebalancing": torch.tensor(float(rebalancing))}

    @torch.no_grad()
    def conditional_utilization(self, split: MultimodalSplit, batch_size: int = 256
                                ) -> dict[str, float]:
        """``u(m | rest) = (A(all) - A(rest)) / A(all)`` on a split (see the module doc)."""
        was_training = self.training
        self.eval()
        n = len(split)
        idx = torch.arange(n, device=split.target.device)
        correct = torch.zeros(len(self.names) + 1)
        for start in range(0, n, batch_size):
            batch = split.batch(idx[start:start + batch_size])
            full = self.net(batch)
            correct[0] += float((full.logits.argmax(1) == batch.target).sum())
            for i in range(len(self.names)):
                rest = [k for k in range(len(self.names)) if k != i]
                out = self.net(batch, cut=rest)
                logits = torch.stack([out.unimodal_logits[self.names[k]] for k in rest]).mean(0)
                correct[i + 1] += float((logits.argmax(1) == batch.target).sum())
        self.train(was_training)
        acc = correct / max(n, 1)
        full_acc = float(acc[0])
        return {n: (full_acc - float(acc[i + 1])) / full_acc if full_acc > 0 else math.nan
                for i, n in enumerate(self.names)}

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Speeds (BDR) and, optionally, validation utilisation rates."""
        logs = {f"bdr/{n}": float(v) for n, v in zip(self.names, self.bdr(), strict=True)}
        if self.cfg.log_utilization and ctx.valid_split is not None:
            util = self.conditional_utilization(ctx.valid_split)
            logs.update({f"utilization/{n}": v for n, v in util.items()})
        return logs
