"""IEMOCAP feature pickles as used in the multimodal sentiment literature (MulT style).

Layout: a pickled dict with ``train``, ``valid`` (or ``dev``) and ``test``; each a dict with
``text`` ``[N, T, 300]``, ``audio`` ``[N, T, 74]``, ``vision`` ``[N, T, 35]`` (aligned: one
``T``; unaligned: one per modality) and ``labels`` ``[N, 4, 2]``: for each emotion
(neutral, happy, sad, angry) a one-hot pair ``[absent, present]``. ``[N, 4]`` 0/1 labels
are accepted too. Optional ``<modality>_lengths`` and ``id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from equimodal.data.dataset import DataError
from equimodal.data.formats.common import SPLITS, LoadedData, SplitArrays, assemble, read_pickle
from equimodal.data.formats.mmsa import MODALITIES, features, get_field, sample_ids, split_dicts
from equimodal.paths import cache_dir, shared_data_dir
from equimodal.types import TaskKind

EMOTIONS = ("neutral", "happy", "sad", "angry")


def emotion_matrix(labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 4]`` 0/1 emotion matrix from ``[N, 4, 2]`` one-hot pairs (or ``[N, 4(, 1)]``).

    Returns:
        The matrix and a mask of rows whose pairs are not one-hot / not 0/1.

    Raises:
        DataError: on a shape that is none of the above.
    """
    y = np.asarray(labels, dtype=np.float64)
    k = len(EMOTIONS)
    if y.ndim == 3 and y.shape[1:] == (k, 2):
        onehot = np.isin(y, (0.0, 1.0)).all(axis=2) & (y.sum(axis=2) == 1)
        return y[:, :, 1].astype(np.float32), ~onehot.all(axis=1)
    if y.ndim == 3 and y.shape[1:] == (k, 1):
        y = y[:, :, 0]
    if y.ndim == 2 and y.shape[1] == k:
        return y.astype(np.float32), np.asarray(~np.isin(y, (0.0, 1.0)).all(axis=1))
    raise DataError(f"{where}: labels must be [N, {k}, 2] (or [N, {k}]), got shape {y.shape}")


def find_iemocap_file(aligned: bool = True) -> Path:
    """Look for ``iemocap_data[_noalign].pkl`` under shared data and the cache.

    Raises:
        DataError: listing where it looked.
    """
    fname = "iemocap_data.pkl" if aligned else "iemocap_data_noalign.pkl"
    tried = []
    for root in (r for r in (shared_data_dir(), cache_dir()) if r is not None):
        for folder in ("", "iemocap", "IEMOCAP"):
            cand = root / folder / fname
            tried.append(str(cand))
            if cand.is_file():
                return cand
    raise DataError(f"no {fname} found; pass path=... (looked at {tried[:3]} ...)")


def load_iemocap(
    path: str | Path,
    *,
    task: TaskKind = "classification",
    modalities: Sequence[str] | str | None = None,
    use_lengths: bool = True,
    zero_inf: bool = True,
    skip_bad: bool = False,
) -> LoadedData:
    """Load an IEMOCAP feature pickle (4 emotions).

    Args:
        path: The ``.pkl`` file (e.g. ``iemocap_data.pkl`` / ``iemocap_data_noalign.pkl``).
        task: ``classification`` (one emotion per sample: 4 classes; rows with zero or
            several emotions are bad labels) or ``multilabel`` (4 binary labels, the MulT
            protocol).
        modalities: Subset of ``text``, ``audio``, ``vision``.
        use_lengths: Use ``<modality>_lengths`` fields when present.
        zero_inf: Replace +-inf features by 0 as MulT does (logged).
        skip_bad: Exclude bad rows (logged, counted) instead of raising.

    Raises:
        DataError: naming the file, split and field on any inconsistency.
    """
    p = Path(path)
    if task not in ("classification", "multilabel"):
        raise DataError(f"IEMOCAP supports classification or multilabel, not {task!r}")
    keep = list(MODALITIES) if modalities is None else (
        [m.strip() for m in modalities.split(",")] if isinstance(modalities, str)
        else list(modalities))
    for m in keep:
        if m not in MODALITIES:
            raise DataError(f"unknown IEMOCAP modality {m!r}; use {list(MODALITIES)}")
    parts = split_dicts(read_pickle(p), p)
    splits: dict[str, SplitArrays] = {}
    names: dict[str, str] = {"target": f"{p}: field 'labels'"}
    for split in SPLITS:
        d = parts[split]
        inputs, lengths = {}, {}
        for m in keep:
            inputs[m] = features(d, m, p, split, zero_inf)
            names[m] = f"{p}: field {m!r}"
            if use_lengths and f"{m}_lengths" in d:
                lengths[m] = get_field(d, f"{m}_lengths", p, split).reshape(-1)
                names[f"lengths:{m}"] = f"{p}: field '{m}_lengths'"
        emo, malformed = emotion_matrix(get_field(d, "labels", p, split), f"{p} [{split}]")
        sa = SplitArrays(inputs, emo, lengths, ids=sample_ids(d))
        sa.bad.append((names["target"], "labels not one-hot per emotion", malformed))
        if task == "classification":
            count = emo.sum(axis=1)
            sa.bad.append((names["target"], "not exactly one emotion (needs task='multilabel')",
                           (count != 1) & ~malformed))
            sa.target = np.where(count == 1, emo.argmax(axis=1), -1).astype(np.int64)
        splits[split] = sa
    desc = (f"IEMOCAP features from {p.name}: modalities {keep}, emotions {list(EMOTIONS)}, "
            f"task {task}.")
    return assemble("iemocap", task, len(EMOTIONS), splits, str(p), skip_bad, names, EMOTIONS,
                    desc)
