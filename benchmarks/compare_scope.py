"""SCOPE vs concat (and SCOPE ablations) over seeds on built-in data, with the Python API.

Usage:
    python benchmarks/compare_scope.py [--seeds 0,1,2] [--epochs 30] [--dataset synthetic]
        [--data '{"strengths": [1.0, 0.35]}'] [--methods scope,concat]
        [--ablations] [--method-cfg '{"dis_reduction": "mean"}'] [--train '{"lr": 1e-3}']
        [--paper-train]

Every method runs with the same engine settings (``TrainConfig`` defaults with the paper's
batch of 60, so k = 30 = B/2, unless ``--train`` overrides them) and selects its epoch on
validation; the test split is scored once.
Prints mean +- std of fused and per-modality (unimodal) test accuracy per method; with
``--ablations`` also the Table 6 rows, the Fig. 4 AFR variants and the Table 5 GAT stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.methods.scope import AFR_VARIANTS, TABLE6_ABLATIONS
from equimodal.metrics import mean_std
from equimodal.presets import PAPER_PRESETS


def run(method: str, dataset: str, data: dict[str, Any], method_cfg: dict[str, Any],
        train: dict[str, Any], seed: int, epochs: int) -> dict[str, float]:
    """Test metrics of one seeded run."""
    cfg = RunConfig(method=method, dataset=dataset, data=dict(data), method_cfg=dict(method_cfg),
                    model=ModelConfig(),
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu",
                                      **train))
    return fit(cfg).test


def summarise(name: str, results: list[dict[str, float]], seconds: float) -> str:
    """One table row: fused then per-modality test accuracy, mean +- std in percent."""
    cells = []
    for key in ["accuracy"] + sorted(k for k in results[0] if k.endswith("/accuracy")):
        mean, std = mean_std(100 * r[key] for r in results)
        cells.append(f"{key.removesuffix('/accuracy')}={mean:.2f}+-{std:.2f}")
    return f"{name:<22} {'  '.join(cells)}  ({seconds:.0f}s)"


def main() -> None:
    """Parse arguments, run every configuration over the seeds, print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data", default='{"strengths": [1.0, 0.35]}')
    ap.add_argument("--methods", default="scope,concat")
    ap.add_argument("--method-cfg", default="{}", help="JSON overrides for scope")
    ap.add_argument("--train", default='{"batch_size": 60}', help="JSON TrainConfig fields")
    ap.add_argument("--paper-train", action="store_true",
                    help="use the scope-paper preset (AdamW 1e-4, cosine, batch 60) for every "
                         "method; --epochs still sets the length")
    ap.add_argument("--ablations", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # One thread: runs are small, and on shared CPUs extra threads only contend.
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    data, train = json.loads(args.data), json.loads(args.train)
    if args.paper_train:
        recipe = PAPER_PRESETS["scope-paper"].train
        train = {k: v for k, v in recipe.items() if k != "epochs"} | train
    base = json.loads(args.method_cfg)
    configs: list[tuple[str, str, dict[str, Any]]] = []
    for m in args.methods.split(","):
        configs.append((m, m, base if m == "scope" else {}))
    if args.ablations:
        for row, over in TABLE6_ABLATIONS.items():
            if over:
                configs.append((f"scope {row}", "scope", {**base, **over}))
        for row, over in AFR_VARIANTS.items():
            if row != "SA+CA":
                configs.append((f"scope AFR={row}", "scope", {**base, **over}))
        configs.append(("scope gat_stack", "scope", {**base, "fusion": "gat_stack"}))
    print(f"dataset={args.dataset} data={data} train={train} epochs={args.epochs} seeds={seeds}")
    for name, method, mcfg in configs:
        t0 = time.perf_counter()
        res = [run(method, args.dataset, data, mcfg, train, s, args.epochs) for s in seeds]
        print(summarise(name, res, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
