"""MMSA feature pickles for CMU-MOSI, CMU-MOSEI and CH-SIMS.

Layout (as written by the MMSA toolkit, e.g. ``aligned_50.pkl`` / ``unaligned_50.pkl`` /
``unaligned_39.pkl``): a pickled dict with keys ``train``, ``valid``, ``test``; each a dict
with ``text`` ``[N, T_t, D_t]`` (GloVe or BERT features), ``audio`` ``[N, T_a, D_a]``,
``vision`` ``[N, T_v, D_v]``, ``regression_labels`` ``[N]`` (CH-SIMS also
``regression_labels_T/A/V``), and optionally ``audio_lengths``, ``vision_lengths``, ``id``,
``raw_text``, ``classification_labels`` and ``text_bert`` (``[N, 3, L]`` BERT token ids,
attention mask and segment ids). Aligned files share one ``T``; unaligned ones do not.

Scores lie in [-3, 3] (MOSI / MOSEI) or [-1, 1] (SIMS). Classification targets follow
the MMSA evaluation: MOSI/MOSEI ``acc2`` (``has0``: score >= 0 vs < 0; ``non0``: drop zero
scores, > 0 vs < 0), ``acc3/5/7`` = ``round(clip(score, -c, c)) + c`` with c = 1, 2, 3;
SIMS bins with edges -0.1 / 0.1 (3 classes) and -0.7 / -0.1 / 0.1 / 0.7 (5 classes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from equimodal.data.dataset import DataError
from equimodal.data.formats.common import SPLITS, LoadedData, SplitArrays, assemble, read_pickle
from equimodal.paths import cache_dir, shared_data_dir
from equimodal.types import TaskKind

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "vision")
_SCALE = {"mosi": 3.0, "mosei": 3.0, "sims": 1.0}
_SPLIT_KEYS = {"train": ("train",), "valid": ("valid", "dev", "val"), "test": ("test",)}
_CANDIDATES = ("aligned_50.pkl", "unaligned_50.pkl", "unaligned_39.pkl", "unaligned.pkl")


def split_dicts(obj: Any, path: Path) -> dict[str, Mapping[str, Any]]:
    """The ``train`` / ``valid`` / ``test`` dicts of an MSA pickle (``dev`` accepted).

    Raises:
        DataError: when the pickle is not such a dict or a split entry is missing.
    """
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: expected a dict with keys 'train', 'valid', 'test', "
                        f"got {type(obj).__name__}")
    out = {}
    for split, keys in _SPLIT_KEYS.items():
        key = next((k for k in keys if k in obj), None)
        if key is None:
            raise DataError(f"{path}: missing split entry {split!r} (keys {sorted(map(str, obj))})")
        if not isinstance(obj[key], Mapping):
            raise DataError(f"{path}: split entry {key!r} must be a dict of arrays")
        out[split] = obj[key]
    return out


def get_field(d: Mapping[str, Any], key: str, path: Path, split: str) -> np.ndarray:
    """Array ``d[key]``.

    Raises:
        DataError: naming file, split and field when it is missing or not an array.
    """
    if key not in d:
        raise DataError(f"{path} [{split}]: missing field {key!r} (fields {sorted(map(str, d))})")
    try:
        return np.asarray(d[key])
    except (ValueError, TypeError) as err:
        raise DataError(f"{path} [{split}]: field {key!r} is not an array ({err})") from err


def features(d: Mapping[str, Any], key: str, path: Path, split: str, zero_inf: bool) -> np.ndarray:
    """A ``[N, T, D]`` feature field as float32; ``+-inf -> 0`` when ``zero_inf`` (logged)."""
    x = get_field(d, key, path, split)
    if x.ndim != 3 or x.dtype.kind not in "fiub":
        raise DataError(f"{path} [{split}]: field {key!r} must be a numeric [N, T, D] array, "
                        f"got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32)
    if zero_inf:
        inf = np.isinf(x)
        if inf.any():
            # COVAREP audio features hold -inf (log of 0); MMSA and MulT zero them too.
            log.info("%s [%s]: set %d inf value(s) of field %r to 0 (zero_inf=True)",
                     path, split, int(inf.sum()), key)
            x[inf] = 0.0
    return x


def sample_ids(d: Mapping[str, Any]) -> np.ndarray | None:
    """The ``id`` field as strings (quoted in error messages), or ``None``."""
    if "id" not in d:
        return None
    try:
        return np.asarray([str(i) for i in d["id"]])
    except TypeError:
        return None


def classes_from_scores(
    y: np.ndarray, name: str, num_classes: int, binary: str = "has0"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Classes from sentiment scores following the MMSA evaluation protocol.

    Args:
        y: ``[N]`` scores.
        name: ``mosi`` / ``mosei`` (scores in [-3, 3]) or ``sims`` ([-1, 1]).
        num_classes: 2, 3, 5 or 7 (7 only for MOSI / MOSEI).
        binary: For 2 classes, ``has0`` (MOSI/MOSEI: >= 0 is positive; SIMS: > 0) or ``non0``
            (zero scores dropped).

    Returns:
        Class ids, a mask of rows dropped by ``non0``, class names.
    """
    drop = np.zeros(len(y), dtype=bool)
    if num_classes == 2:
        if binary not in ("has0", "non0"):
            raise DataError(f"binary must be 'has0' or 'non0', got {binary!r}")
        if binary == "non0":
            drop = y == 0
            return (y > 0).astype(np.int64), drop, ("negative", "positive")
        if name == "sims":
            # MMSA's SIMS acc2 bins are [-1, 0] and (0, 1].
            return (y > 0).astype(np.int64), drop, ("non-positive", "positive")
        return (y >= 0).astype(np.int64), drop, ("negative", "non-negative")
    if name == "sims":
        edges = {3: [-0.1, 0.1], 5: [-0.7, -0.1, 0.1, 0.7]}.get(num_classes)
        if edges is None:
            raise DataError(f"SIMS classification supports 2, 3 or 5 classes, not {num_classes}")
        # Bins are closed on the right: (-0.1, 0.1] is neutral, as in MMSA.
        cls = np.searchsorted(np.asarray(edges), np.clip(y, -1, 1), side="left")
        return cls.astype(np.int64), drop, tuple(f"bin{i}" for i in range(num_classes))
    c = {3: 1, 5: 2, 7: 3}.get(num_classes)
    if c is None:
        raise DataError(f"MOSI/MOSEI classification supports 2, 3, 5 or 7 classes, "
                        f"not {num_classes}")
    cls = np.round(np.clip(y, -c, c)).astype(np.int64) + c
    return cls, drop, tuple(str(v) for v in range(-c, c + 1))


