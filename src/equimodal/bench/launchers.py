"""Where jobs run: in-process, a local pool of spawned worker processes, or a Ray cluster.

Every launcher takes the same :class:`~equimodal.bench.jobs.JobSpec` list and calls
``on_result(record)`` in the orchestrating process as each job ends, so the results store
has a single writer whatever the backend.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from equimodal.bench.claims import BUSY, describe, release, try_claim
from equimodal.bench.jobs import FAILED, JobSpec, run_job_dict

log = logging.getLogger(__name__)

OnResult = Callable[[dict[str, Any]], None]


class Launcher(Protocol):
    """Runs job specs and reports each record as it finishes."""

    def run(self, specs: Sequence[JobSpec], on_result: OnResult) -> None:
        """Run every spec; call ``on_result`` once per spec."""


def default_threads(workers: int) -> int:
    """Threads per worker so ``workers x threads`` does not exceed the visible cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return max(1, cores // max(workers, 1))


def _lost(spec: JobSpec, err: BaseException) -> dict[str, Any]:
    # The worker itself died (killed, out of memory, segfault): record, keep going.
    cfg = spec.cfg
    return {"run_id": spec.run_id, "method": cfg["method"], "dataset": cfg["dataset"],
            "label": spec.label, "seed": int(cfg["train"]["seed"]), "run_dir": spec.run_dir,
            "config": cfg, "status": FAILED,
            "reason": f"worker lost: {type(err).__name__}: {err}", "traceback": ""}


def run_claimed(spec: dict[str, Any]) -> dict[str, Any]:
    """Claim the run folder (:mod:`equimodal.bench.claims`), run the job, release the claim.

    A run claimed by another live process is not run: its record has ``status="busy"`` and
    the holder as ``reason`` (the runner waits for it and reads that bench's result). With
    ``spec["extra"]["fresh"]`` an unfinished run's ``last.pt`` is removed first
    (``bench --no-resume``), under the claim so no other bench is training from it.
    """
    claim = try_claim(spec["run_dir"])
    if claim is None:
        cfg = spec["cfg"]
        return {"run_id": spec["run_id"], "method": cfg["method"], "dataset": cfg["dataset"],
                "label": spec["label"], "seed": int(cfg["train"]["seed"]),
                "run_dir": spec["run_dir"], "config": cfg, "status": BUSY,
                "reason": f"claimed by {describe(spec['run_dir'])}", "traceback": ""}
    try:
        if (spec.get("extra") or {}).get("fresh"):
            (Path(spec["run_dir"]) / "last.pt").unlink(missing_ok=True)
        return run_job_dict(spec)
    finally:
        release(claim)


class InlineLauncher:
    """Run jobs one after another in this process (``--workers 1``; debugging)."""

    def run(self, specs: Sequence[JobSpec], on_result: OnResult) -> None:
        """Run every spec in order."""
        import torch

        threads = torch.get_num_threads()
        try:
            for spec in specs:
                on_result(run_claimed(dataclasses.asdict(spec)))
        finally:
            torch.set_num_threads(threads)


_PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD_S = 1.0


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies (no orphaned workers after ``kill -9``).

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``);
    everywhere a daemon thread also checks every :data:`WATCHDOG_PERIOD_S` seconds that the
    parent pid is unchanged (an orphan is re-parented) and exits otherwise. An orphan's
    claim (:mod:`equimodal.bench.claims`) is stale and the next bench takes the run over.

    Args:
        parent: Pid of the process that started this one.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog covers it
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_PERIOD_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="equimodal-parent-watchdog", daemon=True).start()


def _init_worker(parent: int) -> None:
    # Workers log warnings only; the orchestrator reports progress.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    die_with_parent(parent)


class LocalLauncher:
    """A pool of ``workers`` spawned processes on this machine.

    The ``spawn`` start method gives each worker a fresh interpreter (no forked torch
    thread pools or CUDA state); each job sets ``torch.set_num_threads(spec.threads)``.
    Workers end with this process (:func:`die_with_parent`), and each job claims its run
    folder first (:func:`run_claimed`).

    Args:
        workers: Worker processes.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, specs: Sequence[JobSpec], on_result: OnResult) -> None:
        """Submit every spec and report records in completion order."""
        if not specs:
            return
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(specs)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(os.getpid(),))
        futures: dict[Future[dict[str, Any]], JobSpec] = {}
        try:
            for spec in specs:
                futures[pool.submit(run_claimed, dataclasses.asdict(spec))] = spec
            for fut in as_completed(futures):
                try:
                    record = fut.result()
                except Exception as err:  # noqa: BLE001 - BrokenProcessPool and friends
                    record = _lost(futures[fut], err)
                on_result(record)
        except BaseException:
            # Ctrl-C or a failing callback: stop queued jobs; running ones resume next time
            # from their checkpoints.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def init_local_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray instance whose workers run at normal priority.

    Ray starts its workers at niceness 15 by default: on a machine that is also doing
    anything else (the other half of a process pool, a test runner) they then get a few
    percent of a core, and a one-second training run takes minutes.

    Args:
        num_cpus: CPUs Ray may schedule on (default: all of the machine's).
    """
    import os

    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


class RayLauncher:
    """Run jobs as Ray tasks (a running cluster, or a local instance started here).

    Workers must have ``equimodal`` installed and see the run folders at the same path (a
    shared filesystem on a cluster).

    Args:
        address: Cluster address (``auto``, ``ray://host:10001``) or ``None`` for a local
            instance.
        threads: CPUs reserved per task (also its ``torch.set_num_threads``).
        gpus: GPUs reserved per task.
        num_cpus: CPUs of a local instance (``None``: all).
    """

    def __init__(self, address: str | None = None, threads: int = 1, gpus: float = 0.0,
                 num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray backend needs ray: pip install 'equimodal[ray]'") from err
        self.ray = ray
        self.address = address
        self.threads = max(1, threads)
        self.gpus = gpus
        self.num_cpus = num_cpus

    def _init(self) -> bool:
        if self.ray.is_initialized():
            return False
        if self.address is None:
            init_local_ray(self.num_cpus)
        else:
            self.ray.init(address=self.address, log_to_driver=False)
        return True

    def run(self, specs: Sequence[JobSpec], on_result: OnResult) -> None:
        """Submit every spec as a task and report records in completion order."""
        if not specs:
            return
        ray = self.ray
        started = self._init()
        try:
            task = ray.remote(num_cpus=self.threads, num_gpus=self.gpus,
                              max_retries=0)(run_claimed)
            pending = {task.remote(dataclasses.asdict(s)): s for s in specs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(done[0])
                try:
                    record = ray.get(done[0])
                except Exception as err:  # noqa: BLE001 - a crashed Ray worker
                    record = _lost(spec, err)
                on_result(record)
        finally:
            if started:
                ray.shutdown()


def make_launcher(backend: str, workers: int, threads: int, address: str | None = None,
                  gpus: float = 0.0) -> Launcher:
    """Build a launcher by name.

    Args:
        backend: ``local`` or ``ray``.
        workers: Local worker processes (``1`` runs in this process); for Ray, the CPUs of
            a local instance.
        threads: Threads (Ray: CPUs) per job.
        address: Ray cluster address.
        gpus: GPUs per Ray task.
    """
    if backend == "local":
        return InlineLauncher() if workers <= 1 else LocalLauncher(workers)
    if backend == "ray":
        return RayLauncher(address, threads, gpus, num_cpus=None if address else
                           max(workers, 1) * threads)
    raise ValueError(f"unknown backend {backend!r}; use local or ray")
