"""One benchmark job: load data, check the task, fit (resuming), optionally evaluate
robustness, and return a plain record for the results store.

:func:`run_job` runs in worker processes (local spawn pool or Ray tasks), so its input and
output are plain JSON-like dicts and it never raises for a run's own problems: an
unsupported task becomes ``status="skipped"`` with the reason, any other exception
``status="failed"`` with a traceback summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"
_TRACE_LINES = 12
# Per-process dataset cache: the grid visits each dataset config once per method x seed.
_DATA_CACHE: dict[str, Any] = {}
_CACHE_SIZE = 4


@dataclass
class JobSpec:
    """What a worker needs to run one grid point (picklable, JSON-friendly).

    Attributes:
        run_id: ``RunConfig.digest()`` of ``cfg``.
        cfg: ``RunConfig.to_dict()``.
        label: Dataset label for tables.
        run_dir: Run folder (absolute, so workers with another cwd find it).
        optional: Whether a missing dataset is a skip rather than a failure.
        robustness: Evaluate robustness protocols and diagnostics after training.
        threads: ``torch.set_num_threads`` for this job (``0``: leave as is).
    """

    run_id: str
    cfg: dict[str, Any]
    label: str
    run_dir: str
    optional: bool = False
    robustness: bool = False
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _finite(obj: Any) -> Any:
    # SQLite JSON and browsers reject NaN/inf; store them as null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _load_data(name: str, kwargs: dict[str, Any]) -> Any:
    from equimodal.registry import load_dataset

    key = json.dumps([name, kwargs], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) >= _CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = load_dataset(name, **kwargs)
    return _DATA_CACHE[key]


def _summary(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


def _trace_tail() -> str:
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-_TRACE_LINES:])


def _base_record(spec: JobSpec) -> dict[str, Any]:
    cfg = spec.cfg
    return {
        "run_id": spec.run_id, "method": cfg["method"], "dataset": cfg["dataset"],
        "label": spec.label, "seed": int(cfg["train"]["seed"]), "run_dir": spec.run_dir,
        "config": cfg, "status": FAILED, "reason": "", "traceback": "",
        "host": platform.node(), "pid": os.getpid(),
    }


def _versions(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    # A reloaded run's config has its versions stripped; config.json still has them.
    versions = config.get("versions")
    if not versions and (run_dir / "config.json").exists():
        versions = json.loads((run_dir / "config.json").read_text()).get("versions")
    return dict(versions or {})


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run one grid point; never raises for the run's own errors.

    Args:
        spec: The job.

    Returns:
        A record for :meth:`equimodal.bench.store.ResultStore.upsert` with ``status`` one of
        ``finished``, ``skipped``, ``failed``.
    """
    import torch

    from equimodal.config import RunConfig
    from equimodal.registry import DATASETS, UnsupportedTaskError, method_config

    if spec.threads > 0:
        # Workers share the machine's cores: one pool of N workers x T threads.
        torch.set_num_threads(spec.threads)
    record = _base_record(spec)
    record["threads"] = torch.get_num_threads()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        cfg = RunConfig.from_dict(spec.cfg)
        if cfg.dataset not in DATASETS:
            record.update(status=SKIPPED if spec.optional else FAILED,
                          reason=f"dataset {cfg.dataset!r} is not registered")
            return record
        try:
            data = _load_data(cfg.dataset, cfg.data)
        except Exception as err:  # noqa: BLE001 - any loader error is the run's outcome
            if not spec.optional:
                raise
            record.update(status=SKIPPED, reason=f"dataset unavailable: {_summary(err)}")
            return record
        info = data.info
        record.update(task=info.kind, modalities=list(info.modality_names))
        try:  # create_method's checks, before fit builds anything
            method_config(cfg.method, info, **cfg.method_cfg)
        except UnsupportedTaskError as err:
            record.update(status=SKIPPED, reason=str(err))
            return record
        from equimodal.engine import fit
        from equimodal.engine.fingerprint import files_changed, settings_changed

        run_dir = Path(spec.run_dir)
        stale = bool(files_changed(run_dir, cfg.data)
                     or settings_changed(run_dir, cfg.method, cfg.method_cfg))
        resumed = (run_dir / "last.pt").exists() and not stale
        reused = (run_dir / "metrics.json").exists() and not stale
        # A run is keyed on its config, its data (data.json) and its method's resolved
        # settings (method.json): when either changed since it was trained, the grid point
        # is retrained rather than its results reused.
        result = fit(cfg, run_dir, data=data, resume=True, on_data_change="retrain")
        record.update(
            status=FINISHED,
            metrics={"valid": result.valid, "test": result.test},
            timings=dict(result.timings),
            versions=_versions(result.config, run_dir),
            config={k: v for k, v in result.config.items() if k != "versions"},
            epochs=len(result.history), resumed=resumed, reused=reused,
        )
        if spec.robustness:
            from equimodal.eval.diagnostics import protocol_report

            record["robustness"] = protocol_report(result.method, data.test, info,
                                                   seed=cfg.train.seed)
    except Exception as err:  # noqa: BLE001 - a crashing run must not stop the grid
        record.update(status=FAILED, reason=_summary(err), traceback=_trace_tail())
        log.warning("run %s (%s on %s) failed: %s", spec.run_id, record["method"],
                    record["label"], record["reason"])
    finally:
        record["wall_seconds"] = time.perf_counter() - t0
        # CPU time of this job's process: on a shared machine wall time mostly measures the
        # neighbours; CPU seconds / cores estimates the time on an idle one.
        record["timings"] = {**(record.get("timings") or {}),
                             "job_cpu_seconds": time.process_time() - c0}
    return _finite(record)  # type: ignore[no-any-return]


def run_job_dict(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_job` taking the spec as a dict (for launchers that ship plain data)."""
    return run_job(JobSpec(**spec))
