"""Optional experiment trackers (MLflow, TensorBoard) fed with finished bench runs.

Neither is a dependency: a tracker whose package is missing is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Tracker = Callable[[dict[str, Any]], None]


def _history(run_dir: str | None) -> list[dict[str, Any]]:
    path = Path(run_dir or "") / "history.jsonl"
    if not run_dir or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def mlflow_tracker(out: Path) -> Tracker | None:
    """Log each finished run as an MLflow run (experiment = the bench folder's name)."""
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow is not installed; skipping MLflow logging (pip install mlflow)")
        return None
    experiment = out.resolve().name

    def track(record: dict[str, Any]) -> None:
        if record.get("status") != "finished":
            return
        mlflow.set_experiment(experiment)
        name = f"{record['method']}-{record['label']}-seed{record['seed']}"
        with mlflow.start_run(run_name=name):
            mlflow.set_tags({"run_id": record["run_id"], "dataset": record["label"]})
            mlflow.log_params(_flat_params(record.get("config") or {}))
            for split, values in (record.get("metrics") or {}).items():
                mlflow.log_metrics({f"{split}/{k}".replace("/", "."): v
                                    for k, v in _numbers(values).items()})
            for row in _history(record.get("run_dir")):
                step = int(row.get("epoch", 0))
                mlflow.log_metrics({k.replace("/", "."): v
                                    for k, v in _numbers(row).items()}, step=step)

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
            for row in _history(record.get("run_dir")):
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
