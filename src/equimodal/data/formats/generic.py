"""The generic format: one array per modality plus labels and a split assignment.

Three containers hold the same content:

* a folder with ``<modality>.npy`` (``[N, D]`` or ``[N, T, D]``), optional
  ``<modality>.lengths.npy`` / ``<modality>.present.npy``, ``labels.npy``, ``split.npy`` or
  ``split.csv``, optional ``ids.npy`` and ``meta.json``;
* one ``.npz`` with keys ``x_<modality>``, ``lengths_<modality>``, ``present_<modality>``,
  ``y``, ``split``, optional ``ids`` and ``meta`` (a JSON string) or a ``<stem>.meta.json``;
* one ``.parquet`` table (needs pyarrow) with list columns ``x_<modality>``, optional
  ``lengths_<modality>``, and columns ``y`` and ``split``.

``meta.json`` may give ``task``, ``num_classes``, ``class_names``, ``modalities`` (order and
selection), ``name`` and ``description``; without it the task is inferred from the labels:
strings or integers -> classification, floats -> regression, a 0/1 matrix -> multilabel.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from equimodal.data.dataset import DataError
from equimodal.data.formats.common import (
    SPLITS,
    TASKS,
    LoadedData,
    SplitArrays,
    assemble,
    atomic_save_npy,
    atomic_write_json,
    normalize_split_values,
    random_split,
)
from equimodal.types import TaskKind

log = logging.getLogger(__name__)

_RESERVED = {"labels", "split", "ids"}


@dataclass
class _Raw:
    """Everything read from one generic container, all rows together."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray | None
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    split_name: str = "split"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and data offset from a ``.npy`` header, without reading the data."""
    from numpy.lib import format as npformat

    with path.open("rb") as f:
        try:
            version = npformat.read_magic(f)
        except ValueError:
            raise DataError(f"{path}: not a .npy file (no NumPy header: empty, truncated "
                            "or another format)") from None
        try:
            if version == (1, 0):
                shape, _, dtype = npformat.read_array_header_1_0(f)
            else:
                shape, _, dtype = npformat.read_array_header_2_0(f)
        except (ValueError, EOFError, SyntaxError) as err:
            raise DataError(f"{path}: damaged .npy header ({err})") from None
        return shape, dtype, f.tell()


def _npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` without pickles; every failure is a one-line :class:`DataError`."""
    try:
        shape, dtype, offset = _npy_header(path)
        if dtype.hasobject:
            raise DataError(f"{path}: holds an object array, which is not supported (it needs "
                            "pickle); save strings with dtype=str and numbers as numeric arrays")
        need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = path.stat().st_size
        if size < need:
            raise DataError(f"{path}: truncated: the header announces shape {shape} "
                            f"{dtype} ({need} bytes) but the file has {size} bytes; "
                            "write it again")
        arr: np.ndarray = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:  # PermissionError, IsADirectoryError, I/O errors
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except DataError:
        raise
    except (ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    return arr


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object")
    return meta


def _read_split_csv(path: Path, n: int) -> np.ndarray:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from err
    if "split" not in df.columns:
        raise DataError(f"{path}: missing column 'split' (columns: {list(df.columns)})")
    values = normalize_split_values(df["split"].to_numpy(), f"{path}: field 'split'")
    if "index" not in df.columns:
        if len(df) != n:
            raise DataError(f"{path}: field 'split' has {len(df)} rows but the data has {n}; "
                            "add an 'index' column or one row per sample")
        return values
    try:
        idx = df["index"].astype(int).to_numpy()
    except ValueError as err:
        raise DataError(f"{path}: field 'index' must hold integers") from err
    if ((idx < 0) | (idx >= n)).any() or len(np.unique(idx)) != len(idx):
        raise DataError(f"{path}: field 'index' must hold distinct row numbers in [0, {n - 1}]")
    out = np.full(n, "", dtype="<U5")
    out[idx] = values
    return out


def _read_folder(path: Path) -> _Raw:
    meta_path = path / "meta.json"
    meta = _read_meta(meta_path) if meta_path.is_file() else {}
    files = sorted(p for p in path.glob("*.npy") if not p.name.startswith("."))
    found = [p.stem for p in files if "." not in p.stem and p.stem not in _RESERVED]
    wanted = meta.get("modalities", found)
    if not isinstance(wanted, list) or not wanted:
        raise DataError(f"{meta_path}: field 'modalities' must be a non-empty list")
    for m in wanted:
        if not (path / f"{m}.npy").exists():
            raise DataError(f"{path / f'{m}.npy'}: file not found (modality {m!r})")
    label_path = path / "labels.npy"
    if not label_path.exists():
        raise DataError(f"{label_path}: file not found (field 'labels')")
    raw = _Raw({m: _npy(path / f"{m}.npy") for m in wanted}, _npy(label_path), None, meta=meta)
    raw.names = {m: str(path / f"{m}.npy") for m in wanted}
    raw.names["target"] = str(label_path)
    for m in wanted:
        for kind, store in (("lengths", raw.lengths), ("present", raw.present)):
            p = path / f"{m}.{kind}.npy"
            if p.is_file():
                store[m] = _npy(p)
                raw.names[f"{kind}:{m}"] = str(p)
    if (path / "ids.npy").is_file():
        raw.ids = _npy(path / "ids.npy")
    if (path / "split.npy").is_file():
        raw.split_name = str(path / "split.npy")
        raw.split = normalize_split_values(_npy(path / "split.npy"), raw.split_name)
    elif (path / "split.csv").is_file():
        raw.split_name = str(path / "split.csv")
        raw.split = _read_split_csv(path / "split.csv", len(raw.labels))
    else:
        raw.split_name = str(path / "split.npy")
    return raw


def _read_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except OSError as err:  # PermissionError, I/O errors
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{path}: not a valid .npz (zip) file, truncated or corrupt "
                        f"({err})") from None
    except ValueError as err:
        hint = ("object arrays are not supported (they need pickle); save strings with "
                "dtype=str" if "pickle" in str(err).lower() else str(err))
        raise DataError(f"{path}: cannot read npz ({hint})") from None
    meta: dict[str, Any] = {}
    if "meta" in data:
        try:
            meta = json.loads(str(data.pop("meta")))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: key 'meta' is not valid JSON") from err
    side = path.with_name(path.stem + ".meta.json")
    if side.is_file():
        meta = {**meta, **_read_meta(side)}
    found = [k[2:] for k in data if k.startswith("x_")]
    wanted = meta.get("modalities", found)
    for m in wanted:
        if f"x_{m}" not in data:
            raise DataError(f"{path}: missing key 'x_{m}' (modality {m!r}; keys {sorted(data)})")
    if "y" not in data:
        raise DataError(f"{path}: missing key 'y' (labels; keys {sorted(data)})")
    raw = _Raw({m: data[f"x_{m}"] for m in wanted}, data["y"], None, meta=meta)
    raw.names = {m: f"{path}: key 'x_{m}'" for m in wanted}
    raw.names["target"] = f"{path}: key 'y'"
    for m in wanted:
        for kind, store in (("lengths", raw.lengths), ("present", raw.present)):
            if f"{kind}_{m}" in data:
                store[m] = data[f"{kind}_{m}"]
                raw.names[f"{kind}:{m}"] = f"{path}: key '{kind}_{m}'"
    raw.ids = data.get("ids")
    raw.split_name = f"{path}: key 'split'"
    if "split" in data:
        raw.split = normalize_split_values(data["split"], raw.split_name)
    return raw


