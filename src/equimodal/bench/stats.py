"""Paired statistics against a reference method: does a method differ from it beyond noise?

For one dataset label and one metric, every method is compared with the baseline (default
``concat``) on **matched seeds** only: a seed counts when both the method and the baseline
have a finished run with that seed (the newest run per point, as in the tables). The per-seed
differences ``d_s = method_s - baseline_s`` share the seed's data split, initialisation and
batch order, so their spread is the seed noise of the *difference*, smaller than the two
methods' own spreads combined.

The interval is a two-sided 95 % Student-t interval over seeds,
``mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n)`` (``sd`` with ``ddof=1``); with fewer than two
matched seeds there is no interval. A difference is *marked* (``*``) when its interval
excludes 0. With 3 seeds ``t_{0.975, 2} = 4.30``: only consistent differences are marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from scipy import stats as _st

#: Reference method of the paired comparison unless ``--baseline`` says otherwise.
DEFAULT_BASELINE = "concat"
#: Marker of a difference whose 95 % interval excludes 0.
MARK = "*"
_DEFAULT_KEY = {"classification": "accuracy", "multilabel": "f1_macro", "regression": "mae"}
_RAW = ("mae", "mse", "corr", "r2", "gap", "energy")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of ``values``.

    Args:
        values: Observations (here: per-seed differences).
        level: Coverage (default 0.95).

    Returns:
        ``(mean, low, high)``; ``low``/``high`` are ``nan`` with fewer than two values, and
        ``mean`` is ``nan`` with none.
    """
    vals = [float(v) for v in values if math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(vals) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class Paired:
    """A method's per-seed difference to the baseline on one dataset and metric.

    Attributes:
        method: Compared method.
        baseline: Reference method.
        metric: Metric name (``accuracy``, ``mae``...): decides scale and direction.
        seeds: Matched seeds, sorted.
        diffs: ``method - baseline`` per matched seed (same order as ``seeds``).
        mean: Mean difference (``nan`` without matched seeds).
        low: Lower end of the 95 % t-interval (``nan`` with fewer than 2 seeds).
        high: Upper end.
    """

    method: str
    baseline: str
    metric: str
    seeds: list[int]
    diffs: list[float]
    mean: float
    low: float
    high: float

    @property
    def n(self) -> int:
        """Number of matched seeds."""
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        """Whether the 95 % interval excludes 0."""
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)

    @property
    def scale(self) -> float:
        """Percentage points for rates, raw units for errors and correlations."""
        return 1.0 if self.metric.endswith(_RAW) else 100.0

    def text(self, mark: str = MARK) -> str:
        """``+1.23 [0.40, 2.06]*`` (percentage points for rates), ``+1.23 (1 seed)`` or ``–``."""
        if self.method == self.baseline:
            return "ref."
        if not math.isfinite(self.mean):
            return "–"
        d = 3 if self.scale == 1.0 else 2
        s = self.scale
        if not math.isfinite(self.low):
            return f"{self.mean * s:+.{d}f} ({self.n} seed)"
        return (f"{self.mean * s:+.{d}f} [{self.low * s:+.{d}f}, {self.high * s:+.{d}f}]"
                + (mark if self.significant else ""))


def metric_for(task: str | None, metric: str | None = None) -> str:
    """The compared metric: ``metric`` for classification / multilabel, else per task."""
    if task == "regression":
        return "mae"
    return metric or _DEFAULT_KEY.get(task or "classification", "accuracy")


def _newest(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "updated_at" not in runs:
        return runs
    return runs.sort_values("updated_at", kind="stable").drop_duplicates(
        ["method", "label", "seed"], keep="last")


def paired(df: pd.DataFrame, label: str, baseline: str = DEFAULT_BASELINE,
           metric: str | None = None, key: str | None = None) -> dict[str, Paired]:
    """Paired differences of every method to ``baseline`` on one dataset label.

    Args:
        df: :func:`~equimodal.bench.store.load_results` frame.
        label: Dataset label.
        baseline: Reference method.
        metric: Metric of classification / multilabel data (default per task).
        key: Column compared (default ``test/<metric>``, the fusion score).

    Returns:
        Method -> :class:`Paired` (the baseline maps to itself, all zeros); empty when the
        baseline has no finished run on this label.
    """
    runs = _newest(df[(df["label"] == label) & (df["status"] == "finished")])
    task = next((t for t in runs.get("task", pd.Series(dtype=object)) if t), None)
    metric = metric_for(task, metric)
    key = key or f"test/{metric}"
    if runs.empty or key not in runs:
        return {}

    def scores(method: str) -> dict[int, float]:
        part = runs[runs["method"] == method]
        return {int(s): float(v) for s, v in zip(part["seed"], part[key], strict=True)
                if v is not None and not pd.isna(v)}

    ref = scores(baseline)
    if not ref:
        return {}
    out: dict[str, Paired] = {}
    for method in sorted(runs["method"].unique()):
        mine = scores(str(method))
        seeds = sorted(set(mine) & set(ref))
        diffs = [mine[s] - ref[s] for s in seeds]
        mean, low, high = t_interval(diffs)
        out[str(method)] = Paired(str(method), baseline, metric, seeds, diffs, mean, low, high)
    return out


def paired_frame(df: pd.DataFrame, baseline: str = DEFAULT_BASELINE,
                 metric: str | None = None) -> pd.DataFrame:
    """All labels' paired differences as one frame (``equimodal results``).

    Columns: dataset, method, metric, seeds (matched), delta, ci_low, ci_high, sig (``*``);
    rates in percentage points.
    """
    rows = []
    for label in sorted(df["label"].unique()) if not df.empty else []:
        for p in paired(df, label, baseline, metric).values():
            if p.method == baseline:
                continue
            s = p.scale
            rows.append({"dataset": label, "method": p.method, "metric": p.metric,
                         "seeds": p.n, "delta": round(p.mean * s, 3),
                         "ci_low": round(p.low * s, 3), "ci_high": round(p.high * s, 3),
                         "sig": MARK if p.significant else ""})
    return pd.DataFrame(rows)
