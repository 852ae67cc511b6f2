"""Data-parallel training of one run: 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.engine.distributed import (
    ShardedLoader,
    env_info,
    fit_distributed,
    flat_parameters,
    main,
)
from equimodal.registry import load_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(batch_size: int = 16) -> RunConfig:
    # SGD without momentum: the update is a linear function of the gradient, so averaged
    # gradients must give the single-process update up to float summation order.
    return RunConfig(
        "concat", "synthetic",
        data={"n_train": 64, "n_valid": 32, "n_test": 32, "dim": 6, "latent": 3},
        model=ModelConfig(hidden=8, layers=1),
        train=TrainConfig(epochs=2, batch_size=batch_size, optimizer="sgd", momentum=0.0,
                          lr=0.2, weight_decay=0.0, progress=False, device="cpu", seed=3),
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = _config()
    run_dir = Path(out) / "runs" / f"{cfg.method}-{cfg.dataset}-{cfg.digest()}"
    result = fit_distributed(cfg, run_dir, backend="gloo")
    torch.save(flat_parameters(result.method), Path(out) / f"rank{rank}.pt")
    # The torchrun entry point with the same settings finds the finished run (rank 0 wrote
    # it) and reloads it instead of training again.
    argv = ["--method", cfg.method, "--data", cfg.dataset, "--out", str(Path(out) / "runs"),
            "--backend", "gloo", "--no-progress", "--device", "cpu"]
    for section, values in (("data", cfg.data), ("model", dataclasses.asdict(cfg.model)),
                            ("train", dataclasses.asdict(cfg.train))):
        argv += [f"-s{section}.{k}={json.dumps(v)}" for k, v in values.items()
                 if k not in ("device", "progress")]
    stamp = (run_dir / "model.pt").stat().st_mtime_ns
    assert main(argv) == 0
    assert (run_dir / "model.pt").stat().st_mtime_ns == stamp


def test_sharded_loader_covers_single_process_batches(tiny_data) -> None:
    split = tiny_data.train  # 160 samples
    ranks = []
    for r in range(2):
        gen = torch.Generator().manual_seed(5)
        ranks.append([b.index.tolist() for b in ShardedLoader(split, 32, r, 2, gen)])
    from equimodal.data.dataset import BatchLoader

    gen = torch.Generator().manual_seed(5)
    single = [b.index.tolist() for b in BatchLoader(split, 32, shuffle=True, generator=gen,
                                                     drop_last=True)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    for b, whole in enumerate(single):
        assert not set(ranks[0][b]) & set(ranks[1][b])
        assert sorted(ranks[0][b] + ranks[1][b]) == sorted(whole)
    with pytest.raises(ValueError, match="divisible"):
        ShardedLoader(split, 33, 0, 2)


def test_env_info_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = env_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 2, 1, False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="torchrun"):
        env_info()


def test_two_ranks_match_each_other_and_averaged_gradients(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "rank0.pt")
    p1 = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(p0, p1), "ranks ended with different parameters"
    # One process with the same global batch (16): its gradient is the mean over the same
    # 16 samples that the two ranks split 8 + 8, so the trajectories must coincide.
    data = load_dataset("synthetic", **_config().data)
    single = fit(_config(), None, data=data)
    ref = flat_parameters(single.method)
    assert torch.allclose(p0, ref, atol=1e-5), float((p0 - ref).abs().max())
    # Summing the ranks' gradients instead of averaging would give a different model.
    doubled = fit(RunConfig.from_dict(_config().to_dict() | {
        "train": _config().train.__dict__ | {"lr": 0.4}}), None, data=data)
    assert not torch.allclose(p0, flat_parameters(doubled.method), atol=1e-3)
    # Rank 0 wrote a complete run folder; nothing of the interrupted-run machinery is left.
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    assert {"config.json", "metrics.json", "model.pt", "history.jsonl"} <= {
        p.name for p in runs[0].iterdir()}
    assert not (runs[0] / "last.pt").exists()
