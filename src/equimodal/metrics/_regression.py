"""Regression and multimodal sentiment analysis (MMSA) metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from equimodal.metrics._classification import accuracy, weighted_f1
from equimodal.metrics._common import NAN, _pair


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation coefficient.

    Args:
        x: Values ``[N]``.
        y: Values ``[N]``.

    Returns:
        Correlation in ``[-1, 1]``; 0.0 when either side is constant (including
        ``N == 1``), ``nan`` for empty input.

    Example:
        >>> import torch
        >>> round(pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])), 4)
        0.9934
    """
    a, b = _pair(x, y)
    a, b = a.double(), b.double()
    if a.numel() == 0:
        return NAN
    if bool(a.max() == a.min()) or bool(b.max() == b.min()):
        return 0.0
    ac, bc = a - a.mean(), b - b.mean()
    r = (ac * bc).sum() / (ac.norm() * bc.norm())
    return float(r.clamp(-1.0, 1.0))


def _binned_accuracy(preds: Tensor, target: Tensor, bound: float) -> float:
    """MMSA multi-class accuracy: clip to ``[-bound, bound]``, round half to even, compare."""
    pc = torch.round(preds.clamp(-bound, bound))
    tc = torch.round(target.clamp(-bound, bound))
    return float((pc == tc).double().mean())


def _binary_scores(pb: Tensor, tb: Tensor) -> tuple[float, float]:
    """Accuracy and support-weighted F1 of boolean predictions against boolean targets."""
    if tb.numel() == 0:
        return NAN, NAN
    pl, tl = pb.long(), tb.long()
    return accuracy(pl, tl), weighted_f1(pl, tl)


def msa_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """Multimodal sentiment analysis metrics in the MMSA toolkit's conventions.

    Scores are sentiment intensities in ``[-3, 3]`` (CMU-MOSI / MOSEI), following MMSA's
    ``MetricsTop.__eval_mosei_regression``:

    * ``acc2_has0`` / ``f1_has0``: non-negative (``>= 0``) vs negative, over all samples
      (label 0 counts as non-negative).
    * ``acc2_non0`` / ``f1_non0``: samples with label exactly 0 dropped, then positive
      (``> 0``) vs non-positive (``nan`` if every label is 0).
    * ``acc3`` / ``acc5`` / ``acc7``: clip both sides to ``[-1, 1]`` / ``[-2, 2]`` /
      ``[-3, 3]``, round half to even (``np.round``), exact-match accuracy.
    * ``mae`` and Pearson ``corr`` (0.0 instead of ``nan`` if a side is constant).

    F1 scores are support-weighted (scikit-learn ``average="weighted"``). Unlike MMSA, the
    values are not rounded to 4 decimals.

    Args:
        preds: Predicted scores ``[N]`` (or ``[N, 1]``).
        target: True scores ``[N]`` (or ``[N, 1]``).

    Returns:
        Dict with keys ``acc2_has0, f1_has0, acc2_non0, f1_non0, acc3, acc5, acc7, mae,
        corr`` (all ``nan`` for empty input, except as noted).

    Example:
        >>> import torch
        >>> m = msa_metrics(torch.tensor([0.4, -1.2, 2.6, -0.3]),
        ...                 torch.tensor([0.0, -1.0, 3.0, 0.6]))
        >>> m["acc2_has0"], m["acc2_non0"], m["acc7"]
        (0.75, 0.6666666666666666, 0.75)
    """
    p, t = _pair(preds, target)
    p, t = p.double(), t.double()
    has0 = _binary_scores(p >= 0, t >= 0)
    nz = t != 0
    non0 = _binary_scores(p[nz] > 0, t[nz] > 0)
    empty = t.numel() == 0
    return {
        "acc2_has0": has0[0],
        "f1_has0": has0[1],
        "acc2_non0": non0[0],
        "f1_non0": non0[1],
        "acc3": NAN if empty else _binned_accuracy(p, t, 1.0),
        "acc5": NAN if empty else _binned_accuracy(p, t, 2.0),
        "acc7": NAN if empty else _binned_accuracy(p, t, 3.0),
        "mae": NAN if empty else float((p - t).abs().mean()),
        "corr": pearson(p, t),
    }


def regression_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """Mean absolute error, mean squared error, Pearson correlation and R².

    R² follows :func:`sklearn.metrics.r2_score` (``force_finite=True``): with a constant
    target it is 1.0 for a perfect prediction and 0.0 otherwise.

    Args:
        preds: Predictions ``[N]`` (or ``[N, 1]``).
        target: Targets ``[N]`` (or ``[N, 1]``).

    Returns:
        Dict with keys ``mae, mse, corr, r2`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> m = regression_metrics(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 3.0]))
        >>> round(m["mae"], 4), round(m["mse"], 4), round(m["r2"], 4)
        (0.6667, 0.6667, 0.25)
    """
    p, t = _pair(preds, target)
    p, t = p.double(), t.double()
    if t.numel() == 0:
        return {"mae": NAN, "mse": NAN, "corr": NAN, "r2": NAN}
    err = p - t
    sse = float((err**2).sum())
    sst = float(((t - t.mean()) ** 2).sum())
    # scikit-learn's force_finite convention for a constant target
    r2 = 1.0 - sse / sst if sst > 0 else float(sse == 0)
    return {
        "mae": float(err.abs().mean()),
        "mse": sse / t.numel(),
        "corr": pearson(p, t),
        "r2": r2,
    }
