"""High-level API: build data + method from a :class:`RunConfig`, train, reload."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from equimodal.config import RunConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine.checkpoint import load_checkpoint
from equimodal.engine.seeding import seed_everything
from equimodal.engine.trainer import RunResult, Trainer
from equimodal.registry import create_method, load_dataset

log = logging.getLogger(__name__)


def build(cfg: RunConfig, data: MultimodalData | None = None) -> tuple[Any, MultimodalData]:
    """Load the dataset and create the method (seeded, so weights are reproducible)."""
    if data is None:
        data = load_dataset(cfg.dataset, **cfg.data)
    seed_everything(cfg.train.seed)
    method = create_method(cfg.method, data.info, cfg.model, **cfg.method_cfg)
    return method, data


def resolved_config(cfg: RunConfig, method: Any) -> dict[str, Any]:
    """The full config: every method field (with defaults) plus versions."""
    d = cfg.to_dict()
    d["method_cfg"] = dataclasses.asdict(method.cfg)
    d["versions"] = {
        "equimodal": _version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return d


def _version() -> str:
    from equimodal import __version__

    return __version__


def fit(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    data: MultimodalData | None = None,
    resume: bool = True,
) -> RunResult:
    """Train ``cfg.method`` on ``cfg.dataset`` and evaluate.

    A finished run folder (``metrics.json`` present) is not retrained when ``resume`` is
    true: its model and metrics are loaded instead. An interrupted one continues from
    ``last.pt``.

    Args:
        cfg: What to run.
        run_dir: Where to write config, history, checkpoints and metrics.
        data: Pre-loaded data (skips ``load_dataset``).
        resume: Reuse finished runs and resume interrupted ones.

    Example:
        >>> from equimodal.config import RunConfig, TrainConfig
        >>> cfg = RunConfig("concat", "synthetic", data={"n_train": 64, "n_valid": 32,
        ...                 "n_test": 32}, train=TrainConfig(epochs=1, progress=False))
        >>> result = fit(cfg)
        >>> "accuracy" in result.test and "a/accuracy" in result.test
        True
    """
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None and resume and (run_path / "metrics.json").exists():
        return load_run(run_path, data=data)
    method, data = build(cfg, data)
    trainer = Trainer(method, data, cfg.train, run_path, resume, resolved_config(cfg, method))
    return trainer.fit()


def load_run(run_dir: str | Path, data: MultimodalData | None = None) -> RunResult:
    """Rebuild a finished run's method with its selected weights and stored metrics."""
    run_path = Path(run_dir)
    cfg_file = run_path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not a run folder (no config.json)")
    raw = json.loads(cfg_file.read_text())
    raw.pop("versions", None)
    cfg = RunConfig.from_dict(raw)
    method, data = build(cfg, data)
    model_file = run_path / "model.pt"
    if not model_file.exists():
        raise FileNotFoundError(f"{model_file}: run not finished (no selected model)")
    method.load_state_dict(load_checkpoint(model_file))
    metrics = json.loads((run_path / "metrics.json").read_text())
    history = []
    hist = run_path / "history.jsonl"
    if hist.exists():
        history = [json.loads(line) for line in hist.read_text().splitlines() if line.strip()]
    return RunResult(method, history, metrics["valid"], metrics["test"], run_path, raw,
                     metrics.get("timings", {}))
