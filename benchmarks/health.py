"""Method health panel: each specification method at its paper recipe and the shared recipe.

Usage:
    python benchmarks/health.py [--methods scope,decalign,ebmc,udi,infobridge]
        [--datasets synthetic,mfeat,avmnist] [--seeds 0,1,2] [--recipes shared,paper]
        [--out runs/health] [--workers 2] [--markdown health.md] [--set method.KEY=VALUE ...]

For every dataset, recipe and seed it trains the method and the ``concat`` baseline under
the SAME recipe (so concat also runs at each paper recipe) on the bench runner (resumable:
finished runs are read back from ``<out>/results.db``; ``--workers`` processes, one torch
thread each), then prints one table per dataset x recipe: fusion test accuracy mean+-std,
its difference to concat, the weak modality's split read-out and linear probe (both from
every run's ``metrics.json``), the probe's difference to concat, and PASS / FAIL against
the target: fusion >= concat - 1 point and weak-modality probe >= concat's - 2 points
(means over seeds). The weak modality is the one with the lowest concat probe accuracy at
that recipe (no modality name is hard-coded).

Recipes:
    * ``shared``: the toolkit's TrainConfig defaults (Adam 1e-3, weight decay 1e-4, batch 64,
      no schedule), ``--shared-epochs`` (20) with early stopping after ``--patience`` (5)
      epochs without a better validation accuracy.
    * ``<method>-paper``: the paper's optimiser / lr / schedule / batch from
      ``equimodal.presets.PAPER_PRESETS``; the paper's 50-200 epochs are scaled to
      ``--paper-epochs`` (30) for CPU (a cosine schedule anneals over the scaled budget),
      with the same early stopping (DecAlign keeps its own patience of 10).

Ablations: ``--set method.KEY=VALUE`` (repeatable) applies to the specification methods
only (concat keeps its defaults, so its runs are shared with the plain panel in the same
``--out``); ``benchmarks/health_ablations.sh`` uses it to find the component behind each miss.
A ``train.*`` override there (e.g. ``train.patience=0``) changes the method's recipe but not
concat's: a diagnostic, not a panel result.

Data (sizes chosen so the full panel fits ~25 min on 2 cores; see README):
    * ``synthetic``: strengths 1.0 / 0.35, 600 / 200 / 400 samples.
    * ``mfeat``: views ``mor,pix`` (1,200 / 400 / 400).
    * ``avmnist``: vector view (audio MFCC statistics + MNIST pixels, 2,030 / 220 / 250);
      reads the FSDD recordings from ``../shared/data/fsdd`` (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from equimodal.bench.launchers import InlineLauncher, LocalLauncher
from equimodal.bench.runner import run_grid
from equimodal.bench.store import load_results
from equimodal.bench.suite import GridPoint
from equimodal.config import RunConfig, apply_overrides
from equimodal.metrics import mean_std
from equimodal.presets import PAPER_PRESETS

SPEC_METHODS = ("scope", "decalign", "ebmc", "udi", "infobridge")
BASELINE = "concat"
FUSION_TOL = 0.01 + 1e-9  # fusion >= concat - 1 point (exactly 1 point passes)
PROBE_TOL = 0.02 + 1e-9  # weak-modality probe >= concat's - 2 points


@dataclass(frozen=True)
class PanelData:
    """A dataset of the panel: registered name and factory arguments."""

    name: str
    kwargs: dict[str, Any]


DATASETS: dict[str, PanelData] = {
    "synthetic": PanelData("synthetic", {"strengths": [1.0, 0.35], "n_train": 600,
                                         "n_valid": 200, "n_test": 400}),
    "mfeat": PanelData("mfeat", {"views": "mor,pix"}),
    "avmnist": PanelData("avmnist", {}),
}


def recipe_sets(recipe: str, args: argparse.Namespace) -> list[str]:
    """``train.*`` overrides of a recipe (``shared`` or ``<method>-paper``)."""
    common = [f"train.patience={args.patience}", "train.progress=false", "train.device=cpu"]
    if recipe == "shared":
        return [f"train.epochs={args.shared_epochs}", *common]
    preset = PAPER_PRESETS[recipe]
    sets = common + preset.set_args(epochs=args.paper_epochs)
    return sets  # a preset's own patience (DecAlign: 10) comes last and wins


def grid(args: argparse.Namespace) -> list[GridPoint]:
    """Every (dataset, recipe, method, seed) point; labels are ``<dataset>@<recipe>``."""
    points: list[GridPoint] = []
    seen: set[str] = set()
    for label in args.datasets:
        data = DATASETS[label]
        for recipe in recipes(args):
            members = args.methods if recipe == "shared" else [recipe.removesuffix("-paper")]
            for method in [BASELINE, *members]:
                for seed in args.seeds:
                    cfg = RunConfig(method=method, dataset=data.name, data=dict(data.kwargs))
                    extra = [] if method == BASELINE else args.set
                    cfg = apply_overrides(cfg, [*recipe_sets(recipe, args), *extra,
                                                f"train.seed={seed}"])
                    point = GridPoint(cfg, f"{label}@{recipe}")
                    if point.run_id not in seen:
                        seen.add(point.run_id)
                        points.append(point)
    return points


def recipes(args: argparse.Namespace) -> list[str]:
    """Recipe names to run: ``shared`` and/or each selected method's paper preset."""
    out = []
    if "shared" in args.recipes:
        out.append("shared")
    if "paper" in args.recipes:
        out += [f"{m}-paper" for m in args.methods]
    return out


