"""Resumable, chunked feature extraction for the prepare steps.

Items are processed in fixed chunks; each finished chunk is saved atomically under
``<out>/.cache/<stage>/``, so an interrupted run resumes at the first missing chunk and a
finished one is not redone. The settings of a run are stored next to the cache: resuming
with different settings is refused (or the cache is cleared with ``overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from equimodal.data.dataset import DataError
from equimodal.data.formats.common import atomic_write_json

log = logging.getLogger(__name__)

MARKER = "prepare.json"


@dataclass
class PrepareResult:
    """What a prepare step did.

    Attributes:
        out: The generic-format folder written.
        n_samples: Samples in it.
        computed: Items whose features were computed in this run.
        reused: Items taken from the cache of an earlier (interrupted) run.
        excluded: Split -> reason -> count of samples left out (with ``skip_bad``).
        already_done: The folder was complete with the same settings; nothing was run.
    """

    out: Path
    n_samples: int = 0
    computed: int = 0
    reused: int = 0
    excluded: dict[str, dict[str, int]] = field(default_factory=dict)
    already_done: bool = False


@dataclass
class MapResult:
    """Output of :func:`map_chunked`: arrays of the items that worked, in input order."""

    keys: list[str]
    arrays: dict[str, np.ndarray]
    failed: dict[str, str]
    computed: int
    reused: int


def _canon(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(_canon(obj), sort_keys=True).encode()).hexdigest()


def start(
    out: Path, params: Mapping[str, Any], overwrite: bool, inputs: Any = None
) -> PrepareResult | None:
    """Check ``out`` before a prepare run.

    Args:
        out: Output folder.
        params: Settings that change features: the chunk cache is valid only for these.
        overwrite: Clear the cache and marker first.
        inputs: Everything else the output depends on (item list, split settings); a
            finished folder is redone, reusing cached features, when it changed.

    Returns:
        A result with ``already_done`` when ``out`` holds a finished run with the same
        ``params`` and ``inputs`` (and not ``overwrite``), else ``None`` (go ahead).

    Raises:
        DataError: when the cache was made with other settings and ``overwrite`` is false.
    """
    marker = out / MARKER
    cache = out / ".cache"
    saved = cache / "params.json"
    wanted = _canon(dict(params))
    if overwrite:
        shutil.rmtree(cache, ignore_errors=True)
        marker.unlink(missing_ok=True)
    elif marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("params") == wanted and done.get("inputs") == _digest(inputs):
            log.info("%s: already prepared with these settings; nothing to do", out)
            return PrepareResult(out, int(done.get("n_samples", 0)), 0, 0,
                                 done.get("excluded", {}), True)
    if saved.is_file() and json.loads(saved.read_text()) != wanted:
        raise DataError(f"{saved}: {out} was prepared with other settings; pass overwrite=True "
                        "(--overwrite) or choose another output folder")
    atomic_write_json(saved, wanted)
    return None


def finish(result: PrepareResult, params: Mapping[str, Any], inputs: Any = None) -> PrepareResult:
    """Write the completion marker ``prepare.json`` (the last file of a run)."""
    atomic_write_json(result.out / MARKER, {
        "params": _canon(dict(params)),
        "inputs": _digest(inputs),
        "n_samples": result.n_samples,
        "excluded": result.excluded,
    })
    return result


def check_complete(folder: Path, command: str) -> None:
    """Refuse a prepared folder whose preparation started but did not finish.

    Raises:
        DataError: naming the missing marker and the command that resumes it.
    """
    if (folder / ".cache").is_dir() and not (folder / MARKER).is_file():
        raise DataError(f"{folder / MARKER}: missing, so the preparation did not finish; "
                        f"rerun `{command}` with the same arguments (it resumes)")


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_chunk(path: Path, chunk: Sequence[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        log.warning("%s: unreadable cache chunk; recomputing it", path)
        return None
    if data.get("_keys") is None or data["_keys"].tolist() != list(chunk):
        return None  # the item list changed since this chunk was written
    return data


def map_chunked(
    keys: Sequence[str],
    item_fn: Callable[[str], Mapping[str, np.ndarray]],
    cache: Path,
    *,
    chunk_size: int = 64,
    skip_bad: bool = False,
    desc: str = "items",
    progress: bool = True,
    batch_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> MapResult:
    """Run ``item_fn`` over ``keys`` in cached chunks and stack the results.

    Args:
        keys: Item ids (stable order: chunk ``i`` holds ``keys[i * chunk_size:...]``).
        item_fn: ``key -> {name: array}`` with the same shapes for every item; raises
            :class:`DataError` for a bad item.
        cache: Folder for chunk files.
        chunk_size: Items per chunk file.
        skip_bad: Record bad items and go on (they are absent from the output) instead of
            raising.
        desc: Progress-bar label.
        progress: Show a tqdm progress bar.
        batch_fn: Optional function applied to each chunk's stacked arrays (e.g. a conv net).

    Raises:
        DataError: from a bad item (unless ``skip_bad``), or when no item worked.
    """
    cache.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, np.ndarray]] = []
    good: list[str] = []
    failed: dict[str, str] = {}
    computed = reused = 0
    with tqdm(total=len(keys), desc=desc, disable=not progress, unit="item") as bar:
        for start_at in range(0, len(keys), chunk_size):
            chunk = list(keys[start_at : start_at + chunk_size])
            path = cache / f"chunk_{start_at // chunk_size:06d}.npz"
            data = _load_chunk(path, chunk)
            if data is None:
                data = _compute_chunk(chunk, item_fn, skip_bad, batch_fn)
                _save_npz(path, data)
                computed += len(chunk)
            else:
                reused += len(chunk)
            for key, why in zip(data["_failed"].tolist(), data["_why"].tolist(), strict=True):
                if not skip_bad:
                    raise DataError(why)
                failed[key] = why
            good.extend(data["_good"].tolist())
            arrays = {k: v for k, v in data.items() if not k.startswith("_")}
            if arrays:
                parts.append(arrays)
            bar.update(len(chunk))
    if not parts:
        raise DataError(f"no item could be processed ({len(failed)} failed), e.g. "
                        f"{next(iter(failed.values()), '')}")
    stacked = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return MapResult(good, stacked, failed, computed, reused)


def _compute_chunk(
    chunk: Sequence[str],
    item_fn: Callable[[str], Mapping[str, np.ndarray]],
    skip_bad: bool,
    batch_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None,
) -> dict[str, np.ndarray]:
    rows: list[Mapping[str, np.ndarray]] = []
    ok: list[str] = []
    bad: list[str] = []
    why: list[str] = []
    for key in chunk:
        try:
            rows.append(item_fn(key))
            ok.append(key)
        except DataError as err:
            if not skip_bad:
                raise
            log.warning("skipping %s: %s", key, err)
            bad.append(key)
            why.append(str(err))
    out: dict[str, np.ndarray] = {
        "_keys": np.asarray(list(chunk), dtype=str),
        "_good": np.asarray(ok, dtype=str),
        "_failed": np.asarray(bad, dtype=str),
        "_why": np.asarray(why, dtype=str),
    }
    if rows:
        arrays = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        out.update(batch_fn(arrays) if batch_fn is not None else arrays)
    return out
