"""Self-contained HTML reports of benchmark results (``equimodal report``)."""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports ``equimodal.report.cli`` to build its parser, which should not
    # pay for pandas and matplotlib.
    if name == "build_report":
        from equimodal.report.html import build_report

        return build_report
    raise AttributeError(f"module 'equimodal.report' has no attribute {name!r}")
