"""Classification and multilabel metrics (class ids / 0-1 indicators in, floats out)."""

from __future__ import annotations

from torch import Tensor

from equimodal.metrics._common import NAN, _class_ids, _confusion, _f1_from_counts, _pair


def accuracy(preds: Tensor, target: Tensor) -> float:
    """Fraction of predictions equal to the target.

    Args:
        preds: Predicted class ids ``[N]``.
        target: True class ids ``[N]``.

    Returns:
        Accuracy in ``[0, 1]`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2]))
        0.75
    """
    p, t = _pair(preds, target)
    if t.numel() == 0:
        return NAN
    return float((p == t).double().mean())


def _per_class_f1(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class F1, support (true count) and predicted count from the confusion matrix."""
    cm = _confusion(preds, target)
    support, n_pred = cm.sum(1), cm.sum(0)
    return _f1_from_counts(cm.diag(), n_pred, support), support, n_pred


def macro_f1(preds: Tensor, target: Tensor) -> float:
    """Unweighted mean of per-class F1 (scikit-learn ``average="macro"``).

    The mean runs over the classes that occur in ``preds`` or ``target``.

    Args:
        preds: Predicted class ids ``[N]``.
        target: True class ids ``[N]``.

    Returns:
        Macro F1 in ``[0, 1]`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> round(macro_f1(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2])), 4)
        0.7778
    """
    p, t = _class_ids(preds, target)
    if t.numel() == 0:
        return NAN
    f1, support, n_pred = _per_class_f1(p, t)
    return float(f1[(support + n_pred) > 0].mean())


def weighted_f1(preds: Tensor, target: Tensor) -> float:
    """Per-class F1 weighted by class support (scikit-learn ``average="weighted"``).

    Args:
        preds: Predicted class ids ``[N]``.
        target: True class ids ``[N]``.

    Returns:
        Support-weighted F1 in ``[0, 1]`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> round(weighted_f1(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 2])), 4)
        0.75
    """
    p, t = _class_ids(preds, target)
    if t.numel() == 0:
        return NAN
    f1, support, _ = _per_class_f1(p, t)
    return float((f1 * support).sum() / support.sum())


def balanced_accuracy(preds: Tensor, target: Tensor) -> float:
    """Mean per-class recall over the classes present in ``target``.

    Matches :func:`sklearn.metrics.balanced_accuracy_score` (``adjusted=False``).

    Args:
        preds: Predicted class ids ``[N]``.
        target: True class ids ``[N]``.

    Returns:
        Balanced accuracy in ``[0, 1]`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> balanced_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    p, t = _class_ids(preds, target)
    if t.numel() == 0:
        return NAN
    cm = _confusion(p, t)
    support = cm.sum(1)
    seen = support > 0
    return float((cm.diag()[seen] / support[seen]).mean())


def weighted_accuracy_binary(preds: Tensor, target: Tensor) -> float:
    """Weighted accuracy of the MulT / IEMOCAP convention for binary labels.

    ``WA = (TP * N / P + TN) / (2 N)`` with ``P``/``N`` the numbers of positive/negative
    targets, i.e. the mean of the two class recalls. Non-zero values count as positive.
    With a single class in ``target`` the ratio is undefined; the recall of that class
    (which then equals plain accuracy, and scikit-learn's balanced accuracy) is returned.

    Args:
        preds: Predicted labels ``[N]`` (0/1).
        target: True labels ``[N]`` (0/1).

    Returns:
        Weighted accuracy in ``[0, 1]`` (``nan`` for empty input).

    Example:
        >>> import torch
        >>> weighted_accuracy_binary(torch.tensor([1, 0, 0, 0]), torch.tensor([1, 1, 0, 0]))
        0.75
    """
    p, t = _pair(preds, target)
    if t.numel() == 0:
        return NAN
    pb, tb = p != 0, t != 0
    n_pos, n_neg = float(tb.sum()), float((~tb).sum())
    if n_pos == 0 or n_neg == 0:
        return float((pb == tb).double().mean())
    tp = float((pb & tb).sum())
    tn = float((~pb & ~tb).sum())
    return (tp * n_neg / n_pos + tn) / (2 * n_neg)


# --------------------------------------------------------------------------------------
# multilabel
# --------------------------------------------------------------------------------------

_AVERAGES = ("macro", "micro", "samples")


def _multilabel_pair(preds01: Tensor, target01: Tensor) -> tuple[Tensor, Tensor]:
    p = preds01.detach()
    t = target01.detach().to(p.device)
    if p.dim() == 1:
        p = p.unsqueeze(1)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if p.shape != t.shape or p.dim() != 2:
        raise ValueError(
            f"multilabel preds and target must both be [N, C], got {tuple(preds01.shape)} "
            f"and {tuple(target01.shape)}"
        )
    return p != 0, t != 0


def multilabel_f1(preds01: Tensor, target01: Tensor, average: str = "macro") -> float:
    """F1 for multilabel 0/1 indicator matrices.

    Matches :func:`sklearn.metrics.f1_score` on indicator matrices: ``macro`` averages the
    per-label F1 over all ``C`` labels, ``micro`` pools every cell, ``samples`` averages the
    per-sample F1. Undefined terms (no true and no predicted label) count as 0.0.

    Args:
        preds01: Predicted labels ``[N, C]`` (non-zero is positive).
        target01: True labels ``[N, C]``.
        average: ``"macro"``, ``"micro"`` or ``"samples"``.

    Returns:
        F1 in ``[0, 1]`` (``nan`` when ``N == 0``).

    Raises:
        KeyError: For an unknown ``average``.

    Example:
        >>> import torch
        >>> p = torch.tensor([[1, 0, 1], [0, 1, 0]])
        >>> t = torch.tensor([[1, 0, 0], [0, 1, 1]])
        >>> multilabel_f1(p, t, "micro"), multilabel_f1(p, t, "samples")
        (0.6666666666666666, 0.6666666666666666)
    """
    if average not in _AVERAGES:
        raise KeyError(f"unknown average {average!r}; valid: {list(_AVERAGES)}")
    p, t = _multilabel_pair(preds01, target01)
    if p.shape[0] == 0:
        return NAN
    tp = (p & t).double()
    pd, td = p.double(), t.double()
    if average == "micro":
        return float(_f1_from_counts(tp.sum(), pd.sum(), td.sum()))
    dim = 0 if average == "macro" else 1
    return float(_f1_from_counts(tp.sum(dim), pd.sum(dim), td.sum(dim)).mean())
