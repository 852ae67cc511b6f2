"""Method health (issue 18) for DecAlign and InfoBridge: fusion accuracy, the split read-out,
feature norms and a linear probe on frozen features, against concat, at the paper recipe and
at the shared recipe. Test accuracy, selection on validation only.

Usage::

    python benchmarks/health_feature_probe.py --methods concat infobridge \
        --datasets synthetic mfeat --recipes paper shared --seeds 0 1 2 \
        --out health_feature_probe.json
    python benchmarks/health_feature_probe.py --methods infobridge \
        --method-cfg '{"normalize": false}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from equimodal.config import RunConfig, TrainConfig
from equimodal.engine import fit
from equimodal.registry import load_dataset

DATASETS_USED: dict[str, tuple[str, dict[str, Any]]] = {
    "synthetic": ("synthetic", {"strengths": [1.0, 0.35]}),
    "mfeat": ("mfeat", {"views": "mor,pix"}),
}

#: Paper recipes (papers + implementation-facts): InfoBridge Sec. 4.1 (SGD 0.9, lr 0.01,
#: cosine, batch 128, wd 1e-4); DecAlign (Adam, ReduceLROnPlateau, clip 0.8; lr not stated:
#: 1e-3). Concat runs under the same recipe as the method it is compared with.
PAPER: dict[str, dict[str, Any]] = {
    "infobridge": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "scheduler": "cosine",
                   "batch_size": 128, "weight_decay": 1e-4},
    "decalign": {"optimizer": "adam", "lr": 1e-3, "scheduler": "plateau", "clip_norm": 0.8},
}


@torch.no_grad()
def features(method: Any, split: Any, bs: int = 256
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Frozen per-modality features (eval mode) and targets of a split."""
    method.eval()
    out: dict[str, list[torch.Tensor]] = {}
    ys = []
    for start in range(0, len(split), bs):
        b = split.batch(torch.arange(start, min(start + bs, len(split))))
        o = method(b)
        for n, f in o.features.items():
            out.setdefault(n, []).append(f.float().flatten(1))
        ys.append(b.target)
    return {n: torch.cat(v) for n, v in out.items()}, torch.cat(ys)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_cls: int, wd: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + wd * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(tr: torch.Tensor, ytr: torch.Tensor, va: torch.Tensor, yva: torch.Tensor,
                 te: torch.Tensor, yte: torch.Tensor, n_cls: int) -> float:
    """Multinomial logistic regression (L-BFGS) on standardised features; weight decay picked
    on valid from {1e-4, 1e-3, 1e-2, 1e-1}; test accuracy of the picked one."""
    mu, sd = tr.mean(0), tr.std(0).clamp_min(1e-6)
    tr, va, te = ((x - mu) / sd for x in (tr, va, te))
    best = (-1.0, 0.0)
    for wd in (1e-4, 1e-3, 1e-2, 1e-1):
        w, b = _fit_logistic(tr, ytr, n_cls, wd)
        with torch.no_grad():
            acc_va = float(((va @ w + b).argmax(1) == yva).float().mean())
            acc_te = float(((te @ w + b).argmax(1) == yte).float().mean())
        if acc_va > best[0]:
            best = (acc_va, acc_te)
    return best[1]


def run_one(method: str, mcfg: dict[str, Any], dataset: str, recipe: dict[str, Any],
            seed: int, epochs: int) -> dict[str, float]:
    name, kwargs = DATASETS_USED[dataset]
    data = load_dataset(name, **kwargs)
    cfg = RunConfig(method=method, dataset=name, data=dict(kwargs), method_cfg=dict(mcfg),
                    train=TrainConfig(epochs=epochs, seed=seed, progress=False, device="cpu",
                                      **recipe))
    res = fit(cfg, data=data)
    row = {k: float(v) for k, v in res.test.items() if k == "accuracy" or k.endswith("/accuracy")}
    ftr, ytr = features(res.method, data.train)
    fva, yva = features(res.method, data.valid)
    fte, yte = features(res.method, data.test)
    for n in ftr:
        row[f"{n}/probe"] = linear_probe(ftr[n], ytr, fva[n], yva, fte[n], yte,
                                         data.info.num_outputs)
        row[f"{n}/norm"] = float(fte[n].norm(dim=1).mean())
    for k, v in res.history[-1].items():
        if "marginal_error" in k:
            row[k] = float(v)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["concat", "decalign", "infobridge"])
    p.add_argument("--method-cfg", default="{}", help="JSON overrides for the non-concat runs")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS_USED))
    p.add_argument("--recipes", nargs="+", default=["paper", "shared"])
    p.add_argument("--paper-of", default="infobridge", help="concat's paper recipe source")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    extra = json.loads(args.method_cfg)
    raw: dict[str, list[dict[str, float]]] = {}
    for dataset in args.datasets:
        for recipe_name in args.recipes:
            for method in args.methods:
                src = args.paper_of if method == "concat" else method
                recipe = PAPER.get(src, {}) if recipe_name == "paper" else {}
                key = f"{dataset}|{recipe_name}|{method}"
                t0 = time.perf_counter()
                raw[key] = [run_one(method, {} if method == "concat" else extra, dataset,
                                    recipe, s, args.epochs) for s in args.seeds]
                keys = sorted(raw[key][0])
                summary = "  ".join(
                    f"{k} {100 * statistics.fmean(r[k] for r in raw[key]):.2f}"
                    if not k.endswith(("norm", "error")) else
                    f"{k} {statistics.fmean(r[k] for r in raw[key]):.3g}" for k in keys)
                print(f"{key} ({time.perf_counter() - t0:.0f}s): {summary}", flush=True)
                if args.out is not None:
                    args.out.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
