"""Training throughput per method and the engine-overhead ratio against a bare PyTorch loop.

Usage:
    python benchmarks/throughput.py [--methods concat,sum,...] [--pairs 12] [--n 50000]
        [--batch-size 256] [--device cpu]

The ratio compares the engine's time per training epoch (the loop only: batching,
method.training_step, loss bookkeeping, progress bar) with a hand-written loop doing the
same forward/backward/step on the same tensors in the same process. Validation is
excluded from both (the engine evaluates once per epoch; reported separately).

Bare and engine epochs are **interleaved** (A B A B ...) over ``--pairs`` pairs after one
discarded warm-up pair, so a slow phase of the machine (another process, frequency scaling)
hits both sides of a pair alike; the ratio is computed per pair and reported as the median
with its interquartile range (IQR). A single sequential measurement of ~200 ms epochs gave
ratios from 0.70 to 2.14 on an idle machine; the paired median is what README quotes.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine import Trainer
from equimodal.engine.seeding import resolve_device
from equimodal.models import build_multimodal_model
from equimodal.registry import METHODS, create_method, load_dataset


class BareLoop:
    """The plainest loop: permute, slice, forward, CE, backward, step (concat's model)."""

    def __init__(self, data, model_cfg: ModelConfig, train: TrainConfig,  # type: ignore[no-untyped-def]
                 device: torch.device) -> None:
        torch.manual_seed(train.seed)
        self.model = build_multimodal_model(data.info, model_cfg).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=train.lr,
                                    weight_decay=train.weight_decay)
        self.split = data.train.to(device)
        self.bs = train.batch_size
        self.device = device

    def epoch(self) -> float:
        """Seconds of one training epoch."""
        n, bs = len(self.split), self.bs
        t0 = time.perf_counter()
        order = torch.randperm(n).to(self.device)
        for b in range(n // bs):
            batch = self.split.batch(order[b * bs : (b + 1) * bs])
            loss = F.cross_entropy(self.model(batch).logits, batch.target)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


class EngineLoop:
    """One engine training epoch per call (``Trainer.fit`` with one epoch on a persistent
    method; ``epoch_time`` of its history covers the training loop only)."""

    def __init__(self, name: str, data, model_cfg: ModelConfig, train: TrainConfig) -> None:  # type: ignore[no-untyped-def]
        torch.manual_seed(train.seed)
        self.method = create_method(name, data.info, model_cfg)
        self.data = data
        self.train = dataclasses.replace(train, epochs=1)

    def epoch(self) -> float:
        """Seconds of one training epoch."""
        result = Trainer(self.method, self.data, self.train).fit()
        return float(result.history[-1]["epoch_time"])


def interleaved(bare: BareLoop, engine: EngineLoop, pairs: int) -> list[tuple[float, float]]:
    """``pairs`` (bare, engine) epoch times measured A B A B after one warm-up pair."""
    bare.epoch(), engine.epoch()  # warm-up: allocator, kernels, first-call caches
    return [(bare.epoch(), engine.epoch()) for _ in range(pairs)]


def summary(times: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(median engine seconds, median ratio, ratio Q1, ratio Q3) of paired epoch times."""
    ratios = [e / b for b, e in times]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(e for _, e in times), statistics.median(ratios), q1, q3


def main() -> None:
    """Run the benchmark and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="concat,sum,late,gated,film")
    p.add_argument("--pairs", type=int, default=12, help="interleaved bare/engine epoch "
                   "pairs per method (at least 10 for a stable median)")
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("synthetic", n_train=args.n, n_valid=512, n_test=512, dim=args.dim,
                        n_classes=10, seed=0)
    model_cfg = ModelConfig(hidden=128, layers=2)
    train = TrainConfig(epochs=1, batch_size=args.batch_size, progress=False,
                        device=str(device), weight_decay=0.0)
    print(f"device {device}, n={args.n}, batch {args.batch_size}, dim {args.dim}, "
          f"threads {torch.get_num_threads()}, {args.pairs} interleaved pairs per method")
    print(f"{'method':<14}{'ms/epoch':>10}{'samples/s':>12}{'bare ms':>9}"
          f"{'median ratio':>14}{'IQR':>16}")
    names = [m for m in args.methods.split(",") if m]
    if names == ["all"]:
        names = METHODS.names()
    for name in names:
        try:
            engine = EngineLoop(name, data, model_cfg, train)
        except (ValueError, KeyError) as err:  # method not applicable to this data
            print(f"{name:<14}  skipped: {err}")
            continue
        times = interleaved(BareLoop(data, model_cfg, train, device), engine, args.pairs)
        t, ratio, q1, q3 = summary(times)
        bare_ms = statistics.median(b for b, _ in times) * 1000
        print(f"{name:<14}{t * 1000:>10.1f}{args.n / t:>12,.0f}{bare_ms:>9.1f}"
              f"{ratio:>14.2f}{f'[{q1:.2f}, {q3:.2f}]':>16}", flush=True)


if __name__ == "__main__":
    main()
