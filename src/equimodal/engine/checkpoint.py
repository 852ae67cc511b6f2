"""Atomic checkpoint files for resumable runs, read without running code.

A checkpoint (``last.pt``, ``model.pt``) is untrusted input: it may come from another
machine or be edited. :func:`load_checkpoint` therefore reads it with
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors, dicts, lists,
tuples, strings, numbers, booleans and ``None``; any other global (``os.system``, a class of
the attacker's choosing) is refused before it is called. The engine stores only such types:
state dicts, optimiser and scheduler state (tensors and scalars), counters, the history, and
RNG states as a torch ``ByteTensor`` (torch) or plain lists of ints (Python, NumPy; see
:func:`equimodal.engine.seeding.rng_state`).

Every failure to read a run file (missing, truncated, corrupt, refused global, wrong
layout) is raised as :class:`CheckpointError`, a ``ValueError`` whose one-line message
names the file, so the command line reports it with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A run file (checkpoint, ``config.json``, ``metrics.json``) cannot be used.

    The message names the file and says what to do (e.g. ``--no-resume``).
    """


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file then rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: Path) -> None:
    """Write text atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (sorted keys, non-JSON values as strings)."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), path)


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an exception (torch's messages run over many lines)."""
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    first = text[0].split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {first[:160]}"


def load_checkpoint(
    path: Path,
    map_location: str | torch.device = "cpu",
    hint: str = "",
    keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Load a checkpoint written by the engine, with ``weights_only=True`` (runs no code).

    Args:
        path: The ``.pt`` file.
        map_location: Device for the tensors.
        hint: What the user can do, appended to error messages (e.g. ``"pass --no-resume
            to start the run over"``).
        keys: Keys the checkpoint must hold.

    Returns:
        The stored dict.

    Raises:
        CheckpointError: naming the file when it is missing, truncated, corrupt, holds a
            global outside the allow-list (e.g. a crafted ``__reduce__``) or lacks ``keys``.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found{tail}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reading failure is the file's problem
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            # torch's message runs over many lines; keep the refused global only.
            found = re.search(r"GLOBAL (\S+)", str(err))
            what = f"global {found.group(1)!r}" if found else "a non-tensor object"
            raise CheckpointError(f"{p}: refused to load {what}; checkpoints may hold only "
                                  f"tensors, dicts, lists, strings and numbers{tail}") from None
        raise CheckpointError(f"{p}: not a readable checkpoint, truncated or corrupt "
                              f"({_first_line(err)}){tail}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict, got {type(obj).__name__}{tail}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise CheckpointError(f"{p}: not an equimodal checkpoint (missing {missing}){tail}")
    return obj


def read_run_json(path: Path, hint: str = "") -> Any:
    """Read a run's JSON file (``config.json``, ``metrics.json``, ``data.json``).

    Raises:
        CheckpointError: naming the file when it is missing, unreadable or not JSON.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: file not found{tail}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{p}: not valid JSON ({_first_line(err)}){tail}") from None


def read_history(run_dir: str | Path | None, hint: str = "") -> list[dict[str, Any]]:
    """A run folder's per-epoch history (``<run_dir>/history.jsonl``, one JSON object per
    line); ``[]`` when ``run_dir`` is unset or the run wrote no history.

    The one reader of the file the trainer writes (resuming a run, reports, trackers and
    archives all call it), so a damaged file fails the same way everywhere.

    Raises:
        CheckpointError: naming the file and line of anything that is not a JSON object.
    """
    if not run_dir:
        return []
    p = Path(run_dir) / "history.jsonl"
    if not p.exists():
        return []
    tail = f"; {hint}" if hint else ""
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{p}: unreadable ({_first_line(err)}){tail}") from None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{p}:{number}: not valid JSON ({_first_line(err)}){tail}"
                                  ) from None
        if not isinstance(row, dict):
            raise CheckpointError(f"{p}:{number}: expected a JSON object, got "
                                  f"{type(row).__name__}{tail}")
        rows.append(row)
    return rows
