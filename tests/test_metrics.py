"""Metrics against references: scikit-learn, scipy and the MMSA toolkit's conventions."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

import equimodal.metrics as M
from equimodal.metrics import (
    Metric,
    TaskMetrics,
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

# scikit-learn's notices on the degenerate inputs these tests use on purpose
pytestmark = [
    pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true"),
    pytest.mark.filterwarnings("ignore:A single label was found"),
]

KINDS = ("classification", "regression", "multilabel")
MSA_KEYS = {"acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "acc5", "acc7", "mae",
            "corr"}


def _sk_classification(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": accuracy_score(t, p),
        "macro_f1": f1_score(t, p, average="macro", zero_division=0),
        "weighted_f1": f1_score(t, p, average="weighted", zero_division=0),
        "balanced_accuracy": balanced_accuracy_score(t, p),
    }


def _ours_classification(p: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": accuracy(p, t),
        "macro_f1": macro_f1(p, t),
        "weighted_f1": weighted_f1(p, t),
        "balanced_accuracy": balanced_accuracy(p, t),
    }


def _mmsa_reference(preds: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA ``MetricsTop.__eval_mosei_regression`` transcribed (numpy + scikit-learn)."""

    def multiclass_acc(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(np.round(a) == np.round(b)) / float(len(b)))

    non_zeros = np.array([i for i, e in enumerate(truth) if e != 0])
    nz_truth, nz_preds = truth[non_zeros] > 0, preds[non_zeros] > 0
    return {
        "acc2_has0": accuracy_score(preds >= 0, truth >= 0),
        "f1_has0": f1_score(truth >= 0, preds >= 0, average="weighted"),
        "acc2_non0": accuracy_score(nz_preds, nz_truth),
        "f1_non0": f1_score(nz_truth, nz_preds, average="weighted"),
        "acc3": multiclass_acc(np.clip(preds, -1.0, 1.0), np.clip(truth, -1.0, 1.0)),
        "acc5": multiclass_acc(np.clip(preds, -2.0, 2.0), np.clip(truth, -2.0, 2.0)),
        "acc7": multiclass_acc(np.clip(preds, -3.0, 3.0), np.clip(truth, -3.0, 3.0)),
        "mae": float(np.mean(np.absolute(preds - truth))),
        "corr": float(pearsonr(preds, truth)[0]),
    }


def _assert_close(ours: dict[str, float], ref: dict[str, float], tol: float = 1e-9) -> None:
    assert set(ref) <= set(ours)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=tol, nan_ok=True), k


# ----- classification ------------------------------------------------------------------


def test_classification_handmade() -> None:
    p = torch.tensor([0, 1, 1, 2, 2, 2])
    t = torch.tensor([0, 1, 0, 2, 1, 2])
    # class 0: TP 1, pred 1, true 2 -> F1 2/3; class 1: TP 1, pred 2, true 2 -> 1/2;
    # class 2: TP 2, pred 3, true 2 -> 4/5
    assert accuracy(p, t) == pytest.approx(4 / 6)
    assert macro_f1(p, t) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert weighted_f1(p, t) == pytest.approx((2 * 2 / 3 + 2 * 1 / 2 + 2 * 4 / 5) / 6)
    assert balanced_accuracy(p, t) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    _assert_close(_ours_classification(p, t), _sk_classification(p.numpy(), t.numpy()))


def test_classification_class_only_in_preds_or_target() -> None:
    # class 3 only predicted, class 5 only a target; ids need not be contiguous
    p = torch.tensor([0, 3, 1, 1, 0])
    t = torch.tensor([0, 0, 1, 5, 5])
    _assert_close(_ours_classification(p, t), _sk_classification(p.numpy(), t.numpy()))


@pytest.mark.parametrize("seed", range(6))
def test_classification_random_against_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = [1, 2, 9, 60, 300, 1000][seed]
    k = [2, 3, 5, 7, 4, 10][seed]
    t = torch.randint(0, k, (n,), generator=g)
    noise = torch.randint(0, k + 1, (n,), generator=g)  # may predict a class never a target
    p = torch.where(torch.rand(n, generator=g) < 0.6, t, noise)
    _assert_close(_ours_classification(p, t), _sk_classification(p.numpy(), t.numpy()))


