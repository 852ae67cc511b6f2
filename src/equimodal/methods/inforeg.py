"""InfoReg: Information Acquisition Regulation (Huang, Wei, Yang & Hu, "Adaptive Unimodal
Regulation for Balanced Multimodal Information Acquisition", CVPR 2025).

Early training (the *prime learning window*) acquires most of the dataset information and is
dominated by the information-sufficient modality. InfoReg slows that modality down during
the window with a proximal term towards its parameters at the start of the epoch.

* Model: encoders, the fusion head and a separate linear head per modality; the task loss
  is ``CE(fused) + sum_m CE(unimodal_m)`` (official code).
* Information acquisition is tracked by the trace of the Fisher information of each
  encoder, ``tr F^m = sum_layers mean(sum_steps (grad W)^2)`` over its linear / conv
  weights in an epoch. Its speed over a ``window`` of epochs,
  ``k^m = (mean(tr_{last w}) - mean(tr_{previous w})) / mean(tr_{last w})`` (zero-padded
  history, ``k = 1`` at the start), marks the window: regulation is on while ``k > 0.04``.
* Each step, the modality with the largest summed true-class probability
  ``s^m = sum_i softmax(h^m(x_i))_{y_i}`` is dominant. If it is in its window it gets the
  proximal term ``(beta / 2) ||theta^d - theta^d_prev||^2`` with
  ``beta = beta_0 exp(tanh(s^d - mean_{m != d} s^m))`` (so its gradient gains
  ``beta (theta^d - theta^d_prev)``, Eq. of the official code), ``theta_prev`` being the
  encoder at the start of the epoch (kept in buffers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from equimodal.engine.context import StepContext
from equimodal.methods._shared import UnimodalHeads, encoder_dims
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

_FISHER_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def window_speed(history: Tensor) -> float:
    """Relative growth ``k`` of the Fisher trace over a window (1.0 with no history yet).

    ``history`` holds the last ``w + 1`` epoch traces, oldest first (zeros before training):
    ``k = (mean(h[1:]) - mean(h[:-1])) / mean(h[1:]) = (h[-1] - h[0]) / sum(h[1:])``.
    """
    recent = float(history[1:].sum())
    if recent <= 0.0:
        return 1.0
    return (float(history[-1]) - float(history[0])) / recent


def regulation_strength(scores: Tensor, beta: float) -> tuple[int, float]:
    """Dominant modality index and ``beta_0 exp(tanh(s_d - mean of the others))``."""
    d = int(scores.argmax())
    others = torch.cat([scores[:d], scores[d + 1 :]])
    gap = float(scores[d] - others.mean()) if others.numel() else 0.0
    return d, beta * math.exp(math.tanh(gap))


@dataclass
class InfoRegConfig(MethodConfig):
    """InfoReg hyper-parameters (official code defaults).

    Attributes:
        beta: Base proximal strength ``beta_0`` (code: 0.95).
        threshold: The prime learning window lasts while ``k > threshold`` (code: 0.04).
        window: Epochs per moving average of the Fisher trace (code: 10).
    """

    beta: float = 0.95
    threshold: float = 0.04
    window: int = 10


@register_method("inforeg")
class InfoReg(Method):
    """InfoReg: slow the dominant modality during its prime learning window (Fisher trace).

    Huang, Wei, Yang & Hu, CVPR 2025. ``L = CE(fused) + sum_m CE_m + (beta / 2)
    ||theta^d - theta^d_prev||^2`` for the dominant modality ``d = argmax_m sum_i p^m_{y_i}``
    while its Fisher-trace growth ``k^d > 0.04``, ``beta = 0.95 exp(tanh(s^d - s^other))``.
    """

    Config = InfoRegConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Huang et al., Adaptive Unimodal Regulation for Balanced Multimodal Information "
             "Acquisition, CVPR 2025")
    family = "optimisation"

    trace_history: Tensor
    regulated: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.beta < 0 or cfg.window < 1:
            raise ValueError("inforeg: beta must be >= 0 and window >= 1")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: InfoRegConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.heads = UnimodalHeads(encoder_dims(model, info), info.num_outputs)
        m = len(self.names)
        for i, n in enumerate(self.names):
            self.register_buffer(f"prev_{i}", self.encoder_vector(n).detach().clone())
        self.register_buffer("trace_history", torch.zeros(m, cfg.window + 1))
        # Steps of the current epoch in which each modality was regulated (logged).
        self.register_buffer("regulated", torch.zeros(m))
        self._fisher: dict[str, list[Tensor]] = {}
        self._steps = 0

    # ----- structure ----------------------------------------------------------------------
    def encoder(self, name: str) -> nn.Module:
        """Encoder module of a modality."""
        return cast(MultimodalModel, self.model).encoders[name]

    def encoder_vector(self, name: str) -> Tensor:
        """Flattened (differentiable) encoder parameters."""
        return torch.cat([p.reshape(-1) for p in self.encoder(name).parameters()])

    def fisher_weights(self, name: str) -> list[Tensor]:
        """Weights of the encoder's linear / conv layers (the code's FIM layers)."""
        return [mod.weight for mod in self.encoder(name).modules()
                if isinstance(mod, _FISHER_MODULES) and mod.weight.requires_grad]

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused output; unimodal logits from the separate per-modality heads."""
        out: ModelOutput = self.model(batch)
        out.unimodal_logits = self.heads(out.features)
        return out

    # ----- regulation ---------------------------------------------------------------------
    def speeds(self) -> list[float]:
        """Current ``k^m`` per modality."""
        return [window_speed(self.trace_history[i]) for i in range(len(self.names))]

    def scores(self, batch: Batch, out: ModelOutput) -> Tensor:
        """``s^m = sum_i softmax(h^m)_{y_i}`` over rows with the modality present."""
        vals = []
        for n in self.names:
            p = out.unimodal_logits[n].detach().float().softmax(-1)
            true = p.gather(1, batch.target[:, None]).squeeze(1)
            vals.append((true * batch.present[n].to(true.dtype)).sum())
        return torch.stack(vals)

    def proximal(self, batch: Batch, out: ModelOutput) -> tuple[Tensor, int, float]:
        """``(beta / 2) ||theta^d - theta^d_prev||^2`` for the dominant modality ``d`` if it is
        in its prime learning window (else zero); returns ``(term, d, beta)``."""
        d, beta = regulation_strength(self.scores(batch, out), self.cfg.beta)
        if self.speeds()[d] <= self.cfg.threshold:
            return out.logits.new_zeros(()), d, beta
        prev = cast(Tensor, getattr(self, f"prev_{d}"))
        return 0.5 * beta * (self.encoder_vector(self.names[d]) - prev).pow(2).sum(), d, beta

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """``CE(fused) + sum_m CE_m`` + the dominant modality's proximal term in its window."""
        task = self.task_loss(out.logits, batch.target)
        uni = sum((self.masked_task_loss(out.unimodal_logits[n], batch.target, batch.present[n])
                   for n in self.names), start=task.new_zeros(()))
        prox, d, _ = self.proximal(batch, out)
        if float(prox.detach()) > 0:
            self.regulated[d] += 1
        return {"loss": task + uni + prox, "task": task.detach(), "unimodal": uni.detach(),
                "prox": prox.detach()}

    def on_after_backward(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> None:
        """Accumulate squared gradients (empirical Fisher diagonal) of each encoder."""
        for n in self.names:
            acc = self._fisher.setdefault(n, [])
            for i, w in enumerate(self.fisher_weights(n)):
                if w.grad is None:
                    continue
                g2 = w.grad.detach().float().pow(2)
                if i < len(acc):
                    acc[i] += g2
                else:
                    acc.append(g2.clone())
        self._steps += 1

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Snapshot ``theta_prev`` and reset the Fisher accumulators."""
        with torch.no_grad():
            for i, n in enumerate(self.names):
                getattr(self, f"prev_{i}").copy_(self.encoder_vector(n))
        self._fisher = {}
        self._steps = 0
        self.regulated.zero_()

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Push this epoch's Fisher traces into the history; log traces and speeds."""
        traces = torch.zeros(len(self.names))
        for i, n in enumerate(self.names):
            traces[i] = sum(float(a.mean()) for a in self._fisher.get(n, []))
        hist = torch.cat([self.trace_history[:, 1:], traces.to(self.trace_history)[:, None]], 1)
        self.trace_history.copy_(hist)
        row: dict[str, float] = {}
        for i, (n, k) in enumerate(zip(self.names, self.speeds(), strict=True)):
            row[f"fisher_trace_{n}"] = float(traces[i])
            row[f"speed_{n}"] = k
            row[f"regulated_steps_{n}"] = float(self.regulated[i])
        return row

    def regulation_gradient(self, name: str, beta: float) -> Tensor:
        """``beta (theta - theta_prev)``: the gradient the proximal term adds (for tests)."""
        prev = cast(Tensor, getattr(self, f"prev_{self.names.index(name)}"))
        return beta * (parameters_to_vector(self.encoder(name).parameters()).detach() - prev)