def _stack_cells(col: Any, where: str) -> np.ndarray:
    try:
        return np.stack([np.asarray(np.asarray(c).tolist(), dtype=np.float32) for c in col])
    except (ValueError, TypeError) as err:
        raise DataError(f"{where}: cells must be equal-shape numeric lists ({err})") from err


def _read_parquet(path: Path) -> _Raw:
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except ImportError as err:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from err
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read parquet ({err})") from err
    side = path.with_name(path.stem + ".meta.json")
    meta = _read_meta(side) if side.is_file() else {}
    wanted = meta.get("modalities", [c[2:] for c in df.columns if c.startswith("x_")])
    for col in [f"x_{m}" for m in wanted] + ["y"]:
        if col not in df.columns:
            raise DataError(f"{path}: missing column {col!r} (columns {list(df.columns)})")
    y = df["y"].to_numpy()
    if y.dtype == object and len(y) and not isinstance(y[0], str):
        y = _stack_cells(y, f"{path}: column 'y'")
    raw = _Raw({m: _stack_cells(df[f"x_{m}"], f"{path}: column 'x_{m}'") for m in wanted},
               y, None, meta=meta)
    raw.names = {m: f"{path}: column 'x_{m}'" for m in wanted}
    raw.names["target"] = f"{path}: column 'y'"
    for m in wanted:
        if f"lengths_{m}" in df.columns:
            raw.lengths[m] = df[f"lengths_{m}"].to_numpy()
            raw.names[f"lengths:{m}"] = f"{path}: column 'lengths_{m}'"
    if "ids" in df.columns:
        raw.ids = df["ids"].astype(str).to_numpy()
    raw.split_name = f"{path}: column 'split'"
    if "split" in df.columns:
        raw.split = normalize_split_values(df["split"].to_numpy(), raw.split_name)
    return raw