def test_classification_accepts_float_ids_and_2d_target() -> None:
    p, t = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([[0], [1], [1]])
    assert macro_f1(p, t) == pytest.approx(f1_score([0, 1, 1], [0, 1, 2], average="macro"))
    with pytest.raises(ValueError, match="integer class ids"):
        macro_f1(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="different numbers"):
        accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))


def test_classification_degenerate_inputs() -> None:
    empty = torch.empty(0, dtype=torch.long)
    for fn in (accuracy, macro_f1, weighted_f1, balanced_accuracy, weighted_accuracy_binary):
        assert math.isnan(fn(empty, empty))
    one = torch.tensor([2])
    assert macro_f1(one, one) == 1.0 and balanced_accuracy(one, one) == 1.0
    wrong = torch.tensor([1, 1, 1])
    right = torch.tensor([0, 0, 0])
    _assert_close(_ours_classification(wrong, right),
                  _sk_classification(wrong.numpy(), right.numpy()))


def test_weighted_accuracy_binary_mult_convention() -> None:
    t = torch.tensor([1, 0, 0, 0, 0, 1, 0, 0])  # P = 2, N = 6
    p = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0])  # TP = 1, TN = 5
    assert weighted_accuracy_binary(p, t) == pytest.approx((1 * 6 / 2 + 5) / (2 * 6))
    assert weighted_accuracy_binary(p, t) == pytest.approx(balanced_accuracy_score(t, p))
    assert weighted_accuracy_binary(p, t) != pytest.approx(accuracy(p, t))
    # one class only: the recall of that class (= accuracy = sklearn balanced accuracy)
    t1, p1 = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 0])
    assert weighted_accuracy_binary(p1, t1) == pytest.approx(0.75)
    assert weighted_accuracy_binary(p1, t1) == pytest.approx(balanced_accuracy_score(t1, p1))


def test_weighted_accuracy_binary_random() -> None:
    g = torch.Generator().manual_seed(3)
    t = (torch.rand(200, generator=g) < 0.2).long()
    p = (torch.rand(200, generator=g) < 0.4).long()
    assert weighted_accuracy_binary(p, t) == pytest.approx(balanced_accuracy_score(t, p))


# ----- multilabel ----------------------------------------------------------------------


def test_multilabel_handmade() -> None:
    p = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    t = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # micro: TP 2, predicted 3, true 3; labels: [1, 1, 0, 0(undefined)];
    # samples: [2/3, 2/3, 0 (undefined)]
    assert multilabel_f1(p, t, "micro") == pytest.approx(4 / 6)
    assert multilabel_f1(p, t, "macro") == pytest.approx(2 / 4)
    assert multilabel_f1(p, t, "samples") == pytest.approx((2 / 3 + 2 / 3) / 3)
    for avg in ("micro", "macro", "samples"):
        ref = f1_score(t.numpy(), p.numpy(), average=avg, zero_division=0)
        assert multilabel_f1(p, t, avg) == pytest.approx(ref)


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_random_against_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    # C >= 2: scikit-learn reads a one-column indicator matrix as binary, not multilabel
    n, c = [1, 5, 40, 300][seed], [2, 3, 6, 12][seed]
    t = (torch.rand(n, c, generator=g) < 0.3).long()
    t[:, 0] = 0  # a label never true
    p = (torch.rand(n, c, generator=g) < 0.3).long()
    for avg in ("micro", "macro", "samples"):
        ref = f1_score(t.numpy(), p.numpy(), average=avg, zero_division=0)
        assert multilabel_f1(p, t, avg) == pytest.approx(ref), avg


def test_multilabel_errors_and_empty() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(KeyError, match="samples"):
        multilabel_f1(x, x, "weighted")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        multilabel_f1(torch.zeros(3, 2), torch.zeros(3, 3))
    for avg in ("micro", "macro", "samples"):
        assert math.isnan(multilabel_f1(torch.zeros(0, 4), torch.zeros(0, 4), avg))
        assert multilabel_f1(x, x, avg) == 0.0  # nothing true, nothing predicted


