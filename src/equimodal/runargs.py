"""Command-line pieces shared by every command: run arguments -> ``RunConfig``, metric table.

They sit in the bottom layer (they import only :mod:`equimodal.config`), so the commands
above the engine (``equimodal.cli``, ``equimodal.bench.cli``, ``equimodal.eval.cli``) and
the one inside it (``python -m equimodal.engine.distributed``) share them without importing
each other; see "Layering" in ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADLINE = {
    "classification": ["accuracy", "macro_f1"],
    "regression": ["mae", "corr", "acc2_non0", "acc7"],
    "multilabel": ["f1_micro", "f1_macro"],
}


def format_metrics(metrics: dict[str, float], kind: str, modalities: Sequence[str]) -> str:
    """A small text table: fusion row then one row per modality."""
    keys = HEADLINE.get(kind, ["accuracy"])
    lines = [f"{'':<16}" + "".join(f"{k:>12}" for k in keys)]
    fused = [metrics.get(k, float("nan")) for k in keys]
    lines.append(f"{'fusion':<16}" + "".join(f"{v:>12.4f}" for v in fused))
    for m in modalities:
        row = [metrics.get(f"{m}/{k}", float("nan")) for k in keys]
        lines.append(f"{m + ' (unimodal)':<16}" + "".join(f"{v:>12.4f}" for v in row))
        if any(f"{m}/probe_{k}" in metrics for k in keys):  # linear probe, frozen features
            row = [metrics.get(f"{m}/probe_{k}", float("nan")) for k in keys]
            lines.append(f"{m + ' (probe)':<16}" + "".join(f"{v:>12.4f}" for v in row))
    return "\n".join(lines)


def _load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist")
    if p.suffix == ".toml":
        import tomllib

        return tomllib.loads(p.read_text())
    loaded: dict[str, Any] = json.loads(p.read_text())
    return loaded


def build_run_config(args: argparse.Namespace) -> Any:
    """RunConfig from ``--config``, ``--method``/``--data`` and ``--set`` overrides."""
    from equimodal.config import RunConfig, apply_overrides

    base = _load_config_file(args.config) if args.config else {}
    cfg = RunConfig.from_dict(base)
    sets = list(args.set or [])
    if args.method:
        cfg.method = args.method
    if args.data:
        cfg.dataset = args.data
    for flag, key in (("seed", "train.seed"), ("epochs", "train.epochs"),
                      ("device", "train.device"), ("batch_size", "train.batch_size"),
                      ("lr", "train.lr")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.insert(0, f"{key}={value}")
    if getattr(args, "no_progress", False):
        sets.append("train.progress=false")
    return apply_overrides(cfg, sets)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``bench``: method/data/config/overrides."""
    p.add_argument("--config", help="JSON or TOML file with a RunConfig")
    p.add_argument("--set", "-s", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a field, e.g. train.lr=0.01, method.alpha=0.5, data.seed=1")
    p.add_argument("--preset", metavar="NAME[:SELECT]",
                   help="evaluation protocol preset: mosi, mosei or sims (MSA protocol; "
                        "optional :f1 / :mae selection), or a paper's training recipe: "
                        "scope-paper, decalign-paper, ebmc-paper, udi-paper, "
                        "infobridge-paper; expanded before your --set values")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
