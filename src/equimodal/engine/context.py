"""What a method sees of the engine during a step: backward, step, autocast, state.

Methods use the documented services (:meth:`StepContext.backward`, :meth:`~StepContext.step`,
:meth:`~StepContext.params`, :attr:`~StepContext.is_last_epoch`,
:attr:`~StepContext.batch_index`, :attr:`~StepContext.loss_scale`,
:meth:`~StepContext.train_module`, ...), not the engine's bookkeeping attributes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from equimodal.config import TrainConfig
from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.optim import build_optimizer
from equimodal.types import Batch

if TYPE_CHECKING:
    from equimodal.methods.base import Stage


class StepContext:
    """The engine's handle given to methods.

    Methods call :meth:`backward` and :meth:`step` instead of ``loss.backward()`` and
    ``optimizer.step()``, so mixed precision, gradient accumulation and clipping are applied
    the same way for every method.

    Attributes:
        train: Engine settings.
        device: Training device.
        optimizers: Group name -> optimiser (active groups of the current stage).
        group_params: Group name -> parameters.
        stage: Current :class:`~equimodal.methods.base.Stage`.
        stage_index: Position of the stage in the schedule.
        epoch: Global epoch counter (0-based).
        stage_epoch: Epoch within the stage (0-based).
        global_step: Optimiser steps taken so far (micro-batches).
        train_split: The training split (for methods that need extra batches).
        valid_split: The validation split when the trainer sets it (``None`` otherwise), for
            methods whose stage-level decisions use validation scores (e.g. UDI's anchor).
        scaler: ``torch.amp.GradScaler`` when fp16 AMP is on.
        grad_hook: Called with a group's parameters right before its optimiser step (after
            accumulation, before unscaling and clipping); distributed training all-reduces
            gradients here. ``None`` outside distributed runs.
    """

    def __init__(
        self,
        train: TrainConfig,
        device: torch.device,
        train_split: MultimodalSplit,
        generator: torch.Generator,
    ) -> None:
        self.train = train
        self.device = device
        self.train_split = train_split
        self.valid_split: MultimodalSplit | None = None
        self.generator = generator
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.group_params: dict[str, list[nn.Parameter]] = {}
        self.stage: Stage | Any = None
        self.stage_index = 0
        self.epoch = 0
        self.stage_epoch = 0
        self.global_step = 0
        self.micro_step = 0
        self.force_step = False
        self.steps_taken = 0
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.grad_hook: Callable[[list[nn.Parameter]], None] | None = None
        if train.amp and device.type == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
            if not bf16:
                self.scaler = torch.amp.GradScaler("cuda")

    # ----- schedule -----------------------------------------------------------------------
    @property
    def stage_epochs(self) -> int:
        """Epochs of the current stage (its ``epochs``, else ``train.epochs``)."""
        epochs = getattr(self.stage, "epochs", None)
        return int(epochs) if epochs is not None else int(self.train.epochs)

    @property
    def is_last_epoch(self) -> bool:
        """Whether the current epoch is the stage's last scheduled one (the engine's rule:
        the stage ends after it; early stopping may end a stage sooner)."""
        return self.stage_epoch == self.stage_epochs - 1

    @property
    def batch_index(self) -> int:
        """Index of the current mini-batch within the epoch (0-based)."""
        return self.micro_step

    def params(self, group: str) -> list[nn.Parameter]:
        """Parameters of an active group of the current stage (as the engine optimises them).

        Raises:
            KeyError: ``group`` is not active in the current stage.
        """
        if group not in self.group_params:
            raise KeyError(f"no active parameter group {group!r} in stage "
                           f"{getattr(self.stage, 'name', '?')} "
                           f"(active: {sorted(self.group_params)})")
        return self.group_params[group]

    # ----- precision ----------------------------------------------------------------------
    @property
    def loss_scale(self) -> float:
        """The factor gradients currently carry from fp16 AMP loss scaling (1.0 without):
        divide ``.grad`` by it to compare true gradients (the engine unscales before its
        optimiser step)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for the forward pass (no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _scale(self, loss: Tensor) -> Tensor:
        loss = loss / self.train.accum_steps
        return self.scaler.scale(loss) if self.scaler is not None else loss

    # ----- gradients ----------------------------------------------------------------------
    def backward(
        self,
        loss: Tensor,
        retain_graph: bool = False,
        create_graph: bool = False,
        inputs: list[nn.Parameter] | None = None,
    ) -> None:
        """Accumulate gradients of ``loss`` (scaled for AMP and accumulation)."""
        self._scale(loss).backward(
            retain_graph=retain_graph, create_graph=create_graph, inputs=inputs
        )

    def grad(
        self,
        loss: Tensor,
        params: list[nn.Parameter],
        retain_graph: bool = False,
        create_graph: bool = False,
    ) -> list[Tensor]:
        """Gradients of ``loss`` w.r.t. ``params`` in the same scaling as ``.grad`` holds
        (so combined gradients can be written back into ``p.grad``); unused params get zeros."""
        grads = torch.autograd.grad(
            self._scale(loss), params, retain_graph=retain_graph, create_graph=create_graph,
            allow_unused=True,
        )
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    @property
    def will_step(self) -> bool:
        """Whether :meth:`step` applies the update now (last micro-batch of an accumulation)."""
        return self.force_step or (self.micro_step + 1) % self.train.accum_steps == 0

    def step(self, group: str | None = None) -> None:
        """Unscale, clip and apply the optimiser of ``group`` (``None``: every active group),
        then clear its gradients. Under gradient accumulation the update happens on the last
        micro-batch only.
        """
        if group is None:
            for name in list(self.optimizers):
                self.step(name)
            return
        if group not in self.optimizers:
            raise KeyError(
                f"no active parameter group {group!r} in stage {getattr(self.stage, 'name', '?')}"
                f" (active: {sorted(self.optimizers)})"
            )
        if not self.will_step:
            return
        opt = self.optimizers[group]
        if self.grad_hook is not None:
            self.grad_hook(self.group_params[group])
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.train.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.group_params[group], self.train.clip_norm)
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        self.steps_taken += 1

    def zero_grad(self, group: str | None = None) -> None:
        """Clear gradients of one group (or all)."""
        for name, opt in self.optimizers.items():
            if group is None or name == group:
                opt.zero_grad(set_to_none=True)

    # ----- data ---------------------------------------------------------------------------
    def sample_batch(self, size: int | None = None) -> Batch:
        """A random training mini-batch (seeded by the engine's generator)."""
        n = len(self.train_split)
        size = min(size or self.train.batch_size, n)
        idx = torch.randperm(n, generator=self.generator)[:size].to(self.device)
        return self.train_split.batch(idx)

    def iter_train(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Iterate the training split in order (for methods that need full passes)."""
        return self.train_split.iter_batches(batch_size or self.train.batch_size)

    # ----- auxiliary training -------------------------------------------------------------
    def train_module(
        self,
        module: nn.Module,
        loss_fn: Callable[[Batch], Tensor],
        split: MultimodalSplit,
        epochs: int,
        batch_size: int | None = None,
    ) -> None:
        """Train an auxiliary module (e.g. a throw-away probe copy) outside the run's groups.

        The engine builds the optimiser with the run's factory and settings
        (:func:`~equimodal.engine.optim.build_optimizer` on ``train``), shuffles ``split``
        each epoch with the run's generator, and clips to ``train.clip_norm``; the method
        supplies only the loss. Full precision, no accumulation, no gradient hook: the
        module is not part of the run's state, optimisers or checkpoints.

        Args:
            module: Module to train in place (its parameters with ``requires_grad``).
            loss_fn: Batch -> scalar loss of ``module``.
            split: Training data of the module.
            epochs: Passes over ``split``.
            batch_size: Mini-batch size (default ``train.batch_size``).
        """
        params = [p for p in module.parameters() if p.requires_grad]
        opt = build_optimizer(params, self.train)
        bs, n = batch_size or self.train.batch_size, len(split)
        was = module.training
        module.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator).to(split.target.device)
            for start in range(0, n, bs):
                batch = split.batch(order[start : start + bs])
                grads = torch.autograd.grad(loss_fn(batch), params, allow_unused=True)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                if self.train.clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.train.clip_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
        module.train(was)
