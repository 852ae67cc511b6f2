"""EBMC against concatenation fusion over seeds, with robustness tables.

Usage:
    python benchmarks/compare_ebmc.py [--seeds 0,1,2] [--epochs 30] [--ablations]
        [--datasets synthetic,synthetic-seq] [--reference] [--impute] [--out FILE]
        [--threads 1]

For every dataset and method it trains with the Python API (``fit``), selects on
validation, and reports test accuracy (fused and per modality, mean +- std over seeds), each
modality's contribution to the fused logits on the test split (the Fig. 4 quantity:
share of the mean norm of the centred split-fusion logits), the missing-modality table
(every non-empty subset of modalities, Tab. 3 protocol) and, for sequence data, the
frame-drop curve averaged over p in {0, ..., 0.9} (Tab. 5 protocol).

Datasets: ``synthetic`` (vectors, strengths [1.0, 0.35]: modality ``b`` is weak),
``synthetic-seq`` (the same as sequences of up to 12 frames), ``synthetic-3`` (three
modalities, strengths [1.0, 0.5, 0.3]), ``synthetic-noisy`` (``synthetic`` with noise 2.0,
far from saturation) and any registered dataset name with its defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from equimodal.config import RunConfig, TrainConfig
from equimodal.engine import fit, predict_split
from equimodal.eval import frame_drop_curve, missing_modality_table
from equimodal.registry import load_dataset

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "synthetic": ("synthetic", {"strengths": [1.0, 0.35]}),
    "synthetic-seq": ("synthetic", {"strengths": [1.0, 0.35], "seq_len": 12}),
    "synthetic-3": ("synthetic", {"modalities": ["a", "b", "c"], "strengths": [1.0, 0.5, 0.3]}),
    "synthetic-noisy": ("synthetic", {"strengths": [1.0, 0.35], "noise": 2.0}),
}
#: The reference implementation's choices where the paper is silent or differs
#: (shared/notes/implementation-facts.md), as one EBMC variant.
REFERENCE: dict[str, Any] = {
    "dis_form": "cosine_sq", "cce_generator": "shared", "cce_task_term": "head_l1",
    "cce_gamma": 1.0, "energy_beta": 1.0, "energy_gamma": 1.0, "grad_penalty": "norm_only",
    "sq_norm_reduction": "mean", "uncertainty_source": "teacher",
    "imtd_uncertainty": "reference", "rho_offset": 0.1, "kl_direction": "teacher_student",
    "tau_sq_scale": True,
}
ABLATIONS: dict[str, dict[str, Any]] = {
    "ebmc w/o MSD": {"use_msd": False},
    "ebmc w/o CCE": {"use_cce": False},
    "ebmc w/o EMC": {"use_emc": False},
    "ebmc w/o IMTD": {"use_imtd": False},
}


def contribution(method: Any, split: Any) -> dict[str, float]:
    """Share of each modality in the fused logits (centred split-fusion logit norms)."""
    _, uni, _ = predict_split(method, split)
    raw = {n: float((u - u.mean(0, keepdim=True)).norm(dim=1).mean()) for n, u in uni.items()}
    total = sum(raw.values()) or 1.0
    return {n: v / total for n, v in raw.items()}


def mean_std(values: list[float]) -> str:
    """``mean +- std`` (sample std over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def _avg(rows: list[dict[str, Any]], table: str, i: int | None) -> str:
    """Mean accuracy over seeds of row ``i`` (``None``: the average) of a robustness table."""
    vals = [(r[table]["average"] if i is None else r[table]["rows"][i])["accuracy"] for r in rows]
    return f"{statistics.mean(vals):.4f}"


def run_one(dataset: str, data_kw: dict[str, Any], method: str, method_cfg: dict[str, Any],
            seed: int, epochs: int, data: Any) -> dict[str, Any]:
    """Train one (method, seed) and collect test metrics and robustness tables."""
    cfg = RunConfig(method=method, dataset=dataset, data=dict(data_kw), method_cfg=method_cfg,
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False))
    t0 = time.perf_counter()
    result = fit(cfg, data=data)
    row: dict[str, Any] = {"seed": seed, "seconds": time.perf_counter() - t0,
                           "test": result.test, "contribution": contribution(
                               result.method, data.test)}
    row["missing"] = missing_modality_table(result.method, data.test, data.info)
    if any(s.is_sequence for s in data.info.modalities.values()):
        row["frame_drop"] = frame_drop_curve(result.method, data.test, data.info, seed=seed)
    return row


