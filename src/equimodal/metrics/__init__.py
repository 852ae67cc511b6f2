"""Metrics: functional forms and stateful classes sharing one implementation.

Functional metrics (:mod:`equimodal.metrics.functional`) take tensors and return Python
floats; stateful metrics (:mod:`equimodal.metrics.stateful`) accumulate batches and call
the same functions on the concatenation. The training engine uses
:func:`compute_task_metrics` and :func:`selection_metric`.
"""

from equimodal.metrics.functional import (
    accuracy,
    balanced_accuracy,
    compute_task_metrics,
    macro_f1,
    mean_std,
    msa_metrics,
    multilabel_f1,
    pearson,
    regression_metrics,
    selection_metric,
    task_metric_names,
    weighted_accuracy_binary,
    weighted_f1,
)
from equimodal.metrics.stateful import Metric, TaskMetrics

__all__ = [
    "Metric",
    "TaskMetrics",
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
