"""Optimiser and scheduler construction (only the engine builds these)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from equimodal.config import TrainConfig


def build_optimizer(
    params: list[nn.Parameter], train: TrainConfig, options: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    """Build the configured optimiser; ``options`` may set ``lr_scale``, ``lr``,
    ``weight_decay`` or ``optimizer`` for this group."""
    opts = options or {}
    lr = float(opts.get("lr", train.lr * float(opts.get("lr_scale", 1.0))))
    wd = float(opts.get("weight_decay", train.weight_decay))
    kind = str(opts.get("optimizer", train.optimizer)).lower()
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}; use adam, adamw or sgd")


def build_scheduler(
    opt: torch.optim.Optimizer, train: TrainConfig, epochs: int, mode: str
) -> Any:
    """Per-epoch scheduler: ``none``, ``step``, ``cosine`` or ``plateau`` (on the selection
    metric, ``mode`` = ``max`` or ``min``)."""
    kind = train.scheduler.lower()
    if kind == "none":
        return None
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, train.step_size, train.gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max" if mode == "max" else "min", factor=train.gamma
        )
    raise ValueError(f"unknown scheduler {kind!r}; use none, step, cosine or plateau")
