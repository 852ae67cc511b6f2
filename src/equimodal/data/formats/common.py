"""Shared pieces of the file-format loaders: row validation, exclusion reports, splits, I/O.

Every loader turns its files into plain numpy arrays per split (:class:`SplitArrays`) and
hands them to :func:`assemble`, which finds bad rows (non-finite features, unknown labels,
lengths out of range), either raises a :class:`~equimodal.data.dataset.DataError` naming the
file and field or, with ``skip_bad=True``, excludes them, logs why and records the counts,
then builds the dataset with :func:`~equimodal.data.dataset.make_split` /
:func:`~equimodal.data.dataset.build_data` so validation is the same for every source.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equimodal.data.dataset import DataError, MultimodalData, build_data, make_split
from equimodal.types import TaskKind

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TASKS = ("classification", "regression", "multilabel")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "0": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid", "1": "valid",
    "test": "test", "testing": "test", "2": "test",
}


@dataclass
class LoadedData(MultimodalData):
    """:class:`MultimodalData` plus a record of the samples a loader excluded.

    Attributes:
        excluded: Split (or ``"unassigned"``) -> reason -> number of samples excluded.
            Empty when nothing was excluded.
    """

    excluded: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_excluded(self) -> int:
        """Total number of excluded samples over all splits and reasons."""
        return sum(sum(r.values()) for r in self.excluded.values())


@dataclass
class SplitArrays:
    """Raw arrays of one split before validation.

    Attributes:
        inputs: Modality -> ``[N, D]`` or ``[N, T, D]`` array.
        target: ``[N]`` labels / scores or ``[N, C]`` multilabel matrix.
        lengths: Sequence modality -> ``[N]`` valid lengths (optional per modality).
        present: Modality -> ``[N]`` bool presence mask (optional per modality).
        ids: Optional ``[N]`` sample ids, quoted in error messages.
        bad: Extra per-row problems found by the loader: ``(field, reason, mask)``.
    """

    inputs: dict[str, np.ndarray]
    target: np.ndarray
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None
    bad: list[tuple[str, str, np.ndarray]] = field(default_factory=list)

    def take(self, keep: np.ndarray) -> SplitArrays:
        """Rows where ``keep`` is true."""
        return SplitArrays(
            {k: v[keep] for k, v in self.inputs.items()},
            self.target[keep],
            {k: v[keep] for k, v in self.lengths.items()},
            {k: v[keep] for k, v in self.present.items()},
            None if self.ids is None else self.ids[keep],
            [],
        )


def normalize_split_values(values: np.ndarray, where: str) -> np.ndarray:
    """Map split labels (``train/valid/val/dev/test`` or ``0/1/2``) to canonical names.

    Missing entries (empty string, ``nan``, ``None``) become ``""`` so the caller can report
    them; any other unknown value raises.

    Raises:
        DataError: on values that are not a split name, naming ``where``.
    """
    flat = np.asarray(values).reshape(-1)
    out = np.empty(flat.shape[0], dtype=object)
    unknown: set[str] = set()
    for i, v in enumerate(flat.tolist()):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        s = "" if v is None else str(v).strip().lower()
        if s in ("", "nan", "none"):
            out[i] = ""
        elif s in _SPLIT_ALIASES:
            out[i] = _SPLIT_ALIASES[s]
        else:
            unknown.add(s)
    if unknown:
        raise DataError(
            f"{where}: unknown split value(s) {sorted(unknown)[:5]}; use train, valid or test "
            "(or 0, 1, 2)"
        )
    return out.astype(str)


def random_split(
    n: int,
    seed: int,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """A seeded train/valid/test assignment of ``n`` rows.

    Args:
        n: Number of rows.
        seed: Permutation seed (same seed, same split).
        valid_frac: Fraction of rows (or groups) for validation.
        test_frac: Fraction of rows (or groups) for test.
        groups: Optional group per row (e.g. speaker): whole groups go to one split, so a
            group never appears in two splits.

    Returns:
        ``[n]`` array of ``train`` / ``valid`` / ``test``.

    Raises:
        DataError: when there are fewer than three rows (or groups).
    """
    keys = np.asarray(groups if groups is not None else np.arange(n)).astype(str)
    units = np.unique(keys)
    if len(units) < 3:
        raise DataError(f"need at least 3 {'groups' if groups is not None else 'rows'} to split")
    rng = np.random.default_rng(seed)
    order = units[rng.permutation(len(units))]
    n_test = min(max(1, round(len(units) * test_frac)), len(units) - 2)
    n_valid = min(max(1, round(len(units) * valid_frac)), len(units) - n_test - 1)
    where = {u: "test" for u in order[:n_test]}
    where.update({u: "valid" for u in order[n_test : n_test + n_valid]})
    return np.array([where.get(k, "train") for k in keys.tolist()], dtype="<U5")


def _rows_text(mask: np.ndarray, ids: np.ndarray | None) -> str:
    rows = np.nonzero(mask)[0][:5]
    text = f"rows {rows.tolist()}"
    if ids is not None:
        text += f" (ids {[str(i) for i in ids[rows].tolist()]})"
    return text


def _check_counts(sa: SplitArrays, names: Mapping[str, str], where: str) -> int:
    def rows(v: np.ndarray) -> int:
        return int(np.shape(v)[0]) if np.ndim(v) else -1

    counts = {names.get(k, k): rows(v) for k, v in sa.inputs.items()}
    counts[names.get("target", "target")] = rows(sa.target)
    for k, v in sa.lengths.items():
        counts[names.get(f"lengths:{k}", f"lengths[{k}]")] = rows(v)
    for k, v in sa.present.items():
        counts[names.get(f"present:{k}", f"present[{k}]")] = rows(v)
    if len(set(counts.values())) != 1:
        raise DataError(f"{where}: sample counts differ across fields: {counts}")
    return next(iter(counts.values()))


def _row_problems(
    sa: SplitArrays, task: TaskKind, num_outputs: int, names: Mapping[str, str], n: int
) -> list[tuple[str, str, np.ndarray]]:
    """Per-row problems as ``(field display name, reason, mask)``, loader's own first."""
    out = list(sa.bad)
    for m, x in sa.inputs.items():
        x = np.asarray(x)
        if x.ndim not in (2, 3):
            raise DataError(
                f"{names.get(m, m)}: modality {m!r} must be [N, D] or [N, T, D], "
                f"got shape {x.shape}"
            )
        pres = sa.present.get(m)
        finite = np.isfinite(x.reshape(n, -1)).all(axis=1) if x.size else np.ones(n, bool)
        if pres is not None:
            finite |= ~pres.astype(bool)  # absent rows are zero-filled below
        out.append((names.get(m, m), f"NaN/inf values in modality {m!r}", ~finite))
        if m in sa.lengths:
            lt = np.asarray(sa.lengths[m])
            if lt.shape != (n,):
                raise DataError(
                    f"{names.get(f'lengths:{m}', m)}: lengths of {m!r} must have shape ({n},), "
                    f"got {lt.shape}"
                )
            if x.ndim != 3:
                raise DataError(
                    f"{names.get(f'lengths:{m}', m)}: lengths given for vector modality {m!r}"
                )
            if not np.issubdtype(lt.dtype, np.number) or not np.isfinite(lt).all():
                raise DataError(f"{names.get(f'lengths:{m}', m)}: lengths of {m!r} not numeric")
            bad = (lt < 0) | (lt > x.shape[1]) | (lt != np.round(lt))
            out.append((names.get(f"lengths:{m}", m), f"length not in [0, {x.shape[1]}]", bad))
    y = np.asarray(sa.target)
    tname = names.get("target", "target")
    if task == "classification":
        if y.ndim != 1:
            raise DataError(f"{tname}: classification labels must be [N], got shape {y.shape}")
        yf = y.astype(np.float64)
        bad = ~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0) | (yf >= num_outputs)
        out.append((tname, f"label not a class id in [0, {num_outputs - 1}]", bad))
    elif task == "regression":
        if y.ndim != 1:
            raise DataError(f"{tname}: regression targets must be [N], got shape {y.shape}")
        out.append((tname, "NaN/inf target", ~np.isfinite(y.astype(np.float64))))
    else:
        if y.ndim != 2 or y.shape[1] != num_outputs:
            raise DataError(
                f"{tname}: multilabel targets must be [N, {num_outputs}], got {y.shape}"
            )
        out.append((tname, "multilabel entries not 0/1", ~((y == 0) | (y == 1)).all(axis=1)))
    return out


