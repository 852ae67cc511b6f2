"""Per-run claims, so that several benches on one folder share the grid instead of each
training every run.

A worker claims a run before training it by creating ``<run folder>/.claim`` with
``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+), writing its pid, host, process
start time and the time. A claim whose holder is a dead process on this host (or a pid that
was reused by another process) is stale: the next bench breaks it and takes the run over. A
claim held by a live process, or by a process on another host, makes the job come back as
:data:`BUSY`; the runner waits for it to be released and then reads the other bench's result.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

CLAIM = ".claim"
BUSY = "busy"
# A claim file still empty after this long (its writer died between create and write).
_EMPTY_GRACE_S = 30.0


def _start_time(pid: int) -> str:
    # Field 22 of /proc/<pid>/stat (clock ticks since boot): tells a reused pid apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int, start: str = "") -> bool:
    """Whether process ``pid`` runs on this host (zombies and reused pids count as dead).

    Args:
        pid: Process id.
        start: Its start time as recorded in the claim (``""``: not checked).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    if _state(pid) in ("Z", "X"):
        return False
    return not (start and _start_time(pid) and _start_time(pid) != start)


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid),
            "time": time.time()}


def read_claim(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a claim file (``None``: no file; ``{}``: not written yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def is_stale(path: Path, holder: dict[str, Any]) -> bool:
    """Whether a claim's holder is gone: a dead process on this host, or a file left empty
    for longer than a writer needs."""
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_GRACE_S
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, assume it is working
    return not pid_alive(int(holder.get("pid", -1)), str(holder.get("start", "")))


def _break(path: Path, holder: dict[str, Any]) -> bool:
    """Remove the stale claim ``holder`` at ``path``; ``False`` when someone else's fresh
    claim replaced it meanwhile (that claim is put back)."""
    aside = path.with_name(f"{CLAIM}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)  # atomic: only one bench moves a given file
    except FileNotFoundError:
        return True
    if read_claim(aside) != holder:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # put the fresh claim back unless the slot is taken again
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def try_claim(run_dir: str | Path) -> Path | None:
    """Claim a run folder for this process.

    Args:
        run_dir: The run folder (created if missing).

    Returns:
        The claim file, or ``None`` when a live process holds the run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_claim(path)
            if holder is None:
                continue  # released meanwhile
            if is_stale(path, holder) and _break(path, holder):
                continue
            return None
        with os.fdopen(fd, "w") as f:
            json.dump(_me(), f)
        return path
    return None


def release(path: Path) -> None:
    """Remove a claim made by this process (a claim taken over by another is left alone)."""
    holder = read_claim(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def held(run_dir: str | Path) -> bool:
    """Whether a live holder (not this process's stale leftovers) claims ``run_dir``."""
    path = Path(run_dir) / CLAIM
    holder = read_claim(path)
    return holder is not None and not is_stale(path, holder)


def describe(run_dir: str | Path) -> str:
    """``pid N on HOST`` of a run's claim (``""`` when unclaimed)."""
    holder = read_claim(Path(run_dir) / CLAIM)
    if not holder:
        return ""
    return f"pid {holder.get('pid')} on {holder.get('host')}"
