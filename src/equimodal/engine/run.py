"""High-level API: build data + method from a :class:`RunConfig`, train, reload."""

from __future__ import annotations

import dataclasses
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from equimodal.config import RunConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_history,
    read_run_json,
)
from equimodal.engine.fingerprint import (
    DATA_FILE,
    DataChangedError,
    check_data,
    data_fingerprint,
    save_fingerprint,
    save_settings,
    settings_changed,
)
from equimodal.engine.seeding import seed_everything
from equimodal.engine.trainer import RunResult, Trainer, load_weights
from equimodal.registry import create_method, load_dataset

if TYPE_CHECKING:
    from equimodal.methods.base import Method

log = logging.getLogger(__name__)


def build(cfg: RunConfig, data: MultimodalData | None = None) -> tuple[Method, MultimodalData]:
    """Load the dataset and create the method (seeded, so weights are reproducible)."""
    if data is None:
        data = load_dataset(cfg.dataset, **cfg.data)
    seed_everything(cfg.train.seed)
    method: Method = create_method(cfg.method, data.info, cfg.model, **cfg.method_cfg)
    return method, data


def resolved_config(cfg: RunConfig, method: Method) -> dict[str, Any]:
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


RETRAIN_HINT = "retrain it with `equimodal train ... --no-resume` (Python: fit(..., resume=False))"
MODEL_HINT = "retrain the run (equimodal train with its settings and --no-resume)"


def prepare_run_dir(
    cfg: RunConfig,
    run_path: Path,
    data: MultimodalData | None,
    resume: bool,
    on_data_change: str = "error",
    write: bool = True,
) -> tuple[MultimodalData, bool, bool]:
    """Load the data and decide what to do with an existing run folder.

    The run's identity is its config (the folder name) plus a fingerprint of its data
    (``data.json``, see :mod:`equimodal.engine.fingerprint`). A finished or interrupted run
    whose data changed is refused with a one-line :class:`DataChangedError`
    (``on_data_change="error"``) or retrained from scratch (``"retrain"``, logged). A run
    that is trained afresh loses its old ``metrics.json`` / ``model.pt`` / ``last.pt`` first,
    so an interrupted retraining never leaves stale results next to the new fingerprint.

    Returns:
        The data, whether to resume, and whether the run is finished (reuse it).
    """
    if on_data_change not in ("error", "retrain"):
        raise ValueError(f"on_data_change must be 'error' or 'retrain', got {on_data_change!r}")
    if data is None:
        data = load_dataset(cfg.dataset, **cfg.data)
    fp = data_fingerprint(data, cfg.data)
    finished = (run_path / "metrics.json").exists()
    if resume and (finished or (run_path / "last.pt").exists()):
        try:
            check_data(run_path, fp, RETRAIN_HINT)
            # The folder name hashes the overrides only: a default changed since (a fixed
            # reading of a paper, say) would otherwise reuse results trained under the old one.
            changed = settings_changed(run_path, cfg.method, cfg.method_cfg)
            if changed:
                raise DataChangedError(
                    f"{run_path}: the defaults of method {cfg.method!r} changed since this run "
                    f"was trained ({', '.join(changed[:4])}); {RETRAIN_HINT}")
        except DataChangedError as err:
            if on_data_change == "error":
                raise
            log.warning("%s; retraining", str(err).split("; retrain")[0])
            resume = False
    if resume and finished:
        return data, True, True
    if write:
        if not resume:
            for name in ("metrics.json", "model.pt", "last.pt"):
                (run_path / name).unlink(missing_ok=True)
        run_path.mkdir(parents=True, exist_ok=True)
        save_fingerprint(run_path, fp)
        save_settings(run_path, cfg.method, cfg.method_cfg)
    return data, resume, False


