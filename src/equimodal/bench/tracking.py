"""Optional experiment trackers (MLflow, TensorBoard) fed with finished bench runs.

Neither is a dependency: a tracker whose package is missing is skipped with a warning.
Both are tested against the real packages (tests/test_trackers_real.py): MLflow runs are
read back with ``MlflowClient``, TensorBoard scalars with ``EventAccumulator``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from equimodal.engine.checkpoint import read_history

log = logging.getLogger(__name__)

Tracker = Callable[[dict[str, Any]], None]


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v, default=str)[:250]
    return out


def mlflow_uri(out: Path) -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else an SQLite store
    ``<out>/mlflow.db`` (MLflow 3 refuses a ``./mlruns`` file store unless
    ``MLFLOW_ALLOW_FILE_STORE=true``). View it with
    ``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def mlflow_tracker(out: Path) -> Tracker | None:
    """Log each finished run as an MLflow run (experiment = the bench folder's name).

    Uses an explicit :class:`mlflow.tracking.MlflowClient` on :func:`mlflow_uri` (no global
    active-run state): params = the flattened run config, tags = run id and dataset label,
    metrics = the final ``valid/...`` and ``test/...`` scores (step 0) and the history
    (``train/loss``, ``valid/accuracy``... at step = epoch).
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning("mlflow is not installed; skipping MLflow logging (pip install mlflow)")
        return None
    experiment = out.resolve().name
    client = MlflowClient(tracking_uri=mlflow_uri(out))

    def track(record: dict[str, Any]) -> None:
        if record.get("status") != "finished":
            return
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        name = f"{record['method']}-{record['label']}-seed{record['seed']}"
        run = client.create_run(exp_id, run_name=name)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(f"{split}/{k}", v, now, 0)
                   for split, values in (record.get("metrics") or {}).items()
                   if isinstance(values, dict) for k, v in _numbers(values).items()]
        for row in read_history(record.get("run_dir")):
            step = int(row.get("epoch", 0))
            metrics += [Metric(k, v, now, step) for k, v in _numbers(row).items()
                        if k not in ("epoch", "stage_epoch")]
        params = [Param(k[:250], v) for k, v in _flat_params(record.get("config") or {}).items()]
        tags = [RunTag("run_id", str(record["run_id"])), RunTag("dataset", str(record["label"])),
                RunTag("method", str(record["method"]))]
        client.log_batch(run_id, tags=tags)
        for chunk in _batches(params, 100):  # MLflow's per-request limits
            client.log_batch(run_id, params=chunk)
        for chunk in _batches(metrics, 1000):
            client.log_batch(run_id, metrics=chunk)
        client.set_terminated(run_id)

    return track


def tensorboard_tracker(out: Path) -> Tracker | None:
    """Write each finished run's history to ``<out>/tensorboard/<run folder>``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; skipping TensorBoard logging "
                    "(pip install tensorboard)")
        return None

    def track(record: dict[str, Any]) -> None:
        if record.get("status") != "finished":
            return
        name = Path(record.get("run_dir") or record["run_id"]).name
        writer = SummaryWriter(log_dir=str(out / "tensorboard" / name))
        try:
            for row in read_history(record.get("run_dir")):
                step = int(row.get("epoch", 0))
                for k, v in _numbers(row).items():
                    writer.add_scalar(k, v, step)
            for k, v in _numbers((record.get("metrics") or {}).get("test", {})).items():
                writer.add_scalar(f"final_test/{k}", v, 0)
        finally:
            writer.close()

    return track


TRACKERS = {"mlflow": mlflow_tracker, "tensorboard": tensorboard_tracker}


def make_trackers(names: Sequence[str], out: Path) -> list[Tracker]:
    """Trackers for ``names`` that are installed.

    Raises:
        ValueError: an unknown tracker name.
    """
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; valid: {sorted(TRACKERS)}")
    made = [TRACKERS[n](out) for n in names]
    return [t for t in made if t is not None]
