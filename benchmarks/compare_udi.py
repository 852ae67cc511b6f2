"""UDI against concatenation (and summation) fusion over seeds, with the chosen anchor.

Usage:
    python benchmarks/compare_udi.py [--seeds 0,1,2] [--epochs 30] [--ablations]
        [--datasets synthetic,synthetic-3,mfeat-mor-pix,avmnist] [--threads 1]
        [--optimizer adam] [--out results.json]

Every run uses the Python API (``fit``) with ``TrainConfig(epochs=E, seed=s)`` (toolkit
defaults otherwise: Adam, lr 1e-3, batch 64; ``--optimizer sgd`` gives the paper's SGD with
momentum 0.9, weight decay 1e-4), selects on validation and reports test accuracy (fused
and per modality, mean +- std over seeds). UDI's default schedule trains ``E`` epochs per
stage (selection + one stage per follower), i.e. ``M * E`` epochs for ``M`` modalities;
the ``s/run`` column shows the cost. The anchor chosen for each seed is listed.

Datasets: ``synthetic`` (strengths [1.0, 0.35]: ``b`` weak), ``synthetic-3`` (strengths
[1.0, 0.5, 0.3]), ``mfeat-mor-pix`` (UCI mfeat, the weak ``mor`` and strong ``pix`` views),
and any registered dataset name with its defaults (e.g. ``avmnist``, ``cgdigits``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from equimodal.config import RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.registry import load_dataset

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "synthetic": ("synthetic", {"strengths": [1.0, 0.35]}),
    "synthetic-3": ("synthetic", {"modalities": ["a", "b", "c"], "strengths": [1.0, 0.5, 0.3]}),
    "mfeat-mor-pix": ("mfeat", {"views": "mor,pix"}),
}
#: Table 2 / Table 3 rows of the paper as UDI configs.
ABLATIONS: dict[str, dict[str, Any]] = {
    "udi DO only (Tab. 2, = Tab. 3 (0,0))": {"dynamic_controller": False},
    "udi DC only (Tab. 2)": {"decoupled": False},
    "udi fixed (1,0) (Tab. 3)": {"dynamic_controller": False, "alpha_con": 1.0},
    "udi fixed (0,1) (Tab. 3)": {"dynamic_controller": False, "alpha_com": 1.0},
    "udi concat head (A.6, MOSEI)": {"fusion": "concat"},
}


def mean_std(values: list[float]) -> str:
    """``mean +- std`` (sample std over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def run_one(dataset: str, data_kw: dict[str, Any], method: str, method_cfg: dict[str, Any],
            seed: int, epochs: int, optimizer: str, data: Any) -> dict[str, Any]:
    """Train one (method, seed); return test metrics, anchor order and timing."""
    train = TrainConfig(epochs=epochs, seed=seed, progress=False, optimizer=optimizer)
    if optimizer == "sgd":
        train.lr = 1e-2
    cfg = RunConfig(method=method, dataset=dataset, data=dict(data_kw), method_cfg=method_cfg,
                    train=train)
    t0 = time.perf_counter()
    result = fit(cfg, data=data)
    row: dict[str, Any] = {"seed": seed, "seconds": time.perf_counter() - t0,
                           "test": result.test, "epochs_run": len(result.history)}
    order = getattr(result.method, "order_names", None)
    if order is not None:
        row["order"] = order
        row["alphas"] = {m: result.method.alpha(m) for m in order[1:]}
    return row


def report(name: str, runs: dict[str, list[dict[str, Any]]], modalities: list[str]) -> None:
    """Print the markdown table for one dataset."""
    print(f"\n## {name}\n", flush=True)
    head = ["method", "accuracy"] + [f"{m}/accuracy" for m in modalities] + [
        "anchor / order per seed", "epochs", "s/run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method, rows in runs.items():
        cells = [method, mean_std([r["test"]["accuracy"] for r in rows])]
        cells += [mean_std([r["test"][f"{m}/accuracy"] for r in rows]) for m in modalities]
        cells.append("; ".join(">".join(r["order"]) for r in rows) if "order" in rows[0]
                     else "-")
        cells.append(str(rows[0]["epochs_run"]))
        cells.append(f"{statistics.mean(r['seconds'] for r in rows):.1f}")
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    """Run the comparison and print markdown tables (optionally save raw JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--datasets", default="synthetic,synthetic-3,mfeat-mor-pix,avmnist")
    p.add_argument("--ablations", action="store_true", help="also run Table 2/3 ablations")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default=None, help="write raw results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods: dict[str, tuple[str, dict[str, Any]]] = {
        "concat": ("concat", {}), "sum": ("sum", {}), "udi": ("udi", {})}
    if args.ablations:
        methods.update({k: ("udi", v) for k, v in ABLATIONS.items()})
    everything: dict[str, Any] = {}
    print(f"epochs {args.epochs}, seeds {seeds}, optimizer {args.optimizer}, "
          f"torch {torch.__version__}", flush=True)
    for name in args.datasets.split(","):
        dataset, data_kw = PRESETS.get(name, (name, {}))
        data = load_dataset(dataset, **data_kw)
        runs: dict[str, list[dict[str, Any]]] = {}
        for label, (method, mcfg) in methods.items():
            runs[label] = [run_one(dataset, data_kw, method, mcfg, s, args.epochs,
                                   args.optimizer, data) for s in seeds]
        report(f"{name} ({dataset} {data_kw})", runs, data.info.modality_names)
        everything[name] = runs
        if args.out:  # after every dataset, so a long run keeps partial results
            with open(args.out, "w") as fh:
                json.dump(everything, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
