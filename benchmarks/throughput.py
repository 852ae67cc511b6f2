"""Training throughput per method and the engine-overhead ratio against a bare PyTorch loop.

Usage:
    python benchmarks/throughput.py [--methods concat,sum,...] [--epochs 3] [--n 20000]
        [--batch-size 256] [--device cpu]

The ratio compares the engine's time per training epoch (the loop only: batching,
method.training_step, loss bookkeeping, progress bar) with a hand-written loop doing the
same forward/backward/step on the same tensors in the same process. Validation is
excluded from both (the engine evaluates once per epoch; reported separately).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine import Trainer
from equimodal.engine.seeding import resolve_device
from equimodal.models import build_multimodal_model
from equimodal.registry import METHODS, create_method, load_dataset


def bare_loop(data, model_cfg: ModelConfig, train: TrainConfig, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    """Seconds per epoch of the plainest loop: permute, slice, forward, CE, backward, step."""
    torch.manual_seed(train.seed)
    model = build_multimodal_model(data.info, model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    split = data.train.to(device)
    n, bs = len(split), train.batch_size
    times = []
    for _ in range(train.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n).to(device)
        for b in range(n // bs):
            batch = split.batch(order[b * bs : (b + 1) * bs])
            loss = F.cross_entropy(model(batch).logits, batch.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def engine_loop(name: str, data, model_cfg: ModelConfig, train: TrainConfig) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds per training epoch, samples/s) of the engine for method ``name``."""
    torch.manual_seed(train.seed)
    method = create_method(name, data.info, model_cfg)
    result = Trainer(method, data, train).fit()
    times = [h["epoch_time"] for h in result.history]
    t = statistics.median(times)
    return t, len(data.train) / t


def main() -> None:
    """Run the benchmark and print a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="concat,sum,late,gated,film")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("synthetic", n_train=args.n, n_valid=512, n_test=512, dim=args.dim,
                        n_classes=10, seed=0)
    model_cfg = ModelConfig(hidden=128, layers=2)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, progress=False,
                        device=str(device), weight_decay=0.0)
    bare = bare_loop(data, model_cfg, train, device)
    print(f"device {device}, n={args.n}, batch {args.batch_size}, dim {args.dim}, "
          f"threads {torch.get_num_threads()}")
    print(f"bare loop (concat): {bare * 1000:.1f} ms/epoch, {args.n / bare:,.0f} samples/s")
    print(f"{'method':<14}{'ms/epoch':>12}{'samples/s':>14}{'vs bare':>10}")
    names = [m for m in args.methods.split(",") if m]
    if names == ["all"]:
        names = METHODS.names()
    for name in names:
        try:
            t, sps = engine_loop(name, data, model_cfg, train)
        except (ValueError, KeyError) as err:  # method not applicable to this data
            print(f"{name:<14}  skipped: {err}")
            continue
        print(f"{name:<14}{t * 1000:>12.1f}{sps:>14,.0f}{t / bare:>10.2f}")


if __name__ == "__main__":
    main()
