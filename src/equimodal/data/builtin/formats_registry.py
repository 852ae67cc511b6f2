"""Registered datasets backed by real-benchmark file formats (``equimodal.data.formats``).

Each factory takes keyword arguments with JSON-friendly values only, so a run config can
name it: ``RunConfig(dataset="mmsa", data={"path": "mosi/aligned_50.pkl"})``.
"""

from __future__ import annotations

from pathlib import Path

from equimodal.data.dataset import DataError
from equimodal.data.formats import (
    LoadedData,
    load_cremad,
    load_generic,
    load_iemocap,
    load_mmsa,
)
from equimodal.data.formats.cache import check_complete
from equimodal.data.formats.iemocap import find_iemocap_file
from equimodal.data.formats.mmsa import find_mmsa_file
from equimodal.paths import cache_dir
from equimodal.registry import register_dataset
from equimodal.types import TaskKind


@register_dataset("generic")
def generic(
    *,
    path: str,
    task: TaskKind | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    modalities: list[str] | str | None = None,
    skip_bad: bool = False,
    split_seed: int | None = None,
    name: str | None = None,
) -> LoadedData:
    """Your own features: a folder of <modality>.npy + labels.npy + split.npy, or .npz/.parquet.

    See :func:`equimodal.data.formats.load_generic` for the arguments.
    """
    return load_generic(path, task, num_classes=num_classes, class_names=class_names,
                        modalities=modalities, skip_bad=skip_bad, split_seed=split_seed,
                        name=name)


@register_dataset("mmsa")
def mmsa(
    *,
    path: str | None = None,
    name: str | None = None,
    text: str = "text",
    task: TaskKind = "regression",
    num_classes: int = 2,
    binary: str = "has0",
    label: str = "regression_labels",
    modalities: list[str] | str | None = None,
    use_lengths: bool = True,
    zero_inf: bool = True,
    skip_bad: bool = False,
) -> LoadedData:
    """CMU-MOSI / CMU-MOSEI / CH-SIMS MMSA feature pickles (text, audio, vision; sentiment).

    Without ``path`` the pickle of ``name`` (default ``mosi``) is searched under the shared
    data folder and the cache. See :func:`equimodal.data.formats.load_mmsa`.
    """
    p = Path(path) if path is not None else find_mmsa_file(name or "mosi")
    return load_mmsa(p, name=name, text=text, task=task, num_classes=num_classes,
                     binary=binary, label=label, modalities=modalities,
                     use_lengths=use_lengths, zero_inf=zero_inf, skip_bad=skip_bad)


@register_dataset("iemocap")
def iemocap(
    *,
    path: str | None = None,
    task: TaskKind = "classification",
    aligned: bool = True,
    modalities: list[str] | str | None = None,
    use_lengths: bool = True,
    zero_inf: bool = True,
    skip_bad: bool = False,
) -> LoadedData:
    """IEMOCAP MulT-style feature pickle: 4 emotions, text/audio/vision sequences.

    Without ``path``, ``iemocap_data.pkl`` (``aligned``) or ``iemocap_data_noalign.pkl`` is
    searched under the shared data folder and the cache. See
    :func:`equimodal.data.formats.load_iemocap`.
    """
    p = Path(path) if path is not None else find_iemocap_file(aligned)
    return load_iemocap(p, task=task, modalities=modalities, use_lengths=use_lengths,
                        zero_inf=zero_inf, skip_bad=skip_bad)


@register_dataset("cremad")
def cremad(*, path: str | None = None, skip_bad: bool = False) -> LoadedData:
    """CREMA-D audio-visual emotions (6 classes), from `equimodal prepare cremad` features.

    ``path`` defaults to ``<cache_dir>/cremad``.
    """
    return load_cremad(path, skip_bad=skip_bad)


@register_dataset("imagetext")
def imagetext(
    *,
    path: str | None = None,
    name: str | None = None,
    modalities: list[str] | str | None = None,
    skip_bad: bool = False,
) -> LoadedData:
    """Image-text classification (MVSA, Food-101 style) from `equimodal prepare imagetext`.

    ``path`` defaults to ``<cache_dir>/<name>`` (``name`` defaults to ``imagetext``; the
    dataset's name is ``name`` or the one in ``meta.json``).
    """
    p = Path(path) if path is not None else cache_dir() / (name or "imagetext")
    if not p.exists():
        raise DataError(f"{p}: no prepared image-text features; run `equimodal prepare "
                        f"imagetext --root <dataset folder> --out {p}`")
    check_complete(p, "equimodal prepare imagetext")
    return load_generic(p, modalities=modalities, skip_bad=skip_bad, name=name)
