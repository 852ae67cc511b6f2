"""Functional metrics: tensors in, Python floats out.

Every metric here is vectorised torch code and is the single implementation that the
stateful classes in :mod:`equimodal.metrics.stateful` call on their accumulated state.

Conventions:
    * Classification inputs are class ids ``[N]`` (any integer, bool or integral float
      dtype); ids need not be contiguous.
    * Empty input (``N == 0``) gives ``nan`` rather than raising, so that an empty split
      never crashes an evaluation loop.
    * Ill-defined F1 terms (no true and no predicted sample of a class) count as 0.0, as in
      scikit-learn's default ``zero_division="warn"``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from torch import Tensor

from equimodal.metrics._classification import (
    _multilabel_pair,
    accuracy,
    balanced_accuracy,
    macro_f1,
    multilabel_f1,
    weighted_accuracy_binary,
    weighted_f1,
)
from equimodal.metrics._common import NAN
from equimodal.metrics._regression import msa_metrics, pearson, regression_metrics

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "compute_task_metrics",
    "macro_f1",
    "mean_std",
    "msa_metrics",
    "multilabel_f1",
    "pearson",
    "regression_metrics",
    "selection_metric",
    "task_metric_names",
    "weighted_accuracy_binary",
    "weighted_f1",
]

# --------------------------------------------------------------------------------------
# task-level entry points (used by the training engine)
# --------------------------------------------------------------------------------------

_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"),
    "regression": ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "acc5", "acc7",
                   "mae", "corr", "mse", "r2"),
    "multilabel": ("f1_micro", "f1_macro", "f1_samples", "accuracy"),
}
_DEFAULT_SELECTION = {"classification": "accuracy", "regression": "mae",
                      "multilabel": "f1_micro"}


def _check_kind(kind: str) -> None:
    if kind not in _TASK_METRICS:
        raise KeyError(f"unknown task kind {kind!r}; valid: {sorted(_TASK_METRICS)}")


def task_metric_names(kind: str) -> tuple[str, ...]:
    """Names of the metrics :func:`compute_task_metrics` returns for a task kind.

    Example:
        >>> task_metric_names("multilabel")
        ('f1_micro', 'f1_macro', 'f1_samples', 'accuracy')
    """
    _check_kind(kind)
    return _TASK_METRICS[kind]


def _classification_preds(outputs: Tensor) -> Tensor:
    """Class ids from logits ``[N, C]``; ``[N]``/``[N, 1]`` floats are one binary logit."""
    if not outputs.is_floating_point():
        return outputs.reshape(-1)
    if outputs.dim() >= 2 and outputs.shape[-1] > 1:
        return outputs.argmax(-1).reshape(-1)
    return (outputs.reshape(-1) > 0).long()


def compute_task_metrics(kind: str, outputs: Tensor, target: Tensor) -> dict[str, float]:
    """Every metric of a task, from raw model outputs.

    Args:
        kind: ``"classification"``: ``outputs`` are logits ``[N, C]`` (arg-maxed; a float
            ``[N]``/``[N, 1]`` is one binary logit thresholded at 0, an integer ``[N]`` is
            taken as class ids), ``target`` class ids ``[N]``.
            ``"regression"``: ``outputs`` ``[N, 1]`` or ``[N]``, ``target`` scores ``[N]``;
            returns the :func:`msa_metrics` keys plus ``mse`` and ``r2``.
            ``"multilabel"``: ``outputs`` logits ``[N, C]`` thresholded at 0, ``target``
            0/1 ``[N, C]``; returns ``f1_micro``, ``f1_macro``, ``f1_samples`` and subset
            accuracy ``accuracy``.
        outputs: Model outputs.
        target: Targets.

    Returns:
        Dict of metric name to float, keys as in :func:`task_metric_names` (values ``nan``
        for empty input).

    Raises:
        KeyError: For an unknown ``kind``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.1], [0.3, 1.0], [1.5, -1.0]])
        >>> m = compute_task_metrics("classification", logits, torch.tensor([0, 1, 1]))
        >>> round(m["accuracy"], 4), round(m["balanced_accuracy"], 4)
        (0.6667, 0.75)
    """
    _check_kind(kind)
    if outputs.numel() == 0 or target.numel() == 0:
        if (outputs.numel() == 0) != (target.numel() == 0):
            raise ValueError(
                f"outputs {tuple(outputs.shape)} and target {tuple(target.shape)} do not "
                "hold the same number of samples"
            )
        return dict.fromkeys(_TASK_METRICS[kind], NAN)
    if kind == "classification":
        preds = _classification_preds(outputs.detach())
        return {
            "accuracy": accuracy(preds, target),
            "macro_f1": macro_f1(preds, target),
            "weighted_f1": weighted_f1(preds, target),
            "balanced_accuracy": balanced_accuracy(preds, target),
        }
    if kind == "regression":
        reg = regression_metrics(outputs, target)
        return {**msa_metrics(outputs, target), "mse": reg["mse"], "r2": reg["r2"]}
    p, t = _multilabel_pair(outputs.detach() > 0, target)
    return {
        "f1_micro": multilabel_f1(p, t, "micro"),
        "f1_macro": multilabel_f1(p, t, "macro"),
        "f1_samples": multilabel_f1(p, t, "samples"),
        "accuracy": float((p == t).all(1).double().mean()),
    }


def selection_metric(kind: str, name: str = "auto") -> tuple[str, str]:
    """Validation metric used for model selection and its direction.

    Args:
        kind: Task kind (``classification``, ``regression`` or ``multilabel``).
        name: ``"auto"`` (``accuracy`` for classification, ``mae`` for regression,
            ``f1_micro`` for multilabel), a name from :func:`task_metric_names`, or
            ``"<modality>/<name>"`` for a unimodal score.

    Returns:
        ``(metric name, "min" or "max")``; names ending in ``mae``, ``mse`` or ``loss`` are
        minimised, the others maximised.

    Raises:
        KeyError: For an unknown kind or metric name (the message lists the valid ones).

    Example:
        >>> selection_metric("regression")
        ('mae', 'min')
        >>> selection_metric("classification", "macro_f1")
        ('macro_f1', 'max')
    """
    _check_kind(kind)
    if name == "auto":
        name = _DEFAULT_SELECTION[kind]
    base = name.rsplit("/", 1)[-1]
    if base not in _TASK_METRICS[kind] or name.startswith("/"):
        raise KeyError(
            f"unknown selection metric {name!r} for {kind} tasks; valid: 'auto', "
            f"{', '.join(map(repr, _TASK_METRICS[kind]))} (optionally '<modality>/' prefixed)"
        )
    return name, ("min" if base.endswith(("mae", "mse", "loss")) else "max")


# --------------------------------------------------------------------------------------
# aggregation over seeds
# --------------------------------------------------------------------------------------


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of values, e.g. one per seed.

    Args:
        values: The values.

    Returns:
        ``(mean, std)``; std is 0.0 for a single value, both are ``nan`` for none.

    Example:
        >>> mean, std = mean_std([0.7, 0.8, 0.9])
        >>> round(mean, 4), round(std, 4)
        (0.8, 0.1)
        >>> mean_std([0.5])
        (0.5, 0.0)
    """
    vals = [float(v) for v in values]
    if not vals:
        return NAN, NAN
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)