def assemble(
    name: str,
    task: TaskKind,
    num_outputs: int,
    splits: Mapping[str, SplitArrays],
    source: str,
    skip_bad: bool = False,
    names: Mapping[str, str] | None = None,
    class_names: Sequence[str] | None = None,
    description: str = "",
    excluded: Mapping[str, Mapping[str, int]] | None = None,
) -> LoadedData:
    """Validate raw split arrays, exclude or reject bad rows and build the dataset.

    Args:
        name: Dataset name for :class:`~equimodal.types.TaskInfo`.
        task: Task kind.
        num_outputs: Classes, labels, or 1 for regression.
        splits: ``train`` / ``valid`` / ``test`` -> raw arrays.
        source: The file or folder read, used in messages.
        skip_bad: Exclude bad rows (logged and counted) instead of raising.
        names: Field -> display name in messages, e.g. ``{"audio": "x/audio.npy"}``;
            keys are modality names, ``target``, ``lengths:<m>`` and ``present:<m>``.
        class_names: Optional class / label names.
        description: Dataset description (an exclusion summary is appended).
        excluded: Exclusions already made by the loader, merged into the report.

    Raises:
        DataError: on a missing split, mismatched counts, wrong shapes or (without
            ``skip_bad``) bad rows; the message names the file and field.
    """
    names = dict(names or {})
    report: dict[str, dict[str, int]] = {k: dict(v) for k, v in (excluded or {}).items()}
    built = {}
    for split in SPLITS:
        if split not in splits:
            raise DataError(f"{source}: missing split {split!r}")
        sa = splits[split]
        where = f"{source} [{split}]"
        n = _check_counts(sa, names, where)
        if n == 0:
            raise DataError(f"{where}: split {split!r} has no samples")
        flagged = np.zeros(n, dtype=bool)
        errors = []
        for fld, reason, mask in _row_problems(sa, task, num_outputs, names, n):
            new = np.asarray(mask, dtype=bool) & ~flagged
            if not new.any():
                continue
            if not skip_bad:
                errors.append(f"{fld} [{split}]: {reason} in {int(new.sum())} sample(s), "
                              f"{_rows_text(new, sa.ids)}")
            flagged |= new
            report.setdefault(split, {})
            key = f"{Path(fld).name}: {reason}"  # file name + field, without the folders
            report[split][key] = report[split].get(key, 0) + int(new.sum())
        if errors:
            raise DataError("; ".join(errors) + " (fix the data or pass skip_bad=True to "
                            "exclude such samples)")
        if flagged.any():
            log.warning("%s: excluded %d of %d sample(s): %s", where, int(flagged.sum()), n,
                        report[split])
            sa = sa.take(~flagged)
            if len(sa.target) == 0:
                raise DataError(f"{where}: every sample was excluded")
        inputs = {}
        for m, x in sa.inputs.items():
            pres = sa.present.get(m)
            if pres is not None and not pres.all():
                # Absent rows may hold NaN placeholders; they are zero-filled anyway.
                shape = (-1,) + (1,) * (x.ndim - 1)
                x = np.where(pres.astype(bool).reshape(shape), x, 0)
            inputs[m] = np.ascontiguousarray(x, dtype=np.float32)
        target = sa.target
        if task == "classification":
            target = target.astype(np.int64)
        built[split] = make_split(
            inputs, target, task, num_outputs,
            {k: v.astype(np.int64) for k, v in sa.lengths.items()},
            {k: v.astype(bool) for k, v in sa.present.items()}, source=source, split=split,
        )
    if report:
        summary = "; ".join(f"{s}: {r}" for s, r in report.items())
        description = f"{description} Excluded samples: {summary}.".strip()
        # One total line per load, so a run's log says how many samples it lost and why.
        total = sum(sum(r.values()) for r in report.values())
        log.log(logging.WARNING if skip_bad else logging.INFO,
                "%s: %d sample(s) excluded in total: %s", source, total, summary)
    base = build_data(name, task, num_outputs, built, description,
                      tuple(class_names) if class_names is not None else None)
    return LoadedData(base.info, base.train, base.valid, base.test, base.description, report)


