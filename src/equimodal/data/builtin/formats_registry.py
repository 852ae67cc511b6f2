"""Registered datasets backed by real-benchmark file formats (``equimodal.data.formats``).

Each factory takes keyword arguments with JSON-friendly values only, so a run config can
name it: ``RunConfig(dataset="mmsa", data={"path": "mosi/aligned_50.pkl"})``. A factory over
a format loader passes its arguments through and shows the loader's signature, so the two
cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _signature(loader: Callable[..., LoadedData], *extra: inspect.Parameter,
               path_required: bool = False) -> inspect.Signature:
    """The registered factory's signature: the loader's arguments, all keyword-only.

    The factories below take ``**kwargs`` and pass them to their loader unchanged, so a loader
    argument cannot be missing from its factory; this signature is what
    :func:`equimodal.registry.check_kwargs` (unknown ``data.*`` names) and ``help`` read.

    Args:
        loader: The format loader (``path`` first).
        *extra: Factory-only arguments (e.g. IEMOCAP's ``aligned`` for the file search).
        path_required: Keep ``path`` required; else it defaults to ``None`` (searched).
    """
    sig = inspect.signature(loader)
    params = []
    for p in sig.parameters.values():
        default = p.default
        annotation = p.annotation
        if p.name == "path" and not path_required and default is inspect.Parameter.empty:
            default, annotation = None, f"{annotation} | None"
        params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=default,
                                annotation=annotation))
    return sig.replace(parameters=[*params, *extra])


@register_dataset("generic")
def generic(*, path: str, **kwargs: Any) -> LoadedData:
    """Your own features: a folder of <modality>.npy + labels.npy + split.npy, or .npz/.parquet.

    Takes the arguments of :func:`equimodal.data.formats.load_generic`.
    """
    return load_generic(path, **kwargs)


@register_dataset("mmsa")
def mmsa(*, path: str | None = None, **kwargs: Any) -> LoadedData:
    """CMU-MOSI / CMU-MOSEI / CH-SIMS MMSA feature pickles (text, audio, vision; sentiment).

    Without ``path`` the pickle of ``name`` (default ``mosi``) is searched under the shared
    data folder and the cache. Takes the arguments of :func:`equimodal.data.formats.load_mmsa`.
    """
    p = Path(path) if path is not None else find_mmsa_file(kwargs.get("name") or "mosi")
    return load_mmsa(p, **kwargs)


@register_dataset("iemocap")
def iemocap(*, path: str | None = None, aligned: bool = True, **kwargs: Any) -> LoadedData:
    """IEMOCAP MulT-style feature pickle: 4 emotions, text/audio/vision sequences.

    Without ``path``, ``iemocap_data.pkl`` (``aligned``) or ``iemocap_data_noalign.pkl`` is
    searched under the shared data folder and the cache. Takes the arguments of
    :func:`equimodal.data.formats.load_iemocap`.
    """
    p = Path(path) if path is not None else find_iemocap_file(aligned)
    return load_iemocap(p, **kwargs)


@register_dataset("cremad")
def cremad(*, path: str | None = None, **kwargs: Any) -> LoadedData:
    """CREMA-D audio-visual emotions (6 classes), from `equimodal prepare cremad` features.

    ``path`` defaults to ``<cache_dir>/cremad``. Takes the arguments of
    :func:`equimodal.data.formats.load_cremad`.
    """
    return load_cremad(path, **kwargs)


# The factories' signatures are their loaders' (see _signature): set, not copied.
generic.__signature__ = _signature(load_generic, path_required=True)  # type: ignore[attr-defined]
mmsa.__signature__ = _signature(load_mmsa)  # type: ignore[attr-defined]
iemocap.__signature__ = _signature(  # type: ignore[attr-defined]
    load_iemocap, inspect.Parameter("aligned", inspect.Parameter.KEYWORD_ONLY, default=True,
                                    annotation="bool"))
cremad.__signature__ = _signature(load_cremad)  # type: ignore[attr-defined]


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
