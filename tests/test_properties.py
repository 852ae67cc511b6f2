"""Property-based tests (hypothesis): the generic loader and the metric functions.

The loader, given random shapes, dtypes, NaN placement, label sets and split assignments,
either accepts the input and gives back exactly those arrays, or raises ``DataError``;
never anything else. The metrics agree with scikit-learn / numpy on random label sets.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from equimodal.data.dataset import DataError
from equimodal.data.formats import load_generic
from equimodal.metrics import (
    accuracy,
    balanced_accuracy,
    macro_f1,
    pearson,
    regression_metrics,
    weighted_f1,
)

FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_]


@st.composite
def generic_case(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(3, 24))
    mods = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3,
                              unique=True)):
        shape = (n, draw(st.integers(0, 4))) if draw(st.booleans()) else (
            n, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if draw(st.integers(0, 7)) == 0:  # occasionally a wrong row count or rank
            shape = draw(st.sampled_from([(n,), (n + 1, 2), (n, 1, 1, 1)]))
        dtype = draw(st.sampled_from(_DTYPES))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        x = (rng.normal(size=shape) * 50).astype(dtype)
        if np.issubdtype(dtype, np.floating) and x.size and draw(st.integers(0, 3)) == 0:
            x.reshape(-1)[draw(st.integers(0, x.size - 1))] = np.nan
        mods[name] = np.asarray(x).astype(dtype)
    kind = draw(st.sampled_from(["int", "str", "float", "int", "str", "nan_int"]))
    pool = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    ids = draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))
    labels: np.ndarray
    if kind == "str":
        labels = np.array([f"c{i}" for i in ids])
    elif kind == "float":
        labels = np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n)),
                            dtype=np.float32)
    else:
        labels = np.asarray(ids, dtype=np.float64 if kind == "nan_int" else np.int64)
        if kind == "nan_int":
            labels[draw(st.integers(0, n - 1))] = np.nan
    split = np.resize(np.array(["train", "valid", "test", "train"]), n)
    split = np.asarray(draw(st.permutations(split.tolist())))
    if draw(st.integers(0, 4)) == 0:  # a dev alias, an unknown value or a missing entry
        split[draw(st.integers(0, n - 1))] = draw(st.sampled_from(["dev", "x", ""]))
    return {"mods": mods, "labels": labels, "split": split, "npz": draw(st.booleans())}


def _write(case: dict[str, Any], root: Path) -> Path:
    if case["npz"]:
        path = root.with_suffix(".npz")
        np.savez(path, y=case["labels"], split=case["split"],
                 **{f"x_{m}": x for m, x in case["mods"].items()})
        return path
    root.mkdir()
    for m, x in case["mods"].items():
        np.save(root / f"{m}.npy", x)
    np.save(root / "labels.npy", case["labels"])
    np.save(root / "split.npy", case["split"])
    return root


@FAST
@given(case=generic_case())
def test_generic_loader_accepts_and_round_trips_or_raises_data_error(
        case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = _write(case, tmp_path_factory.mktemp("g") / "d")
    try:
        data = load_generic(path)
    except DataError:
        return
    split = np.where(case["split"] == "dev", "valid", case["split"])
    y = case["labels"]
    for name in ("train", "valid", "test"):
        rows = split == name
        part = getattr(data, name)
        assert len(part) == int(rows.sum())
        for m, x in case["mods"].items():
            want = x[rows].astype(np.float32)
            assert np.isfinite(want).all()  # NaN is never accepted silently
            np.testing.assert_array_equal(part.inputs[m].numpy(), want)
        if data.info.kind == "classification":
            names = data.info.class_names
            got = part.target.numpy()
            want_y = (np.array([names.index(v) for v in y[rows]]) if names is not None
                      else y[rows].astype(np.int64))
            np.testing.assert_array_equal(got, want_y)
        else:
            np.testing.assert_array_equal(part.target.numpy(), y[rows].astype(np.float32))


labels_st = st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
    st.lists(st.integers(0, 4), min_size=n, max_size=n)))


@FAST
@given(pair=labels_st)
def test_classification_metrics_match_sklearn(pair: tuple[list[int], list[int]]) -> None:
    p, t = pair
    tp, tt = torch.tensor(p), torch.tensor(t)
    assert accuracy(tp, tt) == pytest.approx(accuracy_score(t, p))
    assert macro_f1(tp, tt) == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
    assert weighted_f1(tp, tt) == pytest.approx(
        f1_score(t, p, average="weighted", zero_division=0))
    with warnings.catch_warnings():  # sklearn warns about classes only predicted
        warnings.simplefilter("ignore")
        assert balanced_accuracy(tp, tt) == pytest.approx(balanced_accuracy_score(t, p))


floats_st = st.floats(-1e3, 1e3, allow_nan=False, width=32)
reg_st = st.integers(2, 50).flatmap(lambda n: st.tuples(
    st.lists(floats_st, min_size=n, max_size=n), st.lists(floats_st, min_size=n, max_size=n)))


@FAST
@given(pair=reg_st)
def test_regression_metrics_match_numpy(pair: tuple[list[float], list[float]]) -> None:
    p, t = (np.asarray(v, dtype=np.float64) for v in pair)
    m = regression_metrics(torch.tensor(p), torch.tensor(t))
    assert m["mae"] == pytest.approx(np.abs(p - t).mean(), rel=1e-9, abs=1e-9)
    assert m["mse"] == pytest.approx(((p - t) ** 2).mean(), rel=1e-9, abs=1e-9)
    if np.ptp(p) > 1e-3 and np.ptp(t) > 1e-3:
        assert pearson(torch.tensor(p), torch.tensor(t)) == pytest.approx(
            np.corrcoef(p, t)[0, 1], abs=1e-7)
    else:
        assert -1.0 <= pearson(torch.tensor(p), torch.tensor(t)) <= 1.0