# What a pickle of nested dicts / lists of numpy arrays, strings and numbers needs, under the
# module names numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) write. Nothing here runs
# code chosen by the file: array / dtype / scalar constructors and plain containers only.
_NUMPY_CORE = ("numpy.core", "numpy._core")
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(f"{c}.multiarray", n) for c in _NUMPY_CORE for n in ("_reconstruct", "scalar")]
    + [(f"{c}.numeric", "_frombuffer") for c in _NUMPY_CORE]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
       ("collections", "OrderedDict")]
    + [(b, n) for b in ("builtins", "__builtin__") for n in (
        "set", "frozenset", "complex", "bytearray", "bytes", "str", "int", "float", "bool",
        "list", "dict", "tuple", "slice")]
)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`SAFE_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dicts, lists, strings and numbers.

    :meth:`find_class` is the only way a pickle reaches code (``os.system``, ``eval``, any
    class with a ``__reduce__``); it returns only :data:`SAFE_GLOBALS` and raises
    :class:`RefusedGlobal` for anything else, before the global is imported or called.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class doc
        if (module, name) not in SAFE_GLOBALS:
            raise RefusedGlobal(module, name)
        return super().find_class(module, name)


def safe_load_pickle(f: Any, where: str | Path, encoding: str = "ASCII") -> Any:
    """:class:`SafeUnpickler` on an open binary file.

    Raises:
        DataError: naming ``where`` and the refused global (``module.name``).
    """
    try:
        return SafeUnpickler(f, encoding=encoding).load()
    except RefusedGlobal as err:
        raise DataError(
            f"{where}: refused to unpickle global {err.qualname!r}: data pickles may hold only "
            "numpy arrays, lists, dicts, strings and numbers (see 'Trust model' in "
            "docs/data-formats.md)"
        ) from None


def read_pickle(path: str | Path) -> Any:
    """Load a data pickle with :class:`SafeUnpickler` (``latin1`` retry for Python 2 files).

    Raises:
        DataError: when the file is missing, unreadable, not a pickle, or asks for a global
            outside the allow-list (the message names the file and the global).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
    try:
        try:
            with p.open("rb") as f:
                return safe_load_pickle(f, p)
        except UnicodeDecodeError:
            with p.open("rb") as f:
                return safe_load_pickle(f, p, encoding="latin1")
    except OSError as err:
        raise DataError(f"{p}: cannot read ({err.strerror or err})") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError,
            TypeError, IndexError, KeyError, MemoryError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{p}: not a readable pickle, truncated or corrupt "
                        f"({type(err).__name__}: {err})") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
