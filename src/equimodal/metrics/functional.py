"""Functional metrics (tensors in, floats out); the stateful classes call these."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _confusion(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    idx = target.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    ).double()


def _n_classes(preds: Tensor, target: Tensor) -> int:
    if preds.numel() == 0:
        return 1
    return int(max(int(preds.max()), int(target.max()))) + 1


def accuracy(preds: Tensor, target: Tensor) -> float:
    """Fraction of exact matches.

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        0.6666666666666666
    """
    if target.numel() == 0:
        return math.nan
    return float((preds.reshape(-1) == target.reshape(-1)).double().mean())


def _f1_per_class(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    k = _n_classes(preds, target)
    cm = _confusion(preds, target, k)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))
    return f1, support


def macro_f1(preds: Tensor, target: Tensor) -> float:
    """Unweighted mean of per-class F1 over classes seen in preds or target (sklearn macro).

    Example:
        >>> import torch
        >>> round(macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])), 4)
        0.6667
    """
    if target.numel() == 0:
        return math.nan
    f1, support = _f1_per_class(preds, target)
    k = _n_classes(preds, target)
    cm = _confusion(preds, target, k)
    present = (cm.sum(1) + cm.sum(0)) > 0
    return float(f1[present].mean())


def weighted_f1(preds: Tensor, target: Tensor) -> float:
    """Per-class F1 weighted by class support (sklearn ``average="weighted"``)."""
    if target.numel() == 0:
        return math.nan
    f1, support = _f1_per_class(preds, target)
    return float((f1 * support).sum() / support.sum().clamp_min(1e-12))


def balanced_accuracy(preds: Tensor, target: Tensor) -> float:
    """Mean per-class recall over classes present in ``target``."""
    if target.numel() == 0:
        return math.nan
    k = _n_classes(preds, target)
    cm = _confusion(preds, target, k)
    support = cm.sum(1)
    recall = cm.diag()[support > 0] / support[support > 0]
    return float(recall.mean())


def weighted_accuracy_binary(preds: Tensor, target: Tensor) -> float:
    """MulT/IEMOCAP weighted accuracy ``(TP * N / P + TN) / (2N)`` for 0/1 labels."""
    p = float((target == 1).sum())
    n = float((target == 0).sum())
    if p == 0 or n == 0:
        return accuracy(preds, target)
    tp = float(((preds == 1) & (target == 1)).sum())
    tn = float(((preds == 0) & (target == 0)).sum())
    return (tp * n / p + tn) / (2 * n)


def multilabel_f1(preds01: Tensor, target01: Tensor, average: str = "macro") -> float:
    """F1 for 0/1 matrices ``[N, C]`` with ``average`` in macro, micro, samples."""
    p, t = preds01.double(), target01.double()
    if average == "micro":
        tp = (p * t).sum()
        denom = p.sum() + t.sum()
        return float(2 * tp / denom) if denom > 0 else 0.0
    dim = 0 if average == "macro" else 1
    if average not in ("macro", "samples"):
        raise KeyError(f"unknown average {average!r}; use macro, micro or samples")
    tp = (p * t).sum(dim)
    denom = p.sum(dim) + t.sum(dim)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))
    return float(f1.mean()) if f1.numel() else math.nan


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation (0.0 when either side is constant)."""
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = xc.norm() * yc.norm()
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def _binned_accuracy(preds: Tensor, target: Tensor, bound: float) -> float:
    a = torch.round(preds.clamp(-bound, bound))
    b = torch.round(target.clamp(-bound, bound))
    return float((a == b).double().mean())


