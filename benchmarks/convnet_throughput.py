"""CG-MNIST convnet throughput: engine vs a bare PyTorch loop, and GFLOP/s vs the matmul peak.

Usage:
    python benchmarks/convnet_throughput.py [--n 1280] [--rounds 3] [--threads 1]
        [--channels-last both|on|off] [--compile] [--out bench.json]

Two ``convnet4`` encoders (PMR's CG-MNIST convnet: gray [1, 28, 28] and color [3, 28, 28],
``hidden=512``) with summation fusion, SGD (momentum 0.9, wd 1e-4), batch 64, on
``cgmnist(protocol="paper")`` capped to ``--n`` training images. Measurements:

- ``bare``: the plainest loop (permute, slice, forward, CE, backward, step) in seconds/step;
- ``engine``: :class:`~equimodal.engine.Trainer` fitting method ``sum`` for one epoch, the
  training loop only (its ``epoch_time``; validation excluded), seconds/step;
- bare and engine epochs alternate A-B-A-B for ``--rounds`` rounds, so background load on a
  shared machine hits both alike; the ratio is median(engine) / median(bare);
- ``gflops``: forward+backward FLOPs of one step counted by ``torch.utils.flop_counter``
  divided by the bare step time, against the float32 matmul peak measured here
  (1024 x 1024 ``torch.mm`` with the same thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine import Trainer
from equimodal.models import build_multimodal_model
from equimodal.registry import create_method, load_dataset


def model_cfg(channels_last: bool) -> ModelConfig:
    """Two convnet4 encoders (hidden 512) and summation fusion, as the paper."""
    return ModelConfig(encoder="convnet4", hidden=512, fusion="sum",
                       encoder_kwargs={"*": {"channels_last": channels_last}})


def train_cfg(seed: int = 0) -> TrainConfig:
    """The paper's optimiser (one epoch per measurement)."""
    return TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="sgd", momentum=0.9,
                       weight_decay=1e-4, progress=False, device="cpu", seed=seed)


def bare_epoch(data: Any, mcfg: ModelConfig, train: TrainConfig,
               compile_model: bool = False) -> float:
    """Seconds per step of one bare epoch (first step excluded as warm-up)."""
    torch.manual_seed(train.seed)
    model = build_multimodal_model(data.info, mcfg)
    fwd = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                          weight_decay=train.weight_decay)
    split, bs = data.train, train.batch_size
    steps = len(split) // bs
    order = torch.randperm(len(split))
    t0 = 0.0
    for b in range(steps):
        if b == 1:
            t0 = time.perf_counter()
        batch = split.batch(order[b * bs:(b + 1) * bs])
        loss = F.cross_entropy(fwd(batch).logits, batch.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / max(1, steps - 1)


def engine_epoch(data: Any, mcfg: ModelConfig, train: TrainConfig) -> float:
    """Seconds per step of the engine's training loop (method ``sum``, one epoch)."""
    torch.manual_seed(train.seed)
    method = create_method("sum", data.info, mcfg)
    result = Trainer(method, data, train).fit()
    return float(result.history[0]["epoch_time"]) / (len(data.train) // train.batch_size)


def step_flops(data: Any, mcfg: ModelConfig, bs: int = 64) -> int:
    """Forward + backward FLOPs of one training step (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_multimodal_model(data.info, mcfg)
    batch = data.train.batch(torch.arange(bs))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(batch).logits, batch.target).backward()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    """Best-of float32 ``torch.mm`` GFLOP/s with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    """Measure and print (and optionally save) the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1280, help="training images (steps = n / 64)")
    p.add_argument("--rounds", type=int, default=3, help="A-B rounds (bare, engine)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", choices=("both", "on", "off"), default="both")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd bare loop")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("cgmnist", protocol="paper", n_train=args.n, n_valid=256, n_test=256)
    layouts = {"both": [False, True], "on": [True], "off": [False]}[args.channels_last]
    res: dict[str, Any] = {"threads": args.threads, "n": args.n, "batch_size": 64,
                           "load1": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["matmul_peak_gflops"] = matmul_peak()
    res["step_gflop"] = step_flops(data, model_cfg(False)) / 1e9
    for cl in layouts:
        key = "channels_last" if cl else "contiguous"
        mcfg, bare, eng = model_cfg(cl), [], []
        for r in range(args.rounds):
            bare.append(bare_epoch(data, mcfg, train_cfg(r)))
            eng.append(engine_epoch(data, mcfg, train_cfg(r)))
        b, e = statistics.median(bare), statistics.median(eng)
        res[key] = {"bare_s_per_step": bare, "engine_s_per_step": eng, "ratio": e / b,
                    "gflops": res["step_gflop"] / b}
        print(f"{key:15s} bare {b:.4f} s/step, engine {e:.4f} s/step, ratio {e / b:.3f}, "
              f"{res['step_gflop'] / b:.1f} GFLOP/s")
    if args.compile:
        t = time.perf_counter()
        comp = bare_epoch(data, model_cfg(False), train_cfg(0), compile_model=True)
        res["compiled_bare_s_per_step"] = comp
        res["compile_total_s"] = time.perf_counter() - t
        print(f"compiled bare  {comp:.4f} s/step (epoch incl. compile "
              f"{res['compile_total_s']:.1f} s)")
    print(f"threads {args.threads}, step {res['step_gflop']:.3f} GFLOP, matmul peak "
          f"{res['matmul_peak_gflops']:.1f} GFLOP/s, load {res['load1']:.1f} on "
          f"{res['cpus']} cpus")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