def _labels_to_target(
    raw: _Raw,
    task: TaskKind | None,
    num_classes: int | None,
    class_names: Sequence[str] | None,
) -> tuple[TaskKind, int, np.ndarray, tuple[str, ...] | None, np.ndarray, str]:
    """Resolve task, outputs, numeric target, class names, unknown-label rows and reason."""
    y = np.asarray(raw.labels)
    meta = raw.meta
    tname = raw.names.get("target", "labels")
    names = class_names if class_names is not None else meta.get("class_names")
    kind = task or meta.get("task")
    if y.ndim == 2 and y.shape[1] == 1 and kind != "multilabel":
        y = y[:, 0]
    if kind is None:
        if y.ndim == 2:
            kind = "multilabel"
        elif y.dtype.kind in "USOiub" or names is not None or (
                num_classes or meta.get("num_classes")) is not None:
            kind = "classification"
        else:
            kind = "regression"
    if kind not in TASKS:
        raise DataError(f"{tname}: unknown task {kind!r}; use one of {list(TASKS)}")
    kind = cast(TaskKind, kind)
    bad = np.zeros(len(y), dtype=bool)
    if kind == "regression":
        if y.dtype.kind not in "fiub":
            raise DataError(f"{tname}: regression labels must be numeric, got dtype {y.dtype}")
        return kind, 1, y.astype(np.float32), None, bad, ""
    if kind == "multilabel":
        if y.ndim != 2:
            raise DataError(f"{tname}: multilabel labels must be [N, C], got shape {y.shape}")
        k = y.shape[1]
        if names is not None and len(names) != k:
            raise DataError(f"{tname}: {len(names)} class_names for {k} label columns")
        return kind, k, y.astype(np.float32), tuple(names) if names else None, bad, ""
    if y.ndim != 1:
        raise DataError(f"{tname}: classification labels must be [N], got shape {y.shape}")
    if y.dtype.kind in "USO":
        strs = y.astype(str)
        vocab = list(names) if names is not None else sorted(set(strs.tolist()))
        lookup = {c: i for i, c in enumerate(vocab)}
        target = np.array([lookup.get(s, -1) for s in strs.tolist()], dtype=np.int64)
        bad = target < 0
        unknown = sorted(set(strs[bad].tolist()))[:5]
        reason = f"unknown label(s) {unknown} (classes {vocab})" if bad.any() else ""
        k = num_classes or meta.get("num_classes") or len(vocab)
        return kind, int(k), target, tuple(vocab), bad, reason
    if y.dtype.kind not in "fiub":
        raise DataError(f"{tname}: classification labels must be numbers or strings, "
                        f"got dtype {y.dtype}")
    reason = ""
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(y) & (y == np.round(y)))
        if bad.any():
            reason = "label is not an integer class id (for scores pass task='regression')"
    target = np.where(bad, -1, np.nan_to_num(y)).astype(np.int64)
    k = num_classes or meta.get("num_classes") or (len(names) if names else None)
    if k is None:
        k = int(target.max()) + 1 if len(target) else 1
    if names is not None and len(names) != int(k):
        raise DataError(f"{tname}: {len(names)} class_names for {k} classes")
    return kind, int(k), target, tuple(names) if names else None, bad, reason