# ----- MSA and regression ----------------------------------------------------------------

MSA_PREDS = [1.6, -0.4, 0.3, -2.7, 0.5, 2.5, -1.5, 0.0]
MSA_TARGET = [2.0, 0.0, 0.0, -3.0, 1.0, 2.2, -0.6, -1.0]


def test_msa_handmade_has0_vs_non0() -> None:
    m = msa_metrics(torch.tensor(MSA_PREDS), torch.tensor(MSA_TARGET))
    assert set(m) == MSA_KEYS
    # has0 (>= 0 vs < 0): sample 1 (pred -0.4, label 0) and 7 (pred 0.0, label -1) wrong
    assert m["acc2_has0"] == pytest.approx(6 / 8)
    # non-negative: 5 true / 5 predicted, TP 4 -> F1 0.8; negative: 3 / 3, TP 2 -> 2/3
    assert m["f1_has0"] == pytest.approx((5 * 0.8 + 3 * 2 / 3) / 8)
    # non0: both label-0 samples dropped, the remaining six are all right
    assert m["acc2_non0"] == 1.0 and m["f1_non0"] == 1.0
    assert m["acc2_has0"] != m["acc2_non0"]
    # round half to even: 0.5 -> 0, 2.5 -> 2, -1.5 -> -2 (as np.round)
    assert m["acc7"] == pytest.approx(5 / 8)
    assert m["acc5"] == pytest.approx(5 / 8)
    assert m["acc3"] == pytest.approx(6 / 8)
    assert m["mae"] == pytest.approx(4.1 / 8, abs=1e-6)
    assert m["corr"] == pytest.approx(pearsonr(MSA_PREDS, MSA_TARGET)[0], abs=1e-6)
    ref = _mmsa_reference(np.array(MSA_PREDS, np.float32), np.array(MSA_TARGET, np.float32))
    _assert_close(m, ref, tol=1e-6)


