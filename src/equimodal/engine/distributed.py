"""Data-parallel training of one run with ``torch.distributed`` (``torchrun``).

Every process builds the same method from the same seed, sees its shard of each epoch's
training permutation, and averages gradients with the other ranks right before every
optimiser step (through :attr:`~equimodal.engine.context.StepContext.grad_hook`), so all
ranks hold identical parameters after each step. Only rank 0 writes the run folder; every
rank reads ``last.pt`` to resume.

``train.batch_size`` stays the *global* batch size: each of the ``W`` ranks takes
``batch_size / W`` samples, and the union of the ranks' shards of batch ``b`` is exactly
batch ``b`` of a single-process run. With a mean-reduced loss the averaged gradient is the
single-process gradient, so a config's results (and its :meth:`RunConfig.digest`) do not
depend on how many processes trained it, up to float summation order.

Launch::

    torchrun --nproc_per_node 2 -m equimodal.engine.distributed --method concat \\
        --data synthetic --epochs 10

CPU processes use the ``gloo`` backend, CUDA ones ``nccl`` with ``cuda:LOCAL_RANK``.
Per-batch statistics (BatchNorm running stats, batch-level modulation coefficients) stay
per rank; the selected weights are rank 0's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from equimodal.config import RunConfig
from equimodal.data.dataset import BatchLoader, MultimodalData, MultimodalSplit
from equimodal.engine.run import build, load_run, prepare_run_dir, resolved_config
from equimodal.engine.trainer import RunResult, Trainer
from equimodal.types import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


def env_info() -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``.

    Returns:
        The process's position (a single process when the variables are absent).
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def init_distributed(backend: str = "auto") -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (``env://``).

    Args:
        backend: ``gloo``, ``nccl`` or ``auto`` (``nccl`` when CUDA is available, else
            ``gloo``).

    Returns:
        This process's :class:`DistInfo` (a no-op for a single process).
    """
    info = env_info()
    if info.world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://",
                                rank=info.rank, world_size=info.world_size)
        log.info("rank %d/%d joined (%s)", info.rank, info.world_size, backend)
    return info


