"""Stateful metrics (update / compute / reset) sharing the functional implementation."""

from __future__ import annotations

import torch
from torch import Tensor

from equimodal.metrics.functional import compute_task_metrics


class Metric:
    """Accumulates detached CPU outputs and targets; ``compute`` calls the functional form."""

    def __init__(self) -> None:
        self._outputs: list[Tensor] = []
        self._targets: list[Tensor] = []

    def update(self, outputs: Tensor, target: Tensor) -> None:
        """Add a batch."""
        self._outputs.append(outputs.detach().float().cpu())
        self._targets.append(target.detach().cpu())

    def reset(self) -> None:
        """Forget every batch."""
        self._outputs.clear()
        self._targets.clear()

    def _cat(self) -> tuple[Tensor, Tensor]:
        return torch.cat(self._outputs), torch.cat(self._targets)

    def compute(self) -> dict[str, float]:
        """Metrics over every batch so far."""
        raise NotImplementedError


class TaskMetrics(Metric):
    """:func:`compute_task_metrics` over accumulated batches.

    Example:
        >>> import torch
        >>> m = TaskMetrics("classification")
        >>> m.update(torch.eye(2), torch.tensor([0, 1]))
        >>> m.update(torch.eye(2), torch.tensor([1, 1]))
        >>> m.compute()["accuracy"]
        0.75
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def compute(self) -> dict[str, float]:
        """Task metrics over every batch so far."""
        outputs, target = self._cat()
        return compute_task_metrics(self.kind, outputs, target)
