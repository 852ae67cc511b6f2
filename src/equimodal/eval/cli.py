"""``equimodal robustness RUN`` and ``equimodal diagnose RUN`` (sub-commands plugin)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

from equimodal.eval.robustness import DEFAULT_LEVELS, DEFAULT_RATES


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from err


def _load(run: str, split_name: str) -> tuple[Any, Any, Any]:
    from equimodal.config import RunConfig
    from equimodal.engine import load_run
    from equimodal.registry import load_dataset

    result = load_run(run)
    raw = dict(result.config)
    raw.pop("versions", None)
    cfg = RunConfig.from_dict(raw)
    data = load_dataset(cfg.dataset, **cfg.data)
    return result.method, data.split(split_name), cfg


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def format_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """Plain-text table of ``keys`` for each row."""
    keys = [k for k in keys if any(k in r for r in rows)]
    width = [max(len(k), *(len(_fmt(r.get(k, ""))) for r in rows)) for k in keys]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, width, strict=True))]
    for r in rows:
        lines.append("  ".join(_fmt(r.get(k, "")).rjust(w)
                               for k, w in zip(keys, width, strict=True)))
    return "\n".join(lines)


def _headline(kind: str) -> list[str]:
    from equimodal.runargs import HEADLINE

    return HEADLINE.get(kind, ["accuracy"])


def _cmd_robustness(args: argparse.Namespace) -> int:
    from equimodal.eval.diagnostics import protocol_report

    method, split, cfg = _load(args.run, args.split)
    info = method.info
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    report = protocol_report(method, split, info, protocols, args.rates, args.levels,
                             args.seed)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return 0
    metrics = _headline(info.kind)
    if "missing" in report:
        print(f"{args.split} with each subset of modalities present:")
        print(format_rows(report["missing"]["rows"], ["modalities", *metrics]))
        avg = report["missing"]["average"]
        print("average over incomplete subsets: " +
              ", ".join(f"{k}={_fmt(avg[k])}" for k in metrics if k in avg))
    if "frame_drop" in report:
        print(f"\n{args.split} with frames dropped at rate p:")
        print(format_rows(report["frame_drop"]["rows"], ["rate", "dropped_fraction", *metrics]))
    elif "drop" in protocols:
        print("\n(frame drop needs sequence modalities; this dataset has none)")
    if "noise" in report:
        print(f"\n{args.split} with Gaussian feature noise (level x feature std):")
        print(format_rows(report["noise"]["rows"], ["level", *metrics]))
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from equimodal.eval.diagnostics import protocol_report

    method, split, _ = _load(args.run, args.split)
    report = protocol_report(method, split, method.info, ["shapley", "gap", "dirichlet", "votes"],
                             gap_samples=args.samples)
    diag = report.get("diagnostics", {})
    if args.json:
        print(json.dumps(diag, indent=2, sort_keys=True, default=str))
        return 0
    if "shapley" in diag:
        sh = diag["shapley"]
        sign = " (negated: lower is better)" if sh["sign"] < 0 else ""
        print(f"modality contribution (Shapley value of {sh['metric']}{sign}):")
        for m, v in sh["values"].items():
            print(f"  {m:<16} {v:+.4f}  share {_fmt(sh['share'][m])}")
        print(f"  {'no modality':<16} {sh['empty']:+.4f}  (constant-prediction baseline)")
    gaps = diag.get("modality_gap", {})
    if gaps:
        print("modality gap (centroid distance of L2-normalised features):")
        for pair, v in gaps.items():
            print(f"  {pair:<16} {v:.4f}")
    else:
        print("modality gap: no pair of modalities with features of equal size")
    if "votes" in diag:
        votes = diag["votes"]
        print(f"branch votes (fused accuracy {votes['fused_accuracy']:.4f} on {votes['n']} "
              "samples; outvoted: branch right, fused wrong; rescued: the reverse):")
        rows = [{"branch": k, **v} for k, v in votes["branches"].items()]
        print(format_rows(rows, ["branch", "accuracy", "outvoted", "rescued", "median_margin",
                                 "median_margin_outvoted", "logit_std"]))
    for k, v in {**diag.get("dirichlet", {}), **diag.get("method", {})}.items():
        print(f"{k}: {v:.4f}")
    return 0


def add_eval_parsers(sub: Any) -> None:
    """Add ``robustness`` and ``diagnose`` to the ``equimodal`` sub-commands."""
    p = sub.add_parser("robustness", help="missing-modality, frame-drop and noise protocols")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--protocols", default="missing,drop,noise",
                   help="comma-separated: missing, drop, noise")
    p.add_argument("--rates", type=_floats, default=list(DEFAULT_RATES),
                   help="frame-drop rates, e.g. 0,0.1,0.5")
    p.add_argument("--levels", type=_floats, default=list(DEFAULT_LEVELS),
                   help="noise levels in feature standard deviations")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    p.set_defaults(func=_cmd_robustness)

    p = sub.add_parser("diagnose", help="modality contributions (Shapley), modality gap, "
                                        "Dirichlet energy, branch votes")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--samples", type=int, default=1000, help="samples for the modality gap")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_diagnose)
