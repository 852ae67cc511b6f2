"""Figures of the HTML report, rendered with matplotlib's Agg backend to base64 PNG.

Every function takes plain aggregated data and returns the PNG as a base64 string (or
``None`` when there is nothing to draw), so the HTML stays self-contained.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Series = tuple[Sequence[float], Sequence[float], Sequence[float]]  # x, mean, std


def to_base64(fig: Any, dpi: int = 80) -> str:
    """Encode a figure as base64 PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, cols: int = 4, size: float = 3.0) -> tuple[Any, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * 0.8 * rows),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _band(ax: Any, series: Series, label: str) -> None:
    x, m, s = (np.asarray(v, dtype=float) for v in series)
    ax.plot(x, m, label=label, lw=1.4)
    if len(x) > 1 and np.isfinite(s).any():
        ax.fill_between(x, m - s, m + s, alpha=0.15)


def line_panels(panels: Mapping[str, Mapping[str, Series]], xlabel: str, ylabel: str,
                cols: int = 4, legend_outside: bool = False, size: float = 3.0,
                symlog: Sequence[str] = ()) -> str | None:
    """One subplot per panel, one line (mean ± std band) per series.

    Args:
        panels: Panel title -> series name -> ``(x, mean, std)``.
        xlabel: X axis label.
        ylabel: Y axis label.
        cols: Subplots per row.
        legend_outside: One shared legend under the figure instead of one per panel.
        size: Width of a subplot in inches.
        symlog: Panels with a symmetric-log y axis (losses of very different scales).
    """
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return None
    fig, axes = _grid(len(panels), cols, size)
    for ax, (title, series) in zip(axes, panels.items(), strict=True):
        for name, s in series.items():
            _band(ax, s, name)
        if title in symlog:
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not legend_outside:
            ax.legend(fontsize=6)
    if legend_outside:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7,
                   bbox_to_anchor=(0.5, -0.02 - 0.02 * math.ceil(len(labels) / 6)))
    fig.tight_layout()
    return to_base64(fig)


def grouped_bars(groups: Sequence[str], bars: Mapping[str, Sequence[tuple[float, float]]],
                 ylabel: str, title: str = "") -> str | None:
    """Grouped bar chart: x = groups (e.g. modality subsets), one bar per series (method).

    Args:
        groups: Group names along x.
        bars: Series name -> ``(mean, std)`` per group.
        ylabel: Y label.
        title: Title.
    """
    if not groups or not bars:
        return None
    n = len(bars)
    width = 0.8 / n
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(min(16.0, max(5.0, 0.15 * n * len(groups) + 2)), 3.2))
    for i, (name, vals) in enumerate(bars.items()):
        mean = [v[0] for v in vals]
        std = [0.0 if not math.isfinite(v[1]) else v[1] for v in vals]
        ax.bar(x + (i - (n - 1) / 2) * width, mean, width, yerr=std, label=name, capsize=1.5)
    many = len(groups) > 8
    ax.set_xticks(x, groups, fontsize=7 if many else 8, rotation=60 if many else 0,
                  ha="right" if many else "center")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=min(6, n), loc="lower left", bbox_to_anchor=(0.0, 1.0),
              frameon=False)
    fig.tight_layout()
    return to_base64(fig)


def scatter_grid(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                 continuous: bool = False) -> str | None:
    """t-SNE scatter plots: one row per method, one column per embedding.

    Args:
        panels: Row name (method) -> column name (modality / ``fused``) ->
            ``(points [N, 2], colour values [N])``.
        continuous: Colour by a continuous value (regression) instead of classes.
    """
    rows = [r for r, cols in panels.items() if cols]
    if not rows:
        return None
    names = list(dict.fromkeys(c for r in rows for c in panels[r]))
    fig, axes = plt.subplots(len(rows), len(names), squeeze=False,
                             figsize=(2.3 * len(names), 2.1 * len(rows)))
    cmap = "viridis" if continuous else "tab10"
    for i, r in enumerate(rows):
        for j, c in enumerate(names):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if c not in panels[r]:
                ax.axis("off")
                continue
            pts, color = panels[r][c]
            ax.scatter(pts[:, 0], pts[:, 1], c=color, cmap=cmap, s=5, alpha=0.8,
                       linewidths=0)
            if i == 0:
                ax.set_title(c, fontsize=9)
            if j == 0:
                ax.set_ylabel(r, fontsize=9)
    fig.tight_layout()
    return to_base64(fig)


def balance_scatter(points: Mapping[str, tuple[float, float, float, float]], xlabel: str,
                    ylabel: str, vlines: Mapping[str, float] | None = None,
                    hlines: Mapping[str, float] | None = None,
                    title: str = "") -> str | None:
    """The balance chart: one point per method with seed error bars and reference lines.

    Args:
        points: Method -> ``(x mean, x std, y mean, y std)``, e.g. fusion test accuracy and
            the weak modality's probe accuracy.
        xlabel: X label.
        ylabel: Y label.
        vlines: Label -> x of a vertical reference line (e.g. concat's fusion accuracy).
        hlines: Label -> y of a horizontal reference line (e.g. the unimodal weak score).
        title: Title.
    """
    pts = {k: v for k, v in points.items() if math.isfinite(v[0]) and math.isfinite(v[2])}
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    styles = ("--", ":", "-.")
    for i, (name, x) in enumerate((vlines or {}).items()):
        if math.isfinite(x):
            ax.axvline(x, color="0.35", ls=styles[i % 3], lw=1, label=name)
    for i, (name, y) in enumerate((hlines or {}).items()):
        if math.isfinite(y):
            ax.axhline(y, color="tab:red", ls=styles[i % 3], lw=1, label=name)
    for name, (xm, xs, ym, ys) in pts.items():
        err = [0.0 if not math.isfinite(v) else v for v in (xs, ys)]
        ax.errorbar(xm, ym, xerr=err[0], yerr=err[1], fmt="o", ms=4, capsize=2, lw=0.8,
                    color="tab:blue" if name != "concat" else "black")
        ax.annotate(name, (xm, ym), xytext=(3, 3), textcoords="offset points", fontsize=6)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if vlines or hlines:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return to_base64(fig)
