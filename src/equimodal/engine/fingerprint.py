"""Data fingerprints: a run is keyed on its config *and* on the data it was trained on.

A run folder is addressed by :meth:`~equimodal.config.RunConfig.digest` (the config), so
data changed in place (relabelled, another feature size) would silently reuse the stored
model and metrics. :func:`data_fingerprint` records, in ``<run>/data.json``:

* ``parts``: per split and field (``train/target``, ``train/inputs/<m>``, ``present``,
  ``lengths``) the shape, dtype and a hash; targets, masks and lengths are hashed in full,
  feature tensors over at most ``2**22`` sampled values (evenly spaced rows) plus the
  integer sum of every column's bit patterns (exact, order independent: any single changed
  value changes it). This covers built-in datasets (the loader's args are in the config;
  the content is hashed here) as well as file formats.
* ``files``: for every data argument naming an existing file or folder (``data.path``):
  size, ``mtime_ns`` and a hash of each file (in full up to 64 MiB, else 64 blocks of
  1 MiB spread over the file plus its end). :func:`files_changed` compares these without
  loading the data (``mtime`` and size equal: unchanged, as ``make`` / ``rsync`` do; else the
  hash decides), so a bench can tell a finished run is stale before scheduling it.

:func:`check_data` compares the stored fingerprint with the current data and raises
:class:`DataChangedError`, naming what changed and how to retrain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from equimodal.engine.checkpoint import read_run_json, write_json

DATA_FILE = "data.json"
_MAX_VALUES = 2**22
_FULL_FILE = 64 * 2**20
_BLOCK, _BLOCKS = 2**20, 64
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class DataChangedError(ValueError):
    """The data differ from those a run was trained on (one line: what, and how to retrain)."""


def tensor_digest(t: Tensor) -> str:
    """``shape dtype hash`` of a tensor; large float tensors are sampled (see module doc)."""
    a = t.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=12)
    if a.is_complex() or a.element_size() not in _INT_VIEW:
        a = a.to(torch.float64)
    flat = a.reshape(a.shape[0] if a.dim() else 1, -1)
    if a.numel() <= _MAX_VALUES:
        h.update(flat.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    else:
        step = -(-a.numel() // _MAX_VALUES)
        h.update(flat[::step].contiguous().view(torch.uint8).numpy().tobytes())
        bits = flat.view(torch.uint8) if a.dtype == torch.bool else flat.view(
            _INT_VIEW[a.element_size()])
        h.update(bits.sum(dim=0, dtype=torch.int64).numpy().tobytes())
    shape = "x".join(str(s) for s in a.shape)
    return f"[{shape}] {str(t.dtype).removeprefix('torch.')} {h.hexdigest()}"


def content_parts(data: Any) -> dict[str, str]:
    """Field -> :func:`tensor_digest` over the three splits of a ``MultimodalData``."""
    info = data.info
    parts = {"info": f"{info.kind} outputs={info.num_outputs} "
                     f"modalities={list(info.modality_names)}"}
    for split in ("train", "valid", "test"):
        s = getattr(data, split)
        parts[f"{split}/target"] = tensor_digest(s.target)
        for field in ("inputs", "present", "lengths"):
            for m, t in sorted((getattr(s, field, None) or {}).items()):
                parts[f"{split}/{field}/{m}"] = tensor_digest(t)
    return parts


def _file_hash(p: Path, size: int) -> str:
    h = hashlib.blake2b(digest_size=12)
    with p.open("rb") as f:
        if size <= _FULL_FILE:
            h.update(f.read())
        else:
            for i in range(_BLOCKS):
                f.seek(i * (size - _BLOCK) // (_BLOCKS - 1))
                h.update(f.read(_BLOCK))
    return h.hexdigest()


def _data_files(kwargs: Mapping[str, Any]) -> list[Path]:
    out: list[Path] = []
    for value in kwargs.values():
        if not isinstance(value, str) or not value or len(value) > 4096:
            continue
        p = Path(value).expanduser()
        try:
            if p.is_dir():
                out += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            elif p.is_file():
                out.append(p)
                side = p.with_name(p.stem + ".meta.json")
                if side.is_file():
                    out.append(side)
        except OSError:
            continue
    return out


def file_stats(kwargs: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Path -> ``{size, mtime_ns, hash}`` of the files named by data arguments.

    Args:
        kwargs: The dataset's keyword arguments (``RunConfig.data``).
        old: A previous result; a file with the same size and ``mtime_ns`` keeps its hash
            (not read again).
    """
    out: dict[str, Any] = {}
    for p in _data_files(kwargs):
        try:
            st = p.stat()
            key = str(p.resolve())
            prev = (old or {}).get(key)
            if prev and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
                out[key] = dict(prev)
                continue
            out[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "hash": _file_hash(p, st.st_size)}
        except OSError:
            continue  # the loader reports unreadable files itself
    return out


