"""Part-B imbalance baselines vs concat over seeds on imbalanced synthetic data (Python API).

Usage:
    python benchmarks/compare_rebalancing_methods.py [--seeds 0,1,2] [--epochs 30]
        [--data '{"strengths": [1.0, 0.35]}']
        [--methods concat,relearning,gblending,cml,lfm,inforeg,valuation,crmt]
        [--method-cfg '{"lfm": {"strategy": "heuristic"}}'] [--threads 1]

Every method runs with the same engine settings (``TrainConfig`` defaults: Adam, lr 1e-3,
batch 64) and the generic backbone (``ModelConfig`` defaults), selects its epoch on the
validation split, and scores the test split once. Prints mean +- std (over seeds) of the
fused test accuracy and of each modality's unimodal accuracy (``a``, ``b``), plus the
training time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine import fit

DEFAULT_METHODS = "concat,relearning,gblending,cml,lfm,inforeg,valuation,crmt"


def run(method: str, data: dict[str, Any], method_cfg: dict[str, Any], seed: int,
        epochs: int) -> dict[str, float]:
    """Test metrics of one seeded run."""
    cfg = RunConfig(method=method, dataset="synthetic", data=dict(data),
                    method_cfg=dict(method_cfg), model=ModelConfig(),
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu"))
    return fit(cfg).test


def summarise(name: str, results: list[dict[str, float]], seconds: float) -> str:
    """``name | fused mean +- std | per-modality mean +- std | time`` as a Markdown row."""
    keys = ["accuracy"] + sorted(k for k in results[0] if k.endswith("/accuracy"))

    def fmt(k: str) -> str:
        vals = [100 * r[k] for r in results]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    return f"| {name} | " + " | ".join(fmt(k) for k in keys) + f" | {seconds:.0f} |"


def main() -> None:
    """Parse arguments, run every method over the seeds, print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--data", default='{"strengths": [1.0, 0.35]}')
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--method-cfg", default="{}",
                    help='JSON {"method": {field: value}} overrides')
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 is fastest for these tiny models)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = json.loads(args.data)
    overrides = json.loads(args.method_cfg)
    header_done = False
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        results = [run(method, data, overrides.get(method, {}), s, args.epochs) for s in seeds]
        if not header_done:
            mods = sorted(k.split("/")[0] for k in results[0] if k.endswith("/accuracy"))
            print(f"synthetic {data}, {args.epochs} epochs, seeds {seeds}; test accuracy (%)")
            print("| method | fused | " + " | ".join(mods) + " | seconds |")
            print("|---" * (3 + len(mods)) + "|")
            header_done = True
        print(summarise(method, results, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
