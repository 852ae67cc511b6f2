"""Modality-imbalance baselines (part A of issue 8) vs concat over seeds, with the Python API.

Usage:
    python benchmarks/compare_gradient_modulation.py [--seeds 0,1,2] [--epochs 30]
        [--data '{"strengths": [1.0, 0.35]}'] [--train '{}']
        [--methods concat,ogm_ge,ogm,agm,pmr,mmpareto,mla,reconboost,greedy,opm,opm_ogm]
        [--json results.json]

Every method runs on the built-in ``synthetic`` data (modality ``a`` strong, ``b`` weak by
default) with the same engine settings (``TrainConfig`` defaults: Adam, lr 1e-3, batch 64,
unless ``--train`` overrides them) and selects its epoch on validation; the test split is
scored once. ``ogm`` is OGM-GE with ``ge=False``; ``opm_ogm`` is OPM's gradient variant.
Prints mean +- std (over seeds) of the fused test accuracy and of the per-modality accuracy
(``a`` / ``b``: the unimodal logits each method reports).
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

#: Display name -> (registered method, method config overrides).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "concat": ("concat", {}),
    "ogm_ge": ("ogm_ge", {}),
    "ogm": ("ogm_ge", {"ge": False}),
    "agm": ("agm", {}),
    "pmr": ("pmr", {}),
    "mmpareto": ("mmpareto", {}),
    "mla": ("mla", {}),
    "reconboost": ("reconboost", {}),
    "greedy": ("greedy", {}),
    "opm": ("opm", {}),
    "opm_ogm": ("opm", {"variant": "ogm"}),
}


def run(method: str, method_cfg: dict[str, Any], data: dict[str, Any], train: dict[str, Any],
        seed: int, epochs: int) -> dict[str, float]:
    """Test metrics of one seeded run."""
    cfg = RunConfig(method=method, dataset="synthetic", data=dict(data),
                    method_cfg=dict(method_cfg), model=ModelConfig(),
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu",
                                      **train))
    return fit(cfg).test


def summarise(name: str, results: list[dict[str, float]], seconds: float) -> str:
    """``name  accuracy=mean+-std  a=...  b=...  (seconds)`` in percent."""
    keys = ["accuracy"] + sorted(k for k in results[0] if k.endswith("/accuracy"))

    def fmt(k: str) -> str:
        vals = [r[k] for r in results]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{k.replace('/accuracy', '')}={100 * statistics.mean(vals):.2f}+-{100 * sd:.2f}"

    return f"{name:<12} " + "  ".join(fmt(k) for k in keys) + f"  ({seconds:.0f}s)"


def main() -> None:
    """Parse arguments, run every method over the seeds, print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--data", default='{"strengths": [1.0, 0.35]}')
    ap.add_argument("--train", default="{}", help="JSON TrainConfig fields")
    ap.add_argument("--methods", default=",".join(CONFIGS))
    ap.add_argument("--json", default="", help="also write all per-seed metrics here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # One thread: runs are small, and on shared CPUs extra threads only contend.
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    data, train = json.loads(args.data), json.loads(args.train)
    table: dict[str, list[dict[str, float]]] = {}
    for name in args.methods.split(","):
        method, over = CONFIGS[name]
        t0 = time.perf_counter()
        table[name] = [run(method, over, data, train, s, args.epochs) for s in seeds]
        print(summarise(name, table[name], time.perf_counter() - t0), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seeds": seeds, "epochs": args.epochs, "data": data, "train": train,
                       "results": table}, fh, indent=2)


if __name__ == "__main__":
    main()