def data_fingerprint(data: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The record stored in ``<run>/data.json``: content parts, their digest and files."""
    parts = content_parts(data)
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12)
    return {"content": digest.hexdigest(), "parts": parts, "files": file_stats(kwargs)}


def _changed_files(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if (old.get(k) or {}).get("hash") != (new.get(k) or {}).get("hash")
            or (old.get(k) or {}).get("size") != (new.get(k) or {}).get("size")]


def files_changed(run_dir: str | Path, kwargs: Mapping[str, Any]) -> list[str]:
    """Files named by data arguments that changed since ``run_dir`` was trained (no loading).

    Returns ``[]`` when the run has no ``data.json`` (trained before fingerprints) or no
    data files (built-in datasets: their content is checked by :func:`check_data`).
    """
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        return []
    try:
        stored = read_run_json(path).get("files") or {}
    except (ValueError, AttributeError):
        return []
    return _changed_files(stored, file_stats(kwargs, stored))


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """A short text naming the fields and files that differ between two fingerprints."""
    op, np_ = old.get("parts") or {}, new.get("parts") or {}
    fields = []
    for k in list(np_) + [k for k in op if k not in np_]:  # train, valid, test order
        a, b = op.get(k), np_.get(k)
        if a == b:
            continue
        sa, sb = (a or "absent").split(" ")[0], (b or "absent").split(" ")[0]
        fields.append(f"{k} {sa} -> {sb}" if sa != sb else k)
    files = _changed_files(old.get("files") or {}, new.get("files") or {})
    text = ", ".join(fields[:3]) + (f" (+{len(fields) - 3} more)" if len(fields) > 3 else "")
    if files:
        text += ("; " if text else "") + "changed file(s) " + ", ".join(files[:3])
    return text or "content hash differs"


def check_data(run_dir: Path, fingerprint: Mapping[str, Any], hint: str) -> None:
    """Raise :class:`DataChangedError` when ``run_dir/data.json`` records other data.

    A run without ``data.json`` (trained before fingerprints) passes.
    """
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        return
    stored = read_run_json(path)
    if not isinstance(stored, dict) or stored.get("content") == fingerprint["content"]:
        return
    raise DataChangedError(f"{run_dir}: the data changed since this run was trained "
                           f"({describe_change(stored, fingerprint)}); {hint}")


def save_fingerprint(run_dir: Path, fingerprint: Mapping[str, Any]) -> None:
    """Write ``run_dir/data.json`` (atomically)."""
    write_json(dict(fingerprint), Path(run_dir) / DATA_FILE)


# ----- method settings: defaults that changed since a run was trained -----------------------
SETTINGS_FILE = "method.json"


def method_settings(method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of ``method``'s ``Config`` (defaults plus ``overrides``), JSON-normalised.

    A run folder is addressed by the overrides only (so that a new config field does not
    rename every run), which means a changed *default* would silently reuse results trained
    under the old one. This is what ``<run>/method.json`` records to catch that.
    """
    import dataclasses

    from equimodal.config import build_dataclass
    from equimodal.registry import METHODS

    cfg = build_dataclass(METHODS.get(method).Config, dict(overrides), where=f"method {method!r}")
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str))
    return {"method": method, "config": resolved}


def settings_changed(run_dir: str | Path, method: str, overrides: Mapping[str, Any]) -> list[str]:
    """Method config fields whose value differs from what ``run_dir`` was trained with.

    Returns ``[]`` when the run has no ``method.json`` (trained before it existed), or when
    the method or its settings cannot be resolved (the run itself will report that).
    """
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return []
    try:
        stored = read_run_json(path).get("config") or {}
        current = method_settings(method, overrides)["config"]
    except Exception:  # noqa: BLE001 - unreadable or unresolvable: nothing to compare
        return []
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def save_settings(run_dir: Path, method: str, overrides: Mapping[str, Any]) -> None:
    """Write ``run_dir/method.json`` (atomically); skipped when the method does not resolve."""
    try:
        settings = method_settings(method, overrides)
    except Exception:  # noqa: BLE001 - create_method raises the user-facing error later
        return
    write_json(settings, Path(run_dir) / SETTINGS_FILE)
