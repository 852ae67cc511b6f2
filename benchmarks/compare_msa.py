"""MSA baselines (MulT, MISA, Self-MM, DMD) vs DecAlign, EBMC and concat under the MSA preset.

Usage:
    python benchmarks/compare_msa.py [--seeds 1111,1112,1113] [--epochs 30]
        [--methods mult,misa,selfmm,dmd,decalign,ebmc,concat] [--workers 2] [--threads 1]
        [--mmsa PATH/TO/MOSI/unaligned_50.pkl] [--select mae] [--out results.json]

Data: built-in ``synthetic`` regression, 3 sequence modalities ``a, b, c`` (strengths
1.0 / 0.6 / 0.35, noise 1.5, up to 8 frames with per-sample, per-modality lengths in
[4, 8], scores in [-3, 3]) - the DecAlign ``reg`` suite - or an MMSA pickle with ``--mmsa``.
Protocol: :func:`equimodal.presets.msa_preset` (selection on validation MAE by default,
early-stopping patience 8, test split evaluated once with the selected weights); every
method uses its paper-default config (regression losses: MulT / Self-MM / DMD / concat L1,
MISA / DecAlign MSE) and the same backbone width (``hidden=32``, 2 layers, 4 heads), Adam
lr 1e-3, batch 64, gradient clipping 0.8. Prints mean +- std (sample std) over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.metrics import mean_std
from equimodal.presets import msa_preset
from equimodal.registry import METHODS

log = logging.getLogger("compare_msa")

SYNTHETIC = {"modalities": ["a", "b", "c"], "strengths": [1.0, 0.6, 0.35], "seq_len": 8,
             "noise": 1.5, "task": "regression"}
SHOWN = ["mae", "corr", "acc2_non0", "acc2_has0", "f1_non0", "f1_has0", "acc7"]


def run(method: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed) under the preset; its test metrics (or the error)."""
    torch.set_num_threads(args["threads"])
    name = "mosi" if args["mmsa"] else "synthetic"
    preset = msa_preset(name, select=args["select"], seeds=[seed], epochs=args["epochs"])
    data = {"path": args["mmsa"]} if args["mmsa"] else dict(SYNTHETIC)
    base = preset.apply(RunConfig(
        method=method, dataset="synthetic", data=data,
        model=ModelConfig(hidden=32, layers=2, heads=4),
        train=TrainConfig(lr=1e-3, batch_size=64, clip_norm=0.8, progress=False, device="cpu"),
    ))
    cfg = preset.run_configs(base)[0]
    t0 = time.perf_counter()
    try:
        result = fit(cfg)
    except Exception as err:  # report and continue: one broken method must not stop the table
        return {"method": method, "seed": seed, "error": f"{type(err).__name__}: {err}"}
    out: dict[str, Any] = {"method": method, "seed": seed, **result.test}
    out["train_seconds"] = time.perf_counter() - t0
    out["epochs_run"] = len(result.history)
    return out


def main() -> None:
    """Run the grid and print a mean +- std table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1111,1112,1113")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--methods", default="mult,misa,selfmm,dmd,decalign,ebmc,concat")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mmsa", default="", help="an MMSA pickle instead of synthetic data")
    ap.add_argument("--select", default="mae", help="msa_preset selection metric")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    missing = [m for m in methods if m not in METHODS]
    if missing:
        log.info("not registered, skipped: %s", missing)
    methods = [m for m in methods if m in METHODS]
    opts = {"threads": args.threads, "epochs": args.epochs, "mmsa": args.mmsa,
            "select": args.select}
    jobs = [(m, s) for m in methods for s in seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        records = list(pool.map(run, [m for m, _ in jobs], [s for _, s in jobs],
                                [opts] * len(jobs)))
    preset = msa_preset("mosi" if args.mmsa else "synthetic", seeds=seeds)
    log.info("\n== %s, seeds %s, <= %d epochs, select %s ==",
             args.mmsa or "synthetic 3-modality sequence regression", seeds, args.epochs,
             args.select)
    log.info("%-9s %s", "method", "  ".join(f"{n:>15}" for n in SHOWN + ["train_s"]))
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        bad = [r["error"] for r in runs if "error" in r]
        if bad:
            log.info("%-9s failed: %s", method, bad[0])
            continue
        stats = preset.summarise(runs) | {"train_s": mean_std(r["train_seconds"] for r in runs)}
        cells = [f"{stats[n][0]:7.4f}+-{stats[n][1]:6.4f}" for n in SHOWN]
        cells.append(f"{stats['train_s'][0]:7.1f}+-{stats['train_s'][1]:6.1f}")
        log.info("%-9s %s", method, "  ".join(cells))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"seeds": seeds, "epochs": args.epochs, "select": args.select,
                       "data": args.mmsa or SYNTHETIC, "records": records}, fh, indent=1)


if __name__ == "__main__":
    main()
