"""InfoBridge vs the plain InfoNCE baseline vs concatenation, over seeds.

Test accuracy (fused and per modality, from the split concat layer) as mean +- std, with
model selection on validation only. Datasets that are not registered (``equimodal list``)
are skipped with a note.

Usage::

    python benchmarks/compare_infobridge.py                       # 3 seeds, 30 epochs
    python benchmarks/compare_infobridge.py --variants ablations  # + Table 2 / 3 variants
    python benchmarks/compare_infobridge.py --datasets synthetic --seeds 0 1 --epochs 5
    python benchmarks/compare_infobridge.py --datasets synthetic --fig3   # Fig. 3 diagnostic
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from equimodal.config import RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.methods.infobridge import ABLATIONS, CONTEXT_VARIANTS
from equimodal.registry import DATASETS

log = logging.getLogger("compare_infobridge")

#: Label -> (registered dataset, factory keyword arguments).
DATASETS_USED: dict[str, tuple[str, dict[str, Any]]] = {
    "synthetic": ("synthetic", {"strengths": [1.0, 0.35]}),
    "synthetic_noisy": ("synthetic", {"strengths": [1.0, 0.35], "noise": 2.5}),
    "synthetic3": ("synthetic", {"modalities": ["a", "b", "c"], "strengths": [1.0, 0.35, 0.35]}),
    "avmnist": ("avmnist", {}),
    "mfeat": ("mfeat", {"views": "mor,pix"}),  # weak 6-d morphology vs strong pixels
}

#: Label -> (method, method_cfg).
BASE: dict[str, tuple[str, dict[str, Any]]] = {
    "concat": ("concat", {}),
    "infonce": ("infonce", {}),
    "infobridge": ("infobridge", {}),
}


def variants(kind: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The runs to compare: the three methods, optionally + ablations / choices of T."""
    runs = dict(BASE)
    if kind in ("ablations", "all"):
        runs.update({f"ib:{k}": ("infobridge", v) for k, v in ABLATIONS.items() if k != "full"})
    if kind in ("contexts", "all"):
        runs.update({f"ib:{k}": ("infobridge", v) for k, v in CONTEXT_VARIANTS.items()
                     if k != "semantics"})
    return runs


def run_one(method: str, method_cfg: dict[str, Any], dataset: str, seed: int,
            epochs: int) -> dict[str, float]:
    """Train one configuration and return its test metrics."""
    name, kwargs = DATASETS_USED.get(dataset, (dataset, {}))
    cfg = RunConfig(method=method, dataset=name, data=dict(kwargs),
                    method_cfg=dict(method_cfg),
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu"))
    res = fit(cfg)
    return dict(res.test)


def fig3(dataset: str, alphas: list[float], seed: int, epochs: int) -> None:
    """Fig. 3: cross-modal Gaussian-kernel distances on the test split as alpha grows."""
    from equimodal.eval.diagnostics_kernel import split_kernel_distances
    from equimodal.registry import load_dataset

    name, kwargs = DATASETS_USED.get(dataset, (dataset, {}))
    data = load_dataset(name, **kwargs)
    print(f"\nFig. 3 on {dataset} (seed {seed}, {epochs} epochs; kernel sigma 1 on "
          "L2-normalised features)")
    print(f"{'alpha':>6}{'accuracy':>10}{'paired':>9}{'within':>9}{'between':>9}{'overall':>9}")
    for alpha in alphas:
        cfg = RunConfig(method="infobridge", dataset=name, data=dict(kwargs),
                        method_cfg={"alpha": alpha},
                        train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu"))
        res = fit(cfg, data=data)
        d = split_kernel_distances(res.method, data.test)
        print(f"{alpha:>6.2f}{100 * res.test['accuracy']:>10.2f}{d['paired']:>9.4f}"
              f"{d['within_class']:>9.4f}{d['between_class']:>9.4f}{d['overall']:>9.4f}")


def summarise(values: list[float]) -> str:
    """``mean +- std`` in percent."""
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:6.2f} +- {std:4.2f}"


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print one table per dataset."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS_USED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--variants", default="base", choices=["base", "ablations", "contexts", "all"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--out", type=Path, default=None, help="write raw results as JSON here")
    p.add_argument("--fig3", nargs="*", type=float, default=None, metavar="ALPHA",
                   help="instead: Fig. 3 kernel distances for these alphas (default 0 .1 .5 1)"
                        " on the first dataset, first seed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.fig3 is not None:
        fig3(args.datasets[0], args.fig3 or [0.0, 0.1, 0.5, 1.0], args.seeds[0], args.epochs)
        return
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    for dataset in args.datasets:
        name = DATASETS_USED.get(dataset, (dataset, {}))[0]
        if name not in DATASETS:
            log.info("skipping %s: not registered", dataset)
            continue
        raw[dataset] = {}
        for label, (method, mcfg) in variants(args.variants).items():
            t0 = time.perf_counter()
            raw[dataset][label] = [run_one(method, mcfg, dataset, s, args.epochs)
                                   for s in args.seeds]
            log.info("%s %s done in %.0fs", dataset, label, time.perf_counter() - t0)
        mods = sorted({k.split("/")[0] for r in raw[dataset]["concat"] for k in r if "/" in k})
        header = f"{'method':<26}{'accuracy':>16}" + "".join(f"{m + '/acc':>16}" for m in mods)
        print(f"\n{dataset} (test accuracy %, {len(args.seeds)} seeds, {args.epochs} epochs)")
        print(header)
        for label, runs in raw[dataset].items():
            row = f"{label:<26}{summarise([r['accuracy'] for r in runs]):>16}"
            row += "".join(f"{summarise([r[f'{m}/accuracy'] for r in runs]):>16}" for m in mods)
            print(row)
    if args.out is not None:
        args.out.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
