"""The one training loop, its step context, checkpoints and evaluation."""

from equimodal.engine.checkpoint import CheckpointError
from equimodal.engine.context import StepContext
from equimodal.engine.evaluate import evaluate, predict_split
from equimodal.engine.fingerprint import DataChangedError
from equimodal.engine.run import fit, load_run
from equimodal.engine.seeding import seed_everything
from equimodal.engine.trainer import RunResult, Trainer

__all__ = [
    "CheckpointError",
    "DataChangedError",
    "RunResult",
    "StepContext",
    "Trainer",
    "evaluate",
    "fit",
    "load_run",
    "predict_split",
    "seed_everything",
]
