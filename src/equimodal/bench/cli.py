"""``equimodal bench | results`` (sub-commands plugin; ``report``: :mod:`equimodal.report.cli`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench") / "quick"
DEFAULT_DB = DEFAULT_OUT / "results.db"
MAX_AUTO_WORKERS = 8


def auto_workers() -> int:
    """Default worker count: one per usable core (small models scale better across
    processes than across threads), at most :data:`MAX_AUTO_WORKERS`."""
    from equimodal.bench.launchers import default_threads

    return max(1, min(MAX_AUTO_WORKERS, default_threads(1)))


def _cli_overrides(args: argparse.Namespace) -> list[str]:
    # The same flag -> field mapping as `equimodal train` (runargs.build_run_config); applied
    # after the suite's values so the command line wins.
    sets = []
    for flag, key in (("epochs", "train.epochs"), ("device", "train.device"),
                      ("batch_size", "train.batch_size"), ("lr", "train.lr")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append(f"{key}={value}")
    sets += list(args.set or [])
    return sets


def build_suite(args: argparse.Namespace) -> Any:
    """The suite of a ``bench`` command line: ``--suite`` (default ``quick`` when no
    ``--methods``/``--datasets``), then ``--methods``, ``--datasets``, ``--seeds``."""
    from equimodal.bench.suite import DatasetEntry, Suite, _seeds, load_suite

    if args.suite or not (args.methods or args.datasets):
        suite = load_suite(args.suite or "quick")
    else:
        suite = Suite(name="custom")
    if args.methods:
        suite.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.exclude:
        suite.exclude = [m.strip() for m in args.exclude.split(",") if m.strip()]
    if args.datasets:
        suite.datasets = [DatasetEntry(d.strip()) for d in args.datasets.split(",") if d.strip()]
    if args.seeds is not None:
        value: Any = args.seeds
        try:
            parsed: Any = ([int(s) for s in value.split(",") if s.strip()] if "," in value
                           else int(value))
        except ValueError:
            raise ValueError(f"--seeds expects a count or comma-separated ints, got {value!r}"
                             ) from None
        try:
            suite.seeds = _seeds(parsed)
        except ValueError as err:
            raise ValueError(f"--seeds: {err}") from None
    if args.robustness:
        suite.robustness = True
    if not suite.datasets:
        raise ValueError("no datasets: give --datasets or a suite with [[datasets]]")
    return suite


def _base_config(args: argparse.Namespace) -> Any:
    from equimodal.runargs import build_run_config

    # --config gives the starting RunConfig of every grid point (suite values override it).
    ns = argparse.Namespace(config=args.config, set=[], method=None, data=None)
    return build_run_config(ns)


def _shorten(line: str, width: int = 240) -> str:
    """Cut a long reason in the middle: its end carries the hint (e.g. ``--no-resume``)."""
    if len(line) <= width:
        return line
    keep = (width - 5) // 2
    return f"{line[:keep]} ... {line[-keep:]}"


def _cmd_bench(args: argparse.Namespace) -> int:
    from equimodal.bench.jobs import FINISHED
    from equimodal.bench.launchers import default_threads, make_launcher
    from equimodal.bench.runner import pending, run_grid
    from equimodal.bench.store import ResultStore, load_results
    from equimodal.bench.suite import expand
    from equimodal.bench.tables import all_tables, render
    from equimodal.bench.tracking import make_trackers
    from equimodal.registry import DATASETS, METHODS, check_kwargs

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers} (leave it out for one "
                         "per usable core)")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    suite = build_suite(args)
    if args.workers is None:
        args.workers = auto_workers()
    overrides = _cli_overrides(args)
    if args.no_progress or args.workers > 1:
        overrides.append("train.progress=false")  # bars from parallel workers interleave
    base = _base_config(args) if args.config else None
    methods = METHODS.names()
    for name in suite.methods:
        if name != "all":
            METHODS.get(name)  # unknown names fail now, with a did-you-mean
    for entry in suite.datasets:
        if not entry.optional:
            DATASETS.get(entry.name)  # a typo fails now, not once per run
    points = expand(suite, methods, overrides, base=base)
    for p in points:  # unknown data.* arguments also fail now, once
        if p.cfg.dataset in DATASETS:
            check_kwargs(DATASETS.get(p.cfg.dataset), p.cfg.data,
                         f"dataset {p.cfg.dataset!r} (data.*)")
    out = Path(args.out) if args.out else Path("bench") / suite.name
    store = ResultStore(Path(args.db) if args.db else out / "results.db")
    if args.dry_run:
        status = store.status_map()
        # A finished run whose data or method settings changed since is trained again.
        to_train = {p.run_id for p in pending(points, store, out / "runs", suite.robustness)[0]}
        for p in points:
            state = status.get(p.run_id, ("new", False))[0]
            if state == FINISHED and p.run_id in to_train:
                state = "stale"
            print(f"{p.run_id}  {state:<9} {p.cfg.method:<14} {p.label:<22} "
                  f"seed {p.cfg.train.seed}")
        print(f"{len(points)} runs")
        return 0
    threads = args.threads or default_threads(args.workers)
    launcher = make_launcher(args.backend, args.workers, threads, args.address, args.gpus)
    trackers = make_trackers([t for t in (args.log_to or "").split(",") if t], out)
    devices: list[str] = []
    if args.backend == "local" and args.workers > 1:
        import torch

        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    todo = len(pending(points, store, out / "runs", suite.robustness)[0])
    done = [0]

    def on_record(record: dict[str, Any]) -> None:
        done[0] += 1
        extra = f": {_shorten(record['reason'].splitlines()[0])}" if record.get("reason") else ""
        reused = ", reused" if record.get("reused") else ""
        print(f"[{done[0]}/{todo}] {record['status']:<8} {record['method']} on "
              f"{record['label']} seed {record['seed']} ({record.get('wall_seconds') or 0:.1f}s"
              f"{reused}){extra}", flush=True)
        for track in trackers:
            try:
                track(record)
            except Exception as err:  # noqa: BLE001 - logging must not stop the grid
                log.warning("tracker failed for %s: %s", record["run_id"], err)

    print(f"suite {suite.name}: {len(points)} runs ({len(points) - todo} already finished), "
          f"{args.backend} backend, {args.workers} worker(s) x {threads} thread(s) -> {out}",
          flush=True)
    summary = run_grid(points, out, launcher, store, suite.robustness, threads, suite.name,
                       devices, on_record, resume=not args.no_resume)
    counts = summary.counts
    by_other = f" ({summary.elsewhere} by another bench)" if summary.elsewhere else ""
    print(f"done in {summary.wall_seconds:.1f}s: {summary.already} already finished{by_other}, "
          f"{counts['finished']} finished, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; results in {store.path}")
    df = load_results(store.path)
    ids = {p.run_id for p in points}
    tables = all_tables(df[df["run_id"].isin(ids)], methods=suite.methods
                        if "all" not in suite.methods else None)
    if tables and not args.quiet:
        print()
        print(render(tables, "markdown"))
    if counts["failed"] and args.strict:
        return 1
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from equimodal.bench.store import load_results
    from equimodal.bench.tables import all_tables, render, runs_table, transpose

    split = lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None  # noqa: E731
    df = load_results(args.db, split(args.method), split(args.dataset), split(args.status))
    if args.format in ("markdown", "latex"):
        tables = all_tables(df, args.metric, baseline=args.baseline)
        if args.transpose:  # only the per-modality layout has methods as columns
            tables = [transpose(t) if t.rank_along == "row" else t for t in tables]
        print(render(tables, args.format))
        return 0
    if args.format == "json":
        cols = [c for c in df.columns if c not in ("traceback",)]
        print(df[cols].to_json(orient="records", indent=2, default_handler=str))
        return 0
    if args.format == "csv":
        flat = df.drop(columns=[c for c in ("config", "metrics", "robustness", "timings",
                                            "versions", "modalities", "traceback")
                                if c in df.columns])
        flat.to_csv(sys.stdout, index=False)
        return 0
    table = runs_table(df)
    print(table.to_string(index=False) if not table.empty else "no runs")
    if not table.empty:
        from equimodal.bench.stats import paired_frame

        diffs = paired_frame(df, args.baseline, args.metric)
        if not diffs.empty:
            print(f"\npaired differences to {args.baseline} on matched seeds (test split; "
                  "rates in percentage points): mean and 95 % t-interval over seeds; "
                  "sig * = the interval excludes 0")
            print(diffs.to_string(index=False))
    return 0


def add_bench_parsers(sub: Any) -> None:
    """Add ``bench`` and ``results`` to the ``equimodal`` sub-commands."""
    from equimodal.runargs import add_run_arguments

    p = sub.add_parser("bench", help="run a grid of methods x datasets x seeds (resumable)")
    p.add_argument("--suite", help="built-in suite name (quick) or a TOML file")
    p.add_argument("--methods", help="comma-separated methods, or 'all'")
    p.add_argument("--exclude", help="comma-separated methods dropped from 'all'")
    p.add_argument("--datasets", help="comma-separated registered datasets "
                                      "(arguments with -s data.key=value)")
    p.add_argument("--seeds", help="number of seeds (default 5) or a comma-separated list")
    p.add_argument("--out", help="bench folder (default bench/<suite name>)")
    p.add_argument("--db", help="results database (default <out>/results.db)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (local) / CPUs of a local Ray instance; "
                        f"default: the usable cores, at most {MAX_AUTO_WORKERS}; 1 runs in "
                        "this process")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (default: cores / workers)")
    p.add_argument("--backend", default="local", choices=["local", "ray"])
    p.add_argument("--address", help="Ray cluster address (default: start a local instance)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per run on Ray")
    p.add_argument("--robustness", action="store_true",
                   help="also evaluate robustness protocols and diagnostics per run")
    p.add_argument("--log-to", help="also log to mlflow and/or tensorboard (comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="list the grid and exit")
    p.add_argument("--quiet", action="store_true", help="do not print the tables at the end")
    p.add_argument("--strict", action="store_true", help="exit with 1 when a run failed")
    p.add_argument("--no-resume", action="store_true",
                   help="start unfinished runs from scratch (ignore their last.pt, e.g. a "
                        "corrupt one); finished runs are still reused")
    add_run_arguments(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("results", help="query the results database")
    p.add_argument("--db", default=str(DEFAULT_DB), help=f"database (default {DEFAULT_DB})")
    p.add_argument("--method", help="comma-separated methods")
    p.add_argument("--dataset", help="comma-separated datasets or labels")
    p.add_argument("--status", help="finished, skipped or failed (comma-separated)")
    p.add_argument("--format", default="table",
                   choices=["table", "csv", "json", "markdown", "latex"],
                   help="table/csv/json: one line per run; markdown/latex: paper tables")
    p.add_argument("--metric", help="metric of the paper tables (default per task)")
    p.add_argument("--transpose", action="store_true",
                   help="methods as rows in the per-modality tables (easier with many methods)")
    p.add_argument("--baseline", default="concat",
                   help="reference method of the paired 'Δ vs' statistics (default concat)")
    p.set_defaults(func=_cmd_results)