def report(name: str, runs: dict[str, list[dict[str, Any]]], modalities: list[str]) -> None:
    """Print the tables for one dataset."""
    print(f"\n## {name}\n")
    head = ["method", "accuracy"] + [f"{m}/accuracy" for m in modalities] + [
        f"contrib {m}" for m in modalities] + ["s/run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method, rows in runs.items():
        cells = [method, mean_std([r["test"]["accuracy"] for r in rows])]
        cells += [mean_std([r["test"][f"{m}/accuracy"] for r in rows]) for m in modalities]
        cells += [f"{statistics.mean(r['contribution'][m] for r in rows):.3f}"
                  for m in modalities]
        cells.append(f"{statistics.mean(r['seconds'] for r in rows):.1f}")
        print("| " + " | ".join(cells) + " |")
    subsets = [r["modalities"] for r in next(iter(runs.values()))[0]["missing"]["rows"]]
    print("\nMissing-modality test accuracy (mean over seeds; avg = incomplete subsets):\n")
    print("| method | " + " | ".join("{" + s + "}" for s in subsets) + " | avg |")
    print("|" + "---|" * (len(subsets) + 2))
    for method, rows in runs.items():
        cells = [method] + [_avg(rows, "missing", i) for i in range(len(subsets))]
        cells.append(_avg(rows, "missing", None))
        print("| " + " | ".join(cells) + " |")
    if "frame_drop" in next(iter(runs.values()))[0]:
        rates = [r["rate"] for r in next(iter(runs.values()))[0]["frame_drop"]["rows"]]
        print("\nFrame-drop test accuracy (mean over seeds; avg over rates):\n")
        print("| method | " + " | ".join(f"p={p:.1f}" for p in rates) + " | avg |")
        print("|" + "---|" * (len(rates) + 2))
        for method, rows in runs.items():
            cells = [method] + [_avg(rows, "frame_drop", i) for i in range(len(rates))]
            cells.append(_avg(rows, "frame_drop", None))
            print("| " + " | ".join(cells) + " |")


def main() -> None:
    """Run the comparison and print markdown tables (optionally save raw JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--datasets", default="synthetic,synthetic-seq")
    p.add_argument("--ablations", action="store_true", help="also run Table 4 ablations")
    p.add_argument("--reference", action="store_true",
                   help="also run EBMC with the reference code's options")
    p.add_argument("--impute", action="store_true",
                   help="also run EBMC with CCE imputation of absent modalities (opt-in)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default=None, help="write raw results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods: dict[str, tuple[str, dict[str, Any]]] = {"concat": ("concat", {}),
                                                      "ebmc": ("ebmc", {})}
    if args.reference:
        methods["ebmc (reference options)"] = ("ebmc", REFERENCE)
    if args.impute:
        methods["ebmc (+CCE imputation)"] = ("ebmc", {"cce_impute_missing": True,
                                                     "cce_own_dropout": 0.3})
    if args.ablations:
        methods.update({k: ("ebmc", v) for k, v in ABLATIONS.items()})
    everything: dict[str, Any] = {}
    print(f"epochs {args.epochs}, seeds {seeds}, torch {torch.__version__}")
    for name in args.datasets.split(","):
        dataset, data_kw = PRESETS.get(name, (name, {}))
        data = load_dataset(dataset, **data_kw)
        runs: dict[str, list[dict[str, Any]]] = {}
        for label, (method, mcfg) in methods.items():
            runs[label] = [run_one(dataset, data_kw, method, mcfg, s, args.epochs, data)
                           for s in seeds]
        report(f"{name} ({dataset} {data_kw})", runs, data.info.modality_names)
        everything[name] = runs
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(everything, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
