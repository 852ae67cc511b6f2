"""Benchmarking: hashed, resumable sweeps over methods x datasets x seeds, a SQLite results
store, paper-style tables, and local-process / Ray launchers.

Python API::

    from equimodal.bench import expand, load_suite, run_grid, load_results
    from equimodal.bench.launchers import make_launcher
    from equimodal.registry import METHODS

    suite = load_suite("quick")
    points = expand(suite, METHODS.names())
    run_grid(points, "bench/quick", make_launcher("local", workers=2, threads=1))
    df = load_results("bench/quick/results.db")
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports: the CLI imports ``equimodal.bench.cli`` to build its parser, which should
# not pay for pandas and torch.
_EXPORTS = {
    "GridSummary": "runner", "run_grid": "runner",
    "ResultStore": "store", "load_results": "store",
    "DatasetEntry": "suite", "GridPoint": "suite", "Suite": "suite", "expand": "suite",
    "load_suite": "suite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'equimodal.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"equimodal.bench.{_EXPORTS[name]}"), name)