def fit(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    data: MultimodalData | None = None,
    resume: bool = True,
    on_data_change: str = "error",
) -> RunResult:
    """Train ``cfg.method`` on ``cfg.dataset`` and evaluate.

    A finished run folder (``metrics.json`` present) is not retrained when ``resume`` is
    true: its model and metrics are loaded instead. An interrupted one continues from
    ``last.pt``. Either only when the data still match the run's fingerprint
    (``data.json``): see :func:`prepare_run_dir`.

    Args:
        cfg: What to run.
        run_dir: Where to write config, history, checkpoints and metrics.
        data: Pre-loaded data (skips ``load_dataset``).
        resume: Reuse finished runs and resume interrupted ones.
        on_data_change: ``error`` (raise :class:`DataChangedError`) or ``retrain`` when the
            data differ from those the run folder was trained on.

    Raises:
        DataChangedError: the data changed since the run was trained (``error`` mode).
        CheckpointError: a run file is truncated, corrupt or refused.

    Example:
        >>> from equimodal.config import RunConfig, TrainConfig
        >>> cfg = RunConfig("concat", "synthetic", data={"n_train": 64, "n_valid": 32,
        ...                 "n_test": 32}, train=TrainConfig(epochs=1, progress=False))
        >>> result = fit(cfg)
        >>> "accuracy" in result.test and "a/accuracy" in result.test
        True
    """
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        data, resume, finished = prepare_run_dir(cfg, run_path, data, resume, on_data_change)
        if finished:
            return load_run(run_path, data=data, check=False)
    method, data = build(cfg, data)
    trainer = Trainer(method, data, cfg.train, run_path, resume, resolved_config(cfg, method))
    return trainer.fit()


def load_run(
    run_dir: str | Path, data: MultimodalData | None = None, check: bool = True
) -> RunResult:
    """Rebuild a finished run's method with its selected weights and stored metrics.

    Args:
        run_dir: The run folder.
        data: Pre-loaded data (else loaded from the stored config).
        check: Compare the data with the run's fingerprint: a difference is logged as a
            warning (evaluating a model on new data is legitimate), and raised as
            :class:`DataChangedError` when the stored weights no longer fit the model.

    Raises:
        FileNotFoundError: not a run folder, or the run is not finished.
        CheckpointError: a run file is truncated, corrupt or refused (names the file).
        DataChangedError: see ``check``.
    """
    run_path = Path(run_dir)
    cfg_file = run_path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not a run folder (no config.json)")
    raw = read_run_json(cfg_file, hint=MODEL_HINT)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file}: must hold a JSON object; {MODEL_HINT}")
    raw.pop("versions", None)
    try:
        cfg = RunConfig.from_dict(raw)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{cfg_file}: not a valid run config ({err}); "
                              f"{MODEL_HINT}") from None
    if data is None:
        data = load_dataset(cfg.dataset, **cfg.data)
    changed = ""
    if check and (run_path / DATA_FILE).is_file():
        try:
            check_data(run_path, data_fingerprint(data, cfg.data), RETRAIN_HINT)
        except DataChangedError as err:
            changed = str(err)
            log.warning("%s", changed.split("; retrain")[0] + "; evaluating on the current data")
    method, data = build(cfg, data)
    model_file = run_path / "model.pt"
    if not model_file.exists():
        raise FileNotFoundError(f"{model_file}: run not finished (no selected model)")
    try:
        load_weights(method, load_checkpoint(model_file, hint=MODEL_HINT), model_file,
                    MODEL_HINT)
    except CheckpointError:
        if changed:
            raise DataChangedError(changed) from None
        raise
    metrics = read_run_json(run_path / "metrics.json", hint=MODEL_HINT)
    if not isinstance(metrics, dict) or not {"valid", "test"} <= set(metrics):
        raise CheckpointError(f"{run_path / 'metrics.json'}: missing 'valid' / 'test'; "
                              f"{MODEL_HINT}")
    history = read_history(run_path, hint=MODEL_HINT)
    return RunResult(method, history, metrics["valid"], metrics["test"], run_path, raw,
                     metrics.get("timings", {}))