def _mean(values: pd.Series) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not pd.isna(v)]
    if not vals:
        return math.nan, math.nan, 0
    mean, std = mean_std(vals)
    return mean, std, len(vals)


def _pct(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def panel_table(df: pd.DataFrame, label: str, methods: list[str]) -> tuple[str, list[str]]:
    """Markdown table of one ``<dataset>@<recipe>`` label and its misses."""
    runs = df[df["label"] == label]
    done = runs[runs["status"] == "finished"]
    base = done[done["method"] == BASELINE]
    mods = next((list(v) for v in done.get("modalities", []) if isinstance(v, list)), [])
    probes = {m: _mean(base.get(f"test/{m}/probe_accuracy", pd.Series(dtype=float)))[0]
              for m in mods}
    known = {m: v for m, v in probes.items() if not math.isnan(v)}
    weak = min(known, key=lambda m: known[m]) if known else (mods[-1] if mods else "")
    ref_fusion = _mean(base.get("test/accuracy", pd.Series(dtype=float)))[0]
    ref_probe = probes.get(weak, math.nan)
    lines = [f"**{label}** (weak modality: `{weak}`; test accuracy %, mean±std over seeds)", "",
             "| method | seeds | fusion | Δ vs concat | weak read-out | weak probe | "
             "Δprobe vs concat | target |", "|---|---|---|---|---|---|---|---|"]
    misses = []
    for method in [BASELINE, *methods]:
        mine = runs[runs["method"] == method]
        if mine.empty:
            continue
        ok = mine[mine["status"] == "finished"]
        if ok.empty:
            reason = str(mine["reason"].iloc[0] or mine["status"].iloc[0]).splitlines()[0][:80]
            lines.append(f"| {method} | 0 | – | – | – | – | – | {mine['status'].iloc[0]}: "
                         f"{reason} |")
            misses.append(f"{label} {method}: {reason}")
            continue
        fm, fs, n = _mean(ok["test/accuracy"])
        rm, rs, _ = _mean(ok.get(f"test/{weak}/accuracy", pd.Series(dtype=float)))
        pm, ps, _ = _mean(ok.get(f"test/{weak}/probe_accuracy", pd.Series(dtype=float)))
        if method == BASELINE:
            verdict, dfus, dprobe = "reference", math.nan, math.nan
        else:
            dfus, dprobe = fm - ref_fusion, pm - ref_probe
            good = dfus >= -FUSION_TOL and (math.isnan(dprobe) or dprobe >= -PROBE_TOL)
            verdict = "PASS" if good else "FAIL"
            if not good:
                why = []
                if dfus < -FUSION_TOL:
                    why.append(f"fusion {_pct(dfus, True)}")
                if dprobe < -PROBE_TOL:
                    why.append(f"weak probe {_pct(dprobe, True)}")
                verdict += " (" + ", ".join(why) + ")"
                misses.append(f"{label} {method}: " + ", ".join(why))
        lines.append(f"| {method} | {n} | {_pct(fm)}±{_pct(fs)} | {_pct(dfus, True)} | "
                     f"{_pct(rm)}±{_pct(rs)} | {_pct(pm)}±{_pct(ps)} | {_pct(dprobe, True)} | "
                     f"{verdict} |")
    return "\n".join(lines), misses


def report(df: pd.DataFrame, args: argparse.Namespace) -> str:
    """Every dataset x recipe table, then the list of misses."""
    parts, misses = [], []
    for label in args.datasets:
        for recipe in recipes(args):
            lab = f"{label}@{recipe}"
            if (df["label"] == lab).any():
                methods = args.methods if recipe == "shared" else [recipe.removesuffix("-paper")]
                text, miss = panel_table(df, lab, methods)
                parts.append(text)
                misses += miss
    parts.append("**Misses** (target: fusion ≥ concat − 1 point, weak probe ≥ concat − 2 "
                 "points):\n\n" + ("\n".join(f"- {m}" for m in misses) or "- none"))
    return "\n\n".join(parts)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (comma-separated lists)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(SPEC_METHODS))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipes", default="shared,paper", help="shared and/or paper")
    ap.add_argument("--out", default="runs/health", help="bench folder (runs/, results.db)")
    ap.add_argument("--workers", type=int, default=2, help="processes (0: inline)")
    ap.add_argument("--shared-epochs", type=int, default=20)
    ap.add_argument("--paper-epochs", type=int, default=30,
                    help="the papers' 50-200 epochs scaled for CPU")
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--markdown", help="also write the tables to this file")
    ap.add_argument("--report-only", action="store_true", help="print stored results only")
    ap.add_argument("--set", "-s", action="append", default=[], metavar="method.KEY=VALUE",
                    help="override for the specification methods, not concat (ablations); "
                         "train.* changes the method's recipe only (a diagnostic)")
    args = ap.parse_args(argv)
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    args.methods, args.datasets = split(args.methods), split(args.datasets)
    args.seeds, args.recipes = [int(s) for s in split(args.seeds)], split(args.recipes)
    bad = [m for m in args.methods if f"{m}-paper" not in PAPER_PRESETS]
    bad += [d for d in args.datasets if d not in DATASETS]
    if bad:
        ap.error(f"unknown method / dataset: {bad}")
    if any(not s.startswith(("method.", "train.")) for s in args.set):
        ap.error(f"--set takes method.* (or, as a diagnostic, train.*) overrides: {args.set}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the panel and print its tables."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    points = grid(args)
    t0 = time.perf_counter()
    if not args.report_only:
        launcher = LocalLauncher(args.workers) if args.workers > 0 else InlineLauncher()
        summary = run_grid(points, args.out, launcher, threads=1, suite="health")
        print(f"{summary.total} runs ({summary.already} already done, "
              f"{dict(summary.counts)} now) in {summary.wall_seconds:.0f}s "
              f"with {args.workers} worker(s)", file=sys.stderr)
    df = load_results(Path(args.out) / "results.db")
    df = df[df["run_id"].isin({p.run_id for p in points})]
    if "wall_seconds" in df and len(df):
        per = df.groupby(df["label"].str.split("@").str[0])["wall_seconds"].mean()
        print("mean wall seconds per run: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                       per.items()), file=sys.stderr)
    text = report(df, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"total {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