def load_generic(
    path: str | Path,
    task: TaskKind | None = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    modalities: Sequence[str] | str | None = None,
    skip_bad: bool = False,
    split_seed: int | None = None,
    name: str | None = None,
) -> LoadedData:
    """Load a dataset in the generic format (folder, ``.npz`` or ``.parquet``).

    Args:
        path: The folder or file.
        task: ``classification`` / ``regression`` / ``multilabel``; default from
            ``meta.json`` or inferred from the labels.
        num_classes: Number of classes (default: meta, class names, or max label + 1).
        class_names: Class names; string labels are mapped through them (unknown -> error).
        modalities: Keep only these modalities (list or comma-separated), in this order.
        skip_bad: Exclude bad rows (logged, counted in ``data.excluded``) instead of raising.
        split_seed: Without a split file, draw a seeded 80/10/10 split with this seed.
        name: Dataset name (default: meta ``name`` or the file / folder name).

    Returns:
        The dataset with ``excluded`` counts per split and reason.

    Raises:
        DataError: naming the file and field on any inconsistency.
    """
    p = Path(path)
    if p.is_dir():
        raw = _read_folder(p)
    elif not p.exists():
        raise DataError(f"{p}: no such file or folder")
    elif p.suffix == ".npz":
        raw = _read_npz(p)
    elif p.suffix == ".parquet":
        raw = _read_parquet(p)
    else:
        raise DataError(f"{p}: unsupported file type (use a folder, .npz or .parquet)")
    if modalities is not None:
        keep = [m.strip() for m in modalities.split(",")] if isinstance(modalities, str) else list(
            modalities)
        for m in keep:
            if m not in raw.inputs:
                raise DataError(f"{p}: unknown modality {m!r}; available {list(raw.inputs)}")
        raw.inputs = {m: raw.inputs[m] for m in keep}
    kind, k, target, names, unknown, why = _labels_to_target(raw, task, num_classes, class_names)
    n = len(target)
    for m, x in raw.inputs.items():
        if x.ndim == 0 or x.shape[0] != n:
            raise DataError(f"{raw.names.get(m, m)}: modality {m!r} has "
                            f"{x.shape[0] if x.ndim else 0} rows but the labels have {n}")
    excluded: dict[str, dict[str, int]] = {}
    split = raw.split
    if split is None:
        if split_seed is None:
            raise DataError(f"{raw.split_name}: no split assignment found (field 'split'); "
                            "add one or pass split_seed")
        split = random_split(n, split_seed)
    if len(split) != n:
        raise DataError(f"{raw.split_name}: field 'split' has {len(split)} rows, labels {n}")
    missing = split == ""
    if missing.any():
        msg = (f"{raw.split_name}: field 'split': no split entry for {int(missing.sum())} "
               f"row(s), first rows {np.nonzero(missing)[0][:5].tolist()}")
        if not skip_bad:
            raise DataError(msg + " (pass skip_bad=True to exclude them)")
        log.warning("%s; excluded", msg)
        excluded["unassigned"] = {"no split entry": int(missing.sum())}
    splits = {}
    for s in SPLITS:
        rows = split == s
        if not rows.any():
            raise DataError(f"{raw.split_name}: field 'split' assigns no rows to {s!r}")
        sa = SplitArrays(
            {m: x[rows] for m, x in raw.inputs.items()}, target[rows],
            {m: v[rows] for m, v in raw.lengths.items() if m in raw.inputs},
            {m: v[rows] for m, v in raw.present.items() if m in raw.inputs},
            None if raw.ids is None else np.asarray(raw.ids)[rows],
        )
        if why:
            sa.bad.append((raw.names["target"], why, unknown[rows]))
        splits[s] = sa
    title = name or raw.meta.get("name") or (p.stem if p.is_file() else p.name)
    desc = raw.meta.get("description", f"Generic-format data from {p.name}.")
    return assemble(title, kind, k, splits, str(p), skip_bad, raw.names, names, desc, excluded)


def write_generic(
    out: str | Path,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    split: np.ndarray,
    lengths: Mapping[str, np.ndarray] | None = None,
    present: Mapping[str, np.ndarray] | None = None,
    ids: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a generic-format folder (each file atomically, ``meta.json`` last).

    Args:
        out: Target folder (created).
        inputs: Modality -> ``[N, D]`` or ``[N, T, D]`` array.
        labels: ``[N]`` or ``[N, C]`` labels.
        split: ``[N]`` of ``train`` / ``valid`` / ``test``.
        lengths: Optional sequence lengths per modality.
        present: Optional presence masks per modality.
        ids: Optional ``[N]`` sample ids.
        meta: Content of ``meta.json`` (``modalities`` is filled in when absent).

    Returns:
        The folder.
    """
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    for m, x in inputs.items():
        if "." in m or m in _RESERVED:
            raise ValueError(f"modality name {m!r} is reserved or contains a dot")
        atomic_save_npy(o / f"{m}.npy", np.ascontiguousarray(x, dtype=np.float32))
    for m, v in (lengths or {}).items():
        atomic_save_npy(o / f"{m}.lengths.npy", np.asarray(v, dtype=np.int64))
    for m, v in (present or {}).items():
        atomic_save_npy(o / f"{m}.present.npy", np.asarray(v, dtype=bool))
    atomic_save_npy(o / "labels.npy", np.asarray(labels))
    atomic_save_npy(o / "split.npy", np.asarray(split).astype(str))
    if ids is not None:
        atomic_save_npy(o / "ids.npy", np.asarray(ids).astype(str))
    full = {"modalities": list(inputs), **dict(meta or {})}
    atomic_write_json(o / "meta.json", full)
    return o