def msa_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """Multimodal sentiment analysis metrics in the MMSA conventions.

    ``acc2_has0``/``f1_has0``: negative (< 0) vs non-negative (>= 0);
    ``acc2_non0``/``f1_non0``: samples with label 0 excluded, negative vs positive;
    ``acc3``/``acc5``/``acc7``: clip to [-1, 1] / [-2, 2] / [-3, 3] then round;
    ``mae`` and Pearson ``corr``. F1 scores are support-weighted.
    """
    p, t = preds.double().reshape(-1), target.double().reshape(-1)
    out: dict[str, float] = {}
    pb, tb = (p >= 0).long(), (t >= 0).long()
    out["acc2_has0"] = accuracy(pb, tb)
    out["f1_has0"] = weighted_f1(pb, tb)
    nz = t != 0
    pn, tn = (p[nz] > 0).long(), (t[nz] > 0).long()
    out["acc2_non0"] = accuracy(pn, tn)
    out["f1_non0"] = weighted_f1(pn, tn)
    out["acc3"] = _binned_accuracy(p, t, 1.0)
    out["acc5"] = _binned_accuracy(p, t, 2.0)
    out["acc7"] = _binned_accuracy(p, t, 3.0)
    out["mae"] = float((p - t).abs().mean()) if t.numel() else math.nan
    out["corr"] = pearson(p, t)
    return out


def regression_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """MAE, MSE, Pearson correlation and R^2."""
    p, t = preds.double().reshape(-1), target.double().reshape(-1)
    mse = float(((p - t) ** 2).mean()) if t.numel() else math.nan
    var = float(((t - t.mean()) ** 2).mean()) if t.numel() else math.nan
    return {
        "mae": float((p - t).abs().mean()) if t.numel() else math.nan,
        "mse": mse,
        "corr": pearson(p, t),
        "r2": 1.0 - mse / var if var > 0 else 0.0,
    }


def compute_task_metrics(kind: str, outputs: Tensor, target: Tensor) -> dict[str, float]:
    """All metrics of a task from raw model outputs.

    Args:
        kind: ``classification`` (logits ``[N, C]``), ``regression`` (``[N, 1]`` or ``[N]``)
            or ``multilabel`` (logits ``[N, C]``, thresholded at 0).
        outputs: Model outputs.
        target: Targets.

    Example:
        >>> import torch
        >>> m = compute_task_metrics("classification", torch.eye(3), torch.arange(3))
        >>> m["accuracy"], m["macro_f1"]
        (1.0, 1.0)
    """
    if kind == "classification":
        preds = outputs.argmax(-1)
        return {
            "accuracy": accuracy(preds, target),
            "macro_f1": macro_f1(preds, target),
            "weighted_f1": weighted_f1(preds, target),
            "balanced_accuracy": balanced_accuracy(preds, target),
        }
    if kind == "regression":
        p = outputs.reshape(-1)
        reg = regression_metrics(p, target)
        return {**msa_metrics(p, target), "mse": reg["mse"], "r2": reg["r2"]}
    if kind == "multilabel":
        preds01 = (outputs > 0).long()
        t = target.long()
        return {
            "f1_micro": multilabel_f1(preds01, t, "micro"),
            "f1_macro": multilabel_f1(preds01, t, "macro"),
            "f1_samples": multilabel_f1(preds01, t, "samples"),
            "accuracy": float((preds01 == t).all(1).double().mean()) if t.numel() else math.nan,
        }
    raise KeyError(f"unknown task kind {kind!r}; use classification, regression or multilabel")


_DEFAULT_SELECTION = {"classification": "accuracy", "regression": "mae",
                      "multilabel": "f1_micro"}
_KNOWN = {
    "classification": ["accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"],
    "regression": ["mae", "mse", "corr", "r2", "acc2_has0", "acc2_non0", "f1_has0",
                   "f1_non0", "acc3", "acc5", "acc7"],
    "multilabel": ["f1_micro", "f1_macro", "f1_samples", "accuracy"],
}


def selection_metric(kind: str, name: str = "auto") -> tuple[str, str]:
    """(validation metric used for model selection, ``"max"`` or ``"min"``)."""
    if kind not in _KNOWN:
        raise KeyError(f"unknown task kind {kind!r}")
    if name == "auto":
        name = _DEFAULT_SELECTION[kind]
    if name not in _KNOWN[kind]:
        raise KeyError(f"unknown selection metric {name!r} for {kind}; valid: {_KNOWN[kind]}")
    return name, ("min" if name.endswith(("mae", "mse", "loss")) else "max")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    if not values:
        return math.nan, math.nan
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
