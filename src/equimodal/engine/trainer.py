"""The only training loop. Every method runs through :class:`Trainer`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from equimodal.config import TrainConfig
from equimodal.data.dataset import BatchLoader, MultimodalData
from equimodal.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    write_json,
)
from equimodal.engine.context import StepContext
from equimodal.engine.evaluate import evaluate, probe_metrics
from equimodal.engine.optim import build_optimizer, build_scheduler
from equimodal.engine.seeding import resolve_device, rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from equimodal.methods.base import Method, Stage

log = logging.getLogger(__name__)

RESUME_HINT = "pass --no-resume (resume=False) to start the run over"
_CKPT_KEYS = ("method", "optimizers", "schedulers", "stage_index", "stage_epoch", "epoch",
              "global_step", "history", "best", "generator", "rng")


def load_weights(method: Method, state: dict[str, Any], path: Path, hint: str) -> None:
    """``load_state_dict`` whose size / key mismatch is a one-line :class:`CheckpointError`."""
    try:
        method.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:300]
        raise CheckpointError(f"{path}: weights do not fit the model built from the current "
                              f"config and data ({detail}); {hint}") from None


@dataclass
class RunResult:
    """Outcome of a run: the trained method, per-epoch history and final metrics."""

    method: Method
    history: list[dict[str, Any]]
    valid: dict[str, float]
    test: dict[str, float]
    run_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Best:
    value: float = math.nan
    epoch: int = -1
    state: dict[str, torch.Tensor] | None = None
    stale: int = 0


class Trainer:
    """Drives a method through its stages with selection on validation only.

    Args:
        method: A :class:`~equimodal.methods.base.Method`.
        data: The dataset (moved to the training device once).
        train: Engine settings.
        run_dir: Folder for config, history, checkpoints and metrics (``None``: in memory).
        resume: Continue from ``run_dir/last.pt`` when present.
        config: Resolved configuration written to ``run_dir/config.json``.

    Attributes:
        writer: Whether this process writes to ``run_dir`` (only rank 0 does in distributed
            runs; every rank still reads ``last.pt`` to resume).
        grad_hook: Passed to :attr:`StepContext.grad_hook` (gradient all-reduce).
    """

    def __init__(
        self,
        method: Method,
        data: MultimodalData,
        train: TrainConfig,
        run_dir: Path | None = None,
        resume: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.data = data
        self.train = train
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume = resume
        self.config = config or {}
        self.writer = True
        self.grad_hook: Any = None

    # ----- helpers ------------------------------------------------------------------------
    def _activate(self, ctx: StepContext, stage: Stage, mode: str) -> dict[str, Any]:
        groups = self.method.param_groups(stage)
        active = list(stage.groups) if stage.groups is not None else list(groups)
        unknown = [g for g in active if g not in groups]
        if unknown:
            raise KeyError(f"stage {stage.name!r} names unknown groups {unknown}")
        # Everything outside the active groups is frozen for this stage.
        active_ids = {id(p) for g in active for p in groups[g]}
        for p in self.method.parameters():
            p.requires_grad_(id(p) in active_ids)
        options = self.method.group_options()
        ctx.optimizers, ctx.group_params, scheds = {}, {}, {}
        epochs = stage.epochs if stage.epochs is not None else self.train.epochs
        for g in active:
            params = _unique(groups[g])
            if not params:
                continue
            ctx.group_params[g] = params
            ctx.optimizers[g] = build_optimizer(params, self.train, options.get(g))
            scheds[g] = build_scheduler(ctx.optimizers[g], self.train, epochs, mode)
        ctx.stage = stage
        return scheds

    def _make_loader(self, split: Any, generator: torch.Generator) -> BatchLoader:
        # Distributed training overrides this to shard each epoch's permutation by rank.
        return BatchLoader(split, self.train.batch_size, shuffle=True, generator=generator,
                           drop_last=len(split) > self.train.batch_size)

    def _save(self, name: str, obj: Any) -> None:
        if self.run_dir is not None and self.writer:
            atomic_save(obj, self.run_dir / name)

    # ----- main loop ----------------------------------------------------------------------
    def fit(self) -> RunResult:
        """Train all stages, select on validation, evaluate the test split once."""
        from equimodal.metrics import selection_metric

        tr = self.train
        seed_everything(tr.seed, tr.deterministic)
        device = resolve_device(tr.device)
        data = self.data.to(device)
        method = self.method.to(device)
        gen = torch.Generator().manual_seed(tr.seed)
        ctx = StepContext(tr, device, data.train, gen)
        ctx.valid_split = data.valid
        ctx.grad_hook = self.grad_hook
        sel_name, mode = selection_metric(data.info.kind, tr.select_metric)
        stages = method.stages(tr)
        history: list[dict[str, Any]] = []
        start_stage, start_epoch, best = 0, 0, _Best()
        ckpt = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.writer:
                write_json(self.config, self.run_dir / "config.json")
            last = self.run_dir / "last.pt"
            if self.resume and last.exists():
                ckpt = load_checkpoint(last, device, hint=RESUME_HINT, keys=_CKPT_KEYS)
                load_weights(method, ckpt["method"], last, RESUME_HINT)
                start_stage, start_epoch = ckpt["stage_index"], ckpt["stage_epoch"]
                history = ckpt["history"]
                best = _Best(**ckpt["best"])
                ctx.epoch, ctx.global_step = ckpt["epoch"], ckpt["global_step"]
                gen.set_state(ckpt["generator"])
                set_rng_state(ckpt["rng"])
                log.info("resuming %s at stage %d epoch %d", self.run_dir, start_stage, start_epoch)
        total_epochs = sum(s.epochs if s.epochs is not None else tr.epochs for s in stages)
        bar = tqdm(total=total_epochs, initial=ctx.epoch, disable=not tr.progress,
                   desc=method.name, leave=False)
        t_train = 0.0
        for si in range(start_stage, len(stages)):
            stage = stages[si]
            ctx.stage_index = si
            scheds = self._activate(ctx, stage, mode)
            n_epochs = ctx.stage_epochs
            first = start_epoch if si == start_stage else 0
            if ckpt is not None and si == start_stage and ctx.scaler is not None and (
                ckpt.get("scaler")
            ):
                ctx.scaler.load_state_dict(ckpt["scaler"])
            # A checkpoint at a stage boundary (epoch 0 of the next stage) starts that stage
            # fresh: new optimisers, reset selection and on_stage_start (teacher snapshots).
            # Inside a stage, on_stage_start(resumed=True) lets the method rebuild what the
            # checkpoint does not hold.
            if ckpt is not None and si == start_stage and start_epoch > 0:
                for g, st in ckpt["optimizers"].items():
                    if g in ctx.optimizers:
                        ctx.optimizers[g].load_state_dict(st)
                for g, st in ckpt["schedulers"].items():
                    if scheds.get(g) is not None and st is not None:
                        scheds[g].load_state_dict(st)
                ctx.stage_epoch = start_epoch
                method.on_stage_start(stage, ctx, resumed=True)
            else:
                best = _Best()
                ctx.stage_epoch = 0
                method.on_stage_start(stage, ctx)
            loader = self._make_loader(data.train, gen)
            for e in range(first, n_epochs):
                ctx.stage_epoch = e
                t0 = time.perf_counter()
                row, seen = self._train_epoch(method, loader, ctx)
                dt = time.perf_counter() - t0
                t_train += dt
                row.update({f"train/{k}": v for k, v in method.on_epoch_end(ctx).items()})
                row.update(epoch=ctx.epoch, stage=stage.name, stage_epoch=e, epoch_time=dt,
                           samples_per_s=seen / max(dt, 1e-9))
                last_epoch = ctx.is_last_epoch
                if (e + 1) % tr.eval_every == 0 or last_epoch:
                    valid = evaluate(method, data.valid, data.info)
                    row.update({f"valid/{k}": v for k, v in valid.items()})
                    value = valid[sel_name]
                    improved = math.isnan(best.value) or (
                        value > best.value if mode == "max" else value < best.value
                    )
                    if improved:
                        state = {k: v.detach().clone() for k, v in method.state_dict().items()}
                        best = _Best(value, ctx.epoch, state, 0)
                    else:
                        best.stale += 1
                    for s in scheds.values():
                        if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                            s.step(value)
                for s in scheds.values():
                    if s is not None and not isinstance(
                        s, torch.optim.lr_scheduler.ReduceLROnPlateau
                    ):
                        s.step()
                row["lr"] = next(iter(ctx.optimizers.values())).param_groups[0]["lr"] if (
                    ctx.optimizers) else 0.0
                history.append(row)
                ctx.epoch += 1
                bar.update(1)
                bar.set_postfix({sel_name: f"{row.get(f'valid/{sel_name}', math.nan):.4f}"})
                stop = tr.patience > 0 and best.stale >= tr.patience
                next_stage, next_epoch = (si, e + 1) if not (last_epoch or stop) else (si + 1, 0)
                if next_stage != si and stage.select_best and best.state is not None:
                    # Select before checkpointing, so a run resumed at the next stage starts
                    # from this stage's selected weights, as an uninterrupted run does.
                    method.load_state_dict(best.state)
                self._checkpoint(method, ctx, scheds, history, best, next_stage, next_epoch)
                if stop:
                    log.info("early stop in stage %s at epoch %d", stage.name, e)
                    break
            if stage.select_best and best.state is not None:
                method.load_state_dict(best.state)
            ckpt = None
        bar.close()
        return self._finish(method, data, history, t_train)

    def _train_epoch(
        self, method: Method, loader: BatchLoader, ctx: StepContext
    ) -> tuple[dict[str, Any], int]:
        method.train()
        method.on_epoch_start(ctx)
        sums: dict[str, torch.Tensor] = {}
        n_batches = len(loader)
        seen = 0
        ctx.micro_step = 0
        ctx.zero_grad()
        for i, batch in enumerate(loader):
            ctx.force_step = i == n_batches - 1
            losses = method.training_step(batch, ctx)
            for k, v in losses.items():
                v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                sums[k] = sums[k] + v.float() if k in sums else v.float()
            if ctx.scaler is not None:
                ctx.scaler.update()
            ctx.micro_step += 1
            ctx.global_step += 1
            seen += batch.size
        row = {f"train/{k}": float(v) / max(n_batches, 1) for k, v in sums.items()}
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"non-finite training loss {bad} at epoch {ctx.epoch} (stage {ctx.stage.name}); "
                "lower the learning rate or enable clipping (train.clip_norm)"
            )
        return row, seen

    def _checkpoint(self, method: Method, ctx: StepContext, scheds: dict[str, Any],
                    history: list[dict[str, Any]], best: _Best, stage_index: int,
                    stage_epoch: int) -> None:
        if self.run_dir is None or not self.writer:
            return
        self._save("last.pt", {
            "method": method.state_dict(),
            "optimizers": {g: o.state_dict() for g, o in ctx.optimizers.items()},
            "schedulers": {g: (s.state_dict() if s is not None else None)
                           for g, s in scheds.items()},
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            "stage_index": stage_index, "stage_epoch": stage_epoch, "epoch": ctx.epoch,
            "global_step": ctx.global_step, "history": history,
            "best": dataclasses.asdict(best) | {"state": best.state},
            "generator": ctx.generator.get_state(), "rng": rng_state(),
        })
        assert self.run_dir is not None
        with open(self.run_dir / "history.jsonl", "w") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")

    def _finish(self, method: Method, data: MultimodalData, history: list[dict[str, Any]],
                t_train: float) -> RunResult:
        valid = evaluate(method, data.valid, data.info)
        test = evaluate(method, data.test, data.info)
        t0 = time.perf_counter()
        probe_valid, probe_test = probe_metrics(method, data, data.info, seed=self.train.seed)
        valid.update(probe_valid)
        test.update(probe_test)
        timings = {"train_seconds": t_train, "probe_seconds": time.perf_counter() - t0}
        if self.run_dir is not None and self.writer:
            self._save("model.pt", method.state_dict())
            write_json({"valid": valid, "test": test, "timings": timings},
                       self.run_dir / "metrics.json")
            (self.run_dir / "last.pt").unlink(missing_ok=True)
        return RunResult(method, history, valid, test, self.run_dir, self.config, timings)


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