def find_mmsa_file(name: str) -> Path:
    """Look for ``<root>/<NAME>/[Processed/]<candidate>.pkl`` under shared data and the cache.

    Raises:
        DataError: listing where it looked.
    """
    roots = [r for r in (shared_data_dir(), cache_dir()) if r is not None]
    tried = []
    for root in roots:
        for folder in (name, name.upper(), "CH-SIMS" if name == "sims" else name.upper()):
            for sub in ("", "Processed"):
                for cand in _CANDIDATES:
                    p = root / folder / sub / cand
                    tried.append(str(p))
                    if p.is_file():
                        return p
    raise DataError(f"no MMSA pickle for {name!r} found; pass path=... (looked at "
                    f"{tried[:4]} ...)")


def load_mmsa(
    path: str | Path,
    *,
    name: str | None = None,
    text: str = "text",
    task: TaskKind = "regression",
    num_classes: int = 2,
    binary: str = "has0",
    label: str = "regression_labels",
    modalities: Sequence[str] | str | None = None,
    use_lengths: bool = True,
    zero_inf: bool = True,
    check_range: bool = True,
    skip_bad: bool = False,
) -> LoadedData:
    """Load an MMSA pickle (CMU-MOSI, CMU-MOSEI or CH-SIMS; aligned or unaligned).

    Args:
        path: The ``.pkl`` file.
        name: ``mosi``, ``mosei`` or ``sims`` (sets the score range); inferred from the path.
        text: Which text field to use: ``text`` or ``text_bert`` (the latter only when it
            holds ``[N, T, D]`` features, not MMSA's ``[N, 3, L]`` token ids).
        task: ``regression`` (the score) or ``classification`` (see :func:`classes_from_scores`,
            or the file's ``classification_labels`` with ``label="classification_labels"``).
        num_classes: Classes for ``classification`` from scores: 2, 3, 5, 7.
        binary: 2-class protocol: ``has0`` or ``non0`` (zero scores excluded, reported).
        label: Label field: ``regression_labels`` or, for SIMS, ``regression_labels_T`` /
            ``_A`` / ``_V`` (unimodal annotations), or ``classification_labels``.
        modalities: Subset of ``text``, ``audio``, ``vision`` (list or comma-separated).
        use_lengths: Use ``audio_lengths`` / ``vision_lengths`` and the text attention mask
            from ``text_bert`` as sequence lengths (others count as full length).
        zero_inf: Replace +-inf features by 0, as MMSA does (logged); NaN is still an error.
        check_range: Flag scores outside the dataset's range as bad labels.
        skip_bad: Exclude bad rows (logged, counted) instead of raising.

    Raises:
        DataError: naming the file, split and field on any inconsistency.
    """
    p = Path(path)
    low = "/".join(p.parts[-3:]).lower()  # file and parent folders, not the whole path
    ds = name or next((k for k in ("sims", "mosei", "mosi") if k in low), "mosi")
    if ds not in _SCALE:
        raise DataError(f"unknown MMSA dataset name {ds!r}; use mosi, mosei or sims")
    if text not in ("text", "text_bert"):
        raise DataError(f"text must be 'text' or 'text_bert', got {text!r}")
    keep = list(MODALITIES) if modalities is None else (
        [m.strip() for m in modalities.split(",")] if isinstance(modalities, str)
        else list(modalities))
    for m in keep:
        if m not in MODALITIES:
            raise DataError(f"unknown MMSA modality {m!r}; use {list(MODALITIES)}")
    parts = split_dicts(read_pickle(p), p)
    scale = _SCALE[ds]
    splits: dict[str, SplitArrays] = {}
    excluded: dict[str, dict[str, int]] = {}
    class_names: tuple[str, ...] | None = None
    k = 1
    for split in SPLITS:
        d = parts[split]
        inputs, lengths, names = {}, {}, {}
        for m in keep:
            key = text if m == "text" else m
            if key == "text_bert" and key in d and np.shape(d[key])[1:2] == (3,):
                raise DataError(f"{p} [{split}]: field 'text_bert' holds BERT token ids "
                                f"[N, 3, L], not features; use text='text'")
            inputs[m] = features(d, key, p, split, zero_inf)
            names[m] = f"{p}: field {key!r}"
            if not use_lengths:
                continue
            if m != "text" and f"{m}_lengths" in d:
                lengths[m] = get_field(d, f"{m}_lengths", p, split).reshape(-1)
                names[f"lengths:{m}"] = f"{p}: field '{m}_lengths'"
            elif m == "text" and "text_bert" in d and text == "text":
                tb = np.asarray(d["text_bert"])
                if tb.ndim == 3 and tb.shape[1] == 3 and tb.shape[2] == inputs[m].shape[1]:
                    lengths[m] = tb[:, 1, :].sum(axis=1).astype(np.int64)
                    names[f"lengths:{m}"] = f"{p}: field 'text_bert' (attention mask)"
        raw_y = get_field(d, label, p, split)
        if raw_y.dtype.kind not in "fiub" or raw_y.ndim == 0:
            raise DataError(f"{p} [{split}]: field {label!r} must be numeric [N], got dtype "
                            f"{raw_y.dtype} shape {raw_y.shape}")
        y = raw_y.astype(np.float64).reshape(raw_y.shape[0], -1)
        if y.shape[1] != 1:
            raise DataError(f"{p} [{split}]: field {label!r} must be [N] or [N, 1], "
                            f"got {y.shape}")
        y = y[:, 0]
        names["target"] = f"{p}: field {label!r}"
        sa = SplitArrays(inputs, y, lengths, ids=sample_ids(d))
        if label == "classification_labels":
            task = "classification"
            sa.target = y
        elif task == "classification":
            if check_range:
                sa.bad.append((names["target"], f"score outside [-{scale:g}, {scale:g}]",
                               np.abs(y) > scale + 1e-6))
            cls, drop, class_names = classes_from_scores(y, ds, num_classes, binary)
            if drop.any():
                # non0 protocol: neutral scores belong to neither class; report, do not hide.
                log.info("%s [%s]: excluded %d zero score(s) (binary='non0')", p, split,
                         int(drop.sum()))
                excluded[split] = {"zero score excluded (binary='non0')": int(drop.sum())}
                bad = [(f, r, mk[~drop]) for f, r, mk in sa.bad]
                sa = sa.take(~drop)
                sa.bad = bad
                cls = cls[~drop]
            sa.target = cls
            k = num_classes
        elif task == "regression":
            if check_range:
                sa.bad.append((names["target"], f"score outside [-{scale:g}, {scale:g}]",
                               np.abs(y) > scale + 1e-6))
            sa.target = y.astype(np.float32)
        else:
            raise DataError(f"MMSA data supports regression or classification, not {task!r}")
        splits[split] = sa
    if label == "classification_labels":
        vals = np.concatenate([s.target for s in splits.values()])
        finite = vals[np.isfinite(vals)]
        k = max(int(finite.max()) + 1 if len(finite) else 1, 2)
    desc = (f"MMSA {ds.upper()} features from {p.name}: modalities {keep}, task {task}"
            f"{f' ({k} classes)' if task == 'classification' else ''}, label field {label!r}.")
    return assemble(ds, task, k, splits, str(p), skip_bad, names, class_names, desc, excluded)
