"""Metrics: functional forms and stateful classes sharing one implementation."""

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
    "weighted_accuracy_binary",
    "weighted_f1",
]
