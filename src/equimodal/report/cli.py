"""``equimodal report`` (sub-command plugin): a self-contained HTML report of a results database.

It lives above :mod:`equimodal.bench` (the report reads the bench's results store and tables;
the bench never imports the report), see "Layering" in ``docs/architecture.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from equimodal.bench.cli import DEFAULT_DB, MAX_AUTO_WORKERS, auto_workers


def _cmd_report(args: argparse.Namespace) -> int:
    from equimodal.report import build_report

    out = Path(args.out) if args.out else Path(args.db).parent / "report.html"
    workers = args.workers if args.workers > 0 else auto_workers()
    path = build_report(args.db, out, tsne=not args.no_tsne, tsne_samples=args.tsne_samples,
                        metric=args.metric, workers=workers, baseline=args.baseline,
                        progress=lambda label: print(f"  rendered {label}", flush=True))
    print(f"report: {path}")
    return 0


def add_report_parser(sub: Any) -> None:
    """Add ``report`` to the ``equimodal`` sub-commands."""
    p = sub.add_parser("report", help="write a self-contained HTML report")
    p.add_argument("--db", default=str(DEFAULT_DB), help=f"database (default {DEFAULT_DB})")
    p.add_argument("--out", help="HTML file (default: report.html next to the database)")
    p.add_argument("--metric", help="metric of the tables (default per task)")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figures")
    p.add_argument("--tsne-samples", type=int, default=100,
                   help="test samples per t-SNE (one run per method)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes rendering datasets in parallel (default: usable cores, "
                        f"at most {MAX_AUTO_WORKERS})")
    p.add_argument("--baseline", default="concat",
                   help="reference method of the paired 'Δ vs' statistics and the balance "
                        "chart (default concat)")
    p.set_defaults(func=_cmd_report)