def average_gradients(params: Sequence[nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` of ``params`` over ranks in place (sum then divide by ``W``).

    A parameter without a gradient on some rank counts as a zero gradient there (as in
    ``DistributedDataParallel``); one without a gradient on every rank keeps ``None``, so
    optimisers skip it exactly as in a single-process run. Gradients are packed into one
    flat buffer per dtype and device, so a step costs one collective per buffer plus one
    for the presence flags.

    Args:
        params: Parameters of the group about to step.
        world_size: Number of ranks.
    """
    if world_size <= 1 or not params:
        return
    device = params[0].device
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                         device=device)
    dist.all_reduce(flags)
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, p in enumerate(params):
        if flags[i] > 0:
            buckets.setdefault((p.dtype, p.device), []).append(i)
    for (dtype, dev), idx in buckets.items():
        parts = [params[i].grad.reshape(-1) if params[i].grad is not None  # type: ignore[union-attr]
                 else torch.zeros(params[i].numel(), dtype=dtype, device=dev) for i in idx]
        flat = torch.cat(parts).to(dtype)
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for i in idx:
            p = params[i]
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers from rank ``src`` to every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


class ShardedLoader(BatchLoader):
    """A :class:`BatchLoader` yielding this rank's share of each global batch.

    It draws the same permutation as the single-process loader (one ``randperm`` from the
    shared generator per epoch, so generator states stay aligned across ranks), keeps
    positions ``rank, rank + W, ...`` and cuts them into ``batch_size / W`` chunks: the
    ranks' chunk ``b`` together are the single-process batch ``b``.

    Args:
        split: Training split.
        batch_size: Global batch size (divisible by ``world_size``).
        rank: This rank.
        world_size: Number of ranks.
        generator: The trainer's seeded generator.
    """

    def __init__(self, split: MultimodalSplit, batch_size: int, rank: int, world_size: int,
                 generator: torch.Generator | None = None) -> None:
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by the "
                             f"world size {world_size} (it is the global batch size)")
        self.rank, self.world_size = rank, world_size
        self.n_shard = len(split) // world_size
        per_rank = batch_size // world_size
        super().__init__(split, per_rank, shuffle=True, generator=generator,
                         drop_last=self.n_shard > per_rank)

    def __len__(self) -> int:
        n = self.n_shard
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        device = self.split.target.device
        order = torch.randperm(n, generator=self.generator).to(device)
        # Equal shards: the remainder of n / W is dropped so every rank takes as many steps.
        shard = order[self.rank::self.world_size][: self.n_shard]
        for b in range(len(self)):
            yield self.split.batch(shard[b * self.batch_size : (b + 1) * self.batch_size])


class DistributedTrainer(Trainer):
    """:class:`Trainer` with sharded batches, gradient averaging and rank-0 writing.

    Args:
        *args: As :class:`Trainer`.
        info: This process's position.
        **kwargs: As :class:`Trainer`.
    """

    def __init__(self, *args: Any, info: DistInfo, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info = info
        self.writer = info.is_main
        world = info.world_size

        def hook(params: list[nn.Parameter]) -> None:
            average_gradients(params, world)

        self.grad_hook = hook

    def _make_loader(self, split: Any, generator: torch.Generator) -> BatchLoader:
        return ShardedLoader(split, self.train.batch_size, self.info.rank,
                             self.info.world_size, generator)


def _rank_device(name: str, info: DistInfo) -> str:
    # One GPU per process: "auto"/"cuda" mean this rank's GPU.
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return "cpu" if name == "auto" else name


def fit_distributed(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    data: MultimodalData | None = None,
    resume: bool = True,
    backend: str = "auto",
) -> RunResult:
    """:func:`equimodal.engine.fit` on every rank of a ``torchrun`` job.

    Args:
        cfg: What to run (``train.batch_size`` is the global batch size).
        run_dir: Run folder (written by rank 0 only; read by all ranks to resume).
        data: Pre-loaded data.
        resume: Reuse a finished run and resume an interrupted one.
        backend: Process-group backend (see :func:`init_distributed`).

    Returns:
        This rank's result (identical parameters on every rank).
    """
    info = init_distributed(backend)
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        data, resume, finished = prepare_run_dir(cfg, run_path, data, resume,
                                                 write=info.is_main)
        if finished:
            return load_run(run_path, data=data, check=False)
    if cfg.train.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by the "
                         f"world size {info.world_size}")
    train = dataclasses.replace(cfg.train, device=_rank_device(cfg.train.device, info))
    method, data = build(cfg, data)
    # Seeding makes initial weights equal already; broadcasting also covers methods whose
    # construction draws from an unseeded source.
    broadcast_state(method.to(train.device))
    trainer = DistributedTrainer(method, data, train, run_path, resume,
                                 resolved_config(cfg, method), info=info)
    result = trainer.fit()
    if dist.is_initialized():
        # Rank 0 may still be writing metrics.json; nobody leaves before it is there.
        dist.barrier()
    return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from equimodal.runargs import add_run_arguments

    p = argparse.ArgumentParser(prog="python -m equimodal.engine.distributed",
                                description="Train one run data-parallel under torchrun.")
    p.add_argument("--method", "-m", help="registered method name")
    p.add_argument("--data", "-d", help="registered dataset name")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", default="runs", help="parent folder of run folders")
    p.add_argument("--no-resume", action="store_true", help="retrain even if a run exists")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    add_run_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``torchrun ... -m equimodal.engine.distributed``."""
    from equimodal.runargs import build_run_config, format_metrics

    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = build_run_config(args)
    info = env_info()
    if not info.is_main:
        cfg.train.progress = False  # one progress bar per job
    run_dir = Path(args.out) / f"{cfg.method}-{cfg.dataset}-{cfg.digest()}"
    try:
        result = fit_distributed(cfg, run_dir, resume=not args.no_resume, backend=args.backend)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if info.is_main:
        kind, mods = result.method.info.kind, result.method.info.modality_names
        print(f"run: {run_dir} ({info.world_size} processes)")
        print(format_metrics(result.test, kind, mods))
    return 0


def flat_parameters(module: nn.Module) -> Tensor:
    """All parameters of ``module`` as one CPU vector (to compare ranks)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


if __name__ == "__main__":
    sys.exit(main())
