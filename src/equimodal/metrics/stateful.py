"""Stateful metrics: ``update`` per batch, ``compute`` once, ``reset`` between epochs.

The state is the list of batches seen (detached, on CPU); :meth:`Metric.compute`
concatenates it and calls the functional implementation, so a stateful metric over
several batches equals the functional metric over their concatenation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from equimodal.metrics.functional import compute_task_metrics, task_metric_names

__all__ = ["Metric", "TaskMetrics"]

MetricFn = Callable[[Tensor, Tensor], dict[str, float]]


def _n_samples(x: Tensor) -> int:
    return int(x.shape[0]) if x.dim() else 1


class Metric:
    """Accumulates ``(outputs, target)`` batches and computes metrics over all of them.

    Either pass a functional metric returning a dict (e.g.
    :func:`~equimodal.metrics.msa_metrics`) or subclass and override :meth:`_compute`.

    Args:
        fn: ``fn(outputs, target) -> dict[str, float]`` applied to the concatenated state.

    Example:
        >>> import torch
        >>> from equimodal.metrics import regression_metrics
        >>> m = Metric(regression_metrics)
        >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
        >>> m.update(torch.tensor([4.0]), torch.tensor([3.0]))
        >>> round(m.compute()["mae"], 4), m.num_samples
        (0.6667, 3)
    """

    def __init__(self, fn: MetricFn | None = None) -> None:
        self._fn = fn
        self._outputs: list[Tensor] = []
        self._targets: list[Tensor] = []

    @property
    def num_samples(self) -> int:
        """Number of samples accumulated since the last reset."""
        return sum(_n_samples(t) for t in self._targets)

    def update(self, outputs: Tensor, target: Tensor) -> None:
        """Add one batch (stored detached, on CPU).

        Args:
            outputs: Model outputs of the batch, first dimension the batch size.
            target: Targets of the batch, same batch size.

        Raises:
            ValueError: When the batch sizes of ``outputs`` and ``target`` differ.
        """
        if _n_samples(outputs) != _n_samples(target):
            raise ValueError(
                f"outputs {tuple(outputs.shape)} and target {tuple(target.shape)} have "
                "different batch sizes"
            )
        self._outputs.append(outputs.detach().cpu().reshape(-1, *outputs.shape[1:]))
        self._targets.append(target.detach().cpu().reshape(-1, *target.shape[1:]))

    def reset(self) -> None:
        """Forget every batch."""
        self._outputs.clear()
        self._targets.clear()

    def state(self) -> tuple[Tensor, Tensor]:
        """The concatenated ``(outputs, target)`` seen so far (empty tensors before any)."""
        if not self._outputs:
            return torch.empty(0), torch.empty(0)
        return torch.cat(self._outputs), torch.cat(self._targets)

    def compute(self) -> dict[str, float]:
        """Metrics over every batch since the last reset."""
        outputs, target = self.state()
        return self._compute(outputs, target)

    def _compute(self, outputs: Tensor, target: Tensor) -> dict[str, float]:
        if self._fn is None:
            raise NotImplementedError("pass a metric function or override _compute")
        return self._fn(outputs, target)

    def __repr__(self) -> str:
        name = getattr(self._fn, "__name__", None)
        inner = f"{name}, " if name else ""
        return f"{type(self).__name__}({inner}num_samples={self.num_samples})"


class TaskMetrics(Metric):
    """:func:`~equimodal.metrics.compute_task_metrics` over accumulated batches.

    Args:
        kind: ``"classification"``, ``"regression"`` or ``"multilabel"``.

    Raises:
        KeyError: For an unknown ``kind``.

    Example:
        >>> import torch
        >>> m = TaskMetrics("classification")
        >>> m.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> m.update(torch.tensor([[0.5, 0.1], [0.2, 0.9]]), torch.tensor([1, 1]))
        >>> m.compute()["accuracy"]
        0.75
        >>> m.reset()
        >>> m.num_samples
        0
    """

    def __init__(self, kind: str) -> None:
        self.names = task_metric_names(kind)  # validates kind
        super().__init__()
        self.kind = kind

    def _compute(self, outputs: Tensor, target: Tensor) -> dict[str, float]:
        return compute_task_metrics(self.kind, outputs, target)

    def __repr__(self) -> str:
        return f"TaskMetrics({self.kind!r}, num_samples={self.num_samples})"
