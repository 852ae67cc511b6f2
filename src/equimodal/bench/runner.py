"""Run a resolved grid: skip finished runs, launch the rest, store every record."""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from equimodal.bench.claims import BUSY, held
from equimodal.bench.jobs import FINISHED, JobSpec
from equimodal.bench.launchers import Launcher
from equimodal.bench.store import ResultStore
from equimodal.bench.suite import GridPoint

log = logging.getLogger(__name__)


@dataclass
class GridSummary:
    """What a bench invocation did.

    Attributes:
        total: Grid points.
        already: Finished runs found in the store and not launched again.
        elsewhere: Of these, runs another bench on the same folder finished meanwhile.
        counts: Status -> number of records produced by this invocation.
        wall_seconds: Elapsed time.
        records: The records of this invocation, in completion order.
    """

    total: int = 0
    already: int = 0
    elsewhere: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the equimodal source tree (``+dirty`` with local changes; ``""``
    outside a git checkout)."""
    import equimodal

    src = Path(equimodal.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=src, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def job_specs(points: Sequence[GridPoint], runs_dir: Path, robustness: bool, threads: int,
              devices: Sequence[str] = ()) -> list[JobSpec]:
    """Job specs of grid points; ``devices`` (e.g. ``cuda:0, cuda:1``) are assigned round
    robin to runs whose device is ``auto`` (the device is not part of the run hash)."""
    specs = []
    for i, p in enumerate(points):
        cfg = p.cfg.to_dict()
        if devices and cfg["train"]["device"] == "auto":
            cfg["train"]["device"] = devices[i % len(devices)]
        specs.append(JobSpec(p.run_id, cfg, p.label, str((runs_dir / p.folder).resolve()),
                             p.optional, robustness, threads))
    return specs


def pending(points: Sequence[GridPoint], store: ResultStore, runs_dir: Path,
            robustness: bool) -> tuple[list[GridPoint], int]:
    """Grid points to launch, and how many are already finished.

    A run counts as finished when the store says so and its folder still has
    ``metrics.json`` (and robustness results when asked for). Everything else is launched:
    interrupted runs resume from ``last.pt``, failed and skipped runs are tried again
    (skips are cheap).
    """
    from equimodal.engine.fingerprint import files_changed, settings_changed

    status = store.status_map()
    todo, done = [], 0
    for p in points:
        state, has_rob = status.get(p.run_id, ("", False))
        run_dir = runs_dir / p.folder
        # Data files edited, or the method's defaults changed, since: train it again.
        complete = ((run_dir / "metrics.json").exists()
                    and not files_changed(run_dir, p.cfg.data)
                    and not settings_changed(run_dir, p.cfg.method, p.cfg.method_cfg))
        if state == FINISHED and complete and (has_rob or not robustness):
            done += 1
        else:
            todo.append(p)
    return todo, done


def run_grid(
    points: Sequence[GridPoint],
    out: str | Path,
    launcher: Launcher,
    store: ResultStore | None = None,
    robustness: bool = False,
    threads: int = 0,
    suite: str = "",
    devices: Sequence[str] = (),
    on_record: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
    poll_seconds: float = 1.0,
) -> GridSummary:
    """Run every grid point not finished yet and store its record.

    Args:
        points: The resolved grid.
        out: Bench folder (``runs/`` and, by default, ``results.db`` go there).
        launcher: Where jobs run.
        store: Results store (default ``<out>/results.db``).
        robustness: Evaluate robustness protocols and diagnostics for each run.
        threads: Torch threads per job (``0``: leave as is).
        suite: Suite name stored with each row.
        devices: Devices assigned round robin (see :func:`job_specs`).
        on_record: Called with each stored record (trackers, progress).
        resume: Continue unfinished runs from their ``last.pt``; ``False`` starts them from
            scratch (``bench --no-resume``, e.g. after a corrupt checkpoint).
        poll_seconds: How often to look at runs claimed by another bench.

    Runs claimed by another live bench on the same folder (:mod:`equimodal.bench.claims`)
    are not trained twice: this bench waits until their claims are released, then counts
    the ones the other bench finished as already finished and launches the rest again
    (e.g. when the other bench died).

    Returns:
        A :class:`GridSummary`.
    """
    t0 = time.perf_counter()
    out = Path(out)
    runs_dir = out / "runs"
    store = store or ResultStore(out / "results.db")
    todo, done = pending(points, store, runs_dir, robustness)
    summary = GridSummary(total=len(points), already=done)
    log.info("%d runs in the grid, %d already finished, %d to run", len(points), done,
             len(todo))
    commit = git_commit()
    specs = job_specs(todo, runs_dir, robustness, threads, devices)
    if not resume:
        for spec in specs:
            spec.extra["fresh"] = True
    busy: list[GridPoint] = []
    by_id = {p.run_id: p for p in todo}

    def collect(record: dict[str, Any]) -> None:
        if record["status"] == BUSY:  # another bench trains it: its record, not ours
            busy.append(by_id[record["run_id"]])
            log.info("%s %s on %s seed %s: %s", BUSY, record["method"], record["label"],
                     record["seed"], record["reason"])
            return
        record.update(suite=suite, git_commit=commit)
        store.upsert(record)
        summary.counts[record["status"]] += 1
        summary.records.append(record)
        n = sum(summary.counts.values())
        log.info("[%d/%d] %s %s on %s seed %s (%.1fs)%s", n, len(specs), record["status"],
                 record["method"], record["label"], record["seed"],
                 record.get("wall_seconds") or 0.0,
                 f": {record['reason']}" if record.get("reason") else "")
        if on_record is not None:
            on_record(record)

    launcher.run(specs, collect)
    while busy:
        waiting, busy[:] = list(busy), []
        log.info("waiting for %d run(s) claimed by another bench", len(waiting))
        while any(held(runs_dir / p.folder) for p in waiting):
            time.sleep(poll_seconds)
        again, finished = pending(waiting, store, runs_dir, robustness)
        summary.already += finished
        summary.elsewhere += finished
        specs = job_specs(again, runs_dir, robustness, threads, devices)
        for spec in specs:
            spec.extra["fresh"] = not resume
        launcher.run(specs, collect)
    summary.wall_seconds = time.perf_counter() - t0
    return summary
