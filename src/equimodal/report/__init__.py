"""Self-contained HTML reports of benchmark results (``equimodal report``)."""

from equimodal.report.html import build_report

__all__ = ["build_report"]