def test_msa_zero_prediction_counts_as_non_negative() -> None:
    # pred exactly 0 vs negative label: wrong for has0 (0 >= 0), right for non0 (0 > 0 false)
    m = msa_metrics(torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 2.0]))
    assert m["acc2_has0"] == 0.5 and m["acc2_non0"] == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_msa_random_against_mmsa_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = [3, 20, 200, 1000][seed]
    truth = np.round(rng.uniform(-3, 3, n) * 3) / 3  # MOSI-style thirds, with exact zeros
    truth[: max(1, n // 10)] = 0.0
    preds = np.clip(truth + rng.normal(0, 0.8, n), -3.5, 3.5)
    preds[-1] = 0.5  # a rounding tie
    preds, truth = preds.astype(np.float32), truth.astype(np.float32)
    ours = msa_metrics(torch.from_numpy(preds), torch.from_numpy(truth))
    _assert_close(ours, _mmsa_reference(preds.astype(np.float64), truth.astype(np.float64)))


def test_msa_degenerate_inputs() -> None:
    zeros = torch.zeros(4)
    m = msa_metrics(torch.tensor([0.3, -0.2, 0.0, 1.0]), zeros)
    assert math.isnan(m["acc2_non0"]) and math.isnan(m["f1_non0"])  # every label is 0
    assert m["corr"] == 0.0 and m["acc2_has0"] == 0.75
    empty = msa_metrics(torch.empty(0), torch.empty(0))
    assert set(empty) == MSA_KEYS and all(math.isnan(v) for v in empty.values())


def test_pearson_against_scipy_and_constants() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(100, generator=g)
    y = 0.5 * x + torch.randn(100, generator=g)
    assert pearson(x, y) == pytest.approx(pearsonr(x.numpy(), y.numpy())[0], abs=1e-6)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(torch.full((5,), 0.1), x[:5]) == 0.0
    assert pearson(x[:5], torch.full((5,), 0.1)) == 0.0
    assert pearson(x[:1], y[:1]) == 0.0
    assert math.isnan(pearson(torch.empty(0), torch.empty(0)))


def test_regression_metrics_against_sklearn() -> None:
    g = torch.Generator().manual_seed(11)
    t = torch.randn(80, generator=g) * 2
    p = t + torch.randn(80, generator=g)
    m = regression_metrics(p.unsqueeze(1), t)
    tn, pn = t.double().numpy(), p.double().numpy()
    assert m["mae"] == pytest.approx(mean_absolute_error(tn, pn))
    assert m["mse"] == pytest.approx(mean_squared_error(tn, pn))
    assert m["r2"] == pytest.approx(r2_score(tn, pn))
    assert m["corr"] == pytest.approx(pearsonr(pn, tn)[0])
    # constant target: sklearn's force_finite convention
    c = torch.full((4,), 2.0)
    assert regression_metrics(c, c)["r2"] == 1.0 == r2_score(c.numpy(), c.numpy())
    assert regression_metrics(p[:4], c)["r2"] == 0.0 == r2_score(c.numpy(), p[:4].numpy())
    assert all(math.isnan(v) for v in regression_metrics(torch.empty(0), torch.empty(0)).values())


# ----- task entry point ------------------------------------------------------------------


def test_compute_task_metrics_classification() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(120, 4, generator=g)
    t = torch.randint(0, 4, (120,), generator=g)
    m = compute_task_metrics("classification", logits, t)
    assert tuple(m) == task_metric_names("classification")
    _assert_close(m, _sk_classification(logits.argmax(1).numpy(), t.numpy()))
    # one binary logit [N, 1] (threshold 0) and integer class ids [N]
    one = torch.tensor([[0.3], [-1.0], [2.0], [-0.1]])
    tb = torch.tensor([1, 0, 0, 0])
    assert compute_task_metrics("classification", one, tb)["accuracy"] == 0.75
    ids = torch.tensor([1, 0, 1, 0])
    assert compute_task_metrics("classification", ids, tb)["accuracy"] == 0.75


def test_compute_task_metrics_regression() -> None:
    out = torch.tensor(MSA_PREDS).unsqueeze(1)
    t = torch.tensor(MSA_TARGET)
    m = compute_task_metrics("regression", out, t)
    assert tuple(sorted(m)) == tuple(sorted(task_metric_names("regression")))
    assert MSA_KEYS | {"mse", "r2"} == set(m)
    _assert_close(m, msa_metrics(out, t))
    _assert_close(m, {k: v for k, v in regression_metrics(out, t).items()})


def test_compute_task_metrics_multilabel() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(50, 6, generator=g)
    t = (torch.rand(50, 6, generator=g) < 0.4).float()
    m = compute_task_metrics("multilabel", logits, t)
    assert tuple(m) == task_metric_names("multilabel")
    p = (logits > 0).long().numpy()
    tn = t.long().numpy()
    assert m["f1_micro"] == pytest.approx(f1_score(tn, p, average="micro", zero_division=0))
    assert m["f1_macro"] == pytest.approx(f1_score(tn, p, average="macro", zero_division=0))
    assert m["f1_samples"] == pytest.approx(f1_score(tn, p, average="samples", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(tn, p))  # subset accuracy
    assert compute_task_metrics("multilabel", t * 2 - 1, t)["accuracy"] == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_compute_task_metrics_empty_and_errors(kind: str) -> None:
    m = compute_task_metrics(kind, torch.empty(0), torch.empty(0))
    assert tuple(m) == task_metric_names(kind) and all(math.isnan(v) for v in m.values())
    with pytest.raises(ValueError):
        compute_task_metrics(kind, torch.empty(0), torch.zeros(3))


def test_compute_task_metrics_unknown_kind() -> None:
    with pytest.raises(KeyError, match="classification"):
        compute_task_metrics("ranking", torch.zeros(2, 2), torch.zeros(2))


# ----- selection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("classification", "auto", ("accuracy", "max")),
        ("regression", "auto", ("mae", "min")),
        ("multilabel", "auto", ("f1_micro", "max")),
        ("classification", "macro_f1", ("macro_f1", "max")),
        ("regression", "mse", ("mse", "min")),
        ("regression", "corr", ("corr", "max")),
        ("regression", "acc2_non0", ("acc2_non0", "max")),
        ("regression", "audio/mae", ("audio/mae", "min")),
        ("multilabel", "accuracy", ("accuracy", "max")),
    ],
)
def test_selection_metric(kind: str, name: str, expected: tuple[str, str]) -> None:
    assert selection_metric(kind, name) == expected


def test_selection_metric_names_are_computed_metrics() -> None:
    for kind in KINDS:
        for name in task_metric_names(kind):
            sel, mode = selection_metric(kind, name)
            assert sel == name and mode == ("min" if name in ("mae", "mse") else "max")


def test_selection_metric_errors() -> None:
    with pytest.raises(KeyError, match="macro_f1"):
        selection_metric("classification", "acc7")
    with pytest.raises(KeyError, match="'mae'"):
        selection_metric("regression", "loss")
    with pytest.raises(KeyError, match="regression"):
        selection_metric("ranking")


# ----- seeds -----------------------------------------------------------------------------


def test_mean_std() -> None:
    vals = [0.71, 0.74, 0.69, 0.8]
    mean, std = mean_std(vals)
    assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


# ----- stateful --------------------------------------------------------------------------


def _batches(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = 97
    if kind == "classification":
        return torch.randn(n, 5, generator=g), torch.randint(0, 5, (n,), generator=g)
    if kind == "regression":
        t = torch.round(torch.rand(n, generator=g) * 18 - 9) / 3
        return (t + torch.randn(n, generator=g)).unsqueeze(1), t
    return torch.randn(n, 4, generator=g), (torch.rand(n, 4, generator=g) < 0.5).long()


@pytest.mark.parametrize("kind", KINDS)
def test_task_metrics_accumulates_like_functional(kind: str) -> None:
    outputs, target = _batches(kind, seed=KINDS.index(kind))
    metric = TaskMetrics(kind)
    for lo, hi in [(0, 30), (30, 31), (31, 64), (64, 97)]:
        metric.update(outputs[lo:hi].requires_grad_(False), target[lo:hi])
    assert metric.num_samples == 97
    _assert_close(metric.compute(), compute_task_metrics(kind, outputs, target), tol=0)
    metric.reset()
    assert metric.num_samples == 0
    assert all(math.isnan(v) for v in metric.compute().values())
    metric.update(outputs[:10], target[:10])
    _assert_close(metric.compute(), compute_task_metrics(kind, outputs[:10], target[:10]))


def test_metric_state_is_detached_on_cpu() -> None:
    logits = torch.randn(6, 3, requires_grad=True)
    metric = TaskMetrics("classification")
    metric.update(logits * 2, torch.tensor([0, 1, 2, 0, 1, 2]))
    outputs, _ = metric.state()
    assert not outputs.requires_grad and outputs.device.type == "cpu"
    assert "TaskMetrics('classification'" in repr(metric)


def test_generic_metric_wraps_any_dict_function() -> None:
    metric = Metric(msa_metrics)
    p, t = torch.tensor(MSA_PREDS), torch.tensor(MSA_TARGET)
    metric.update(p[:3], t[:3])
    metric.update(p[3:], t[3:])
    _assert_close(metric.compute(), msa_metrics(p, t), tol=0)
    with pytest.raises(ValueError, match="batch sizes"):
        metric.update(p[:3], t[:2])
    with pytest.raises(NotImplementedError):
        Metric().compute()
    with pytest.raises(KeyError):
        TaskMetrics("ranking")


# ----- docs ------------------------------------------------------------------------------


def test_docstring_examples_run() -> None:
    from equimodal.metrics import _classification, _regression, functional, stateful

    for module in (_classification, _regression, functional, stateful):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
    assert set(M.__all__) >= {"compute_task_metrics", "selection_metric", "mean_std"}
