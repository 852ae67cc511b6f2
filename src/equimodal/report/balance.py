"""The balance chart of a dataset: fusion accuracy versus how much the weak modality learned.

One point per method (mean over seeds, error bars = std over seeds): x = the fused model's
test score, y = the weak modality's test score measured by a linear probe on the method's
own features (``test/<modality>/probe_accuracy``, regression ``probe_mae``) when the runs
stored it, else the modality's read-out head (``test/<modality>/<metric>``), and the axis
label says which. The *weak* modality is the one with the lower unimodal-baseline score
(the ``unimodal`` method's per-modality score), or, without unimodal runs, the lower score
of the reference method's (``concat``) read-outs. Reference lines: the reference method's
fusion score (vertical), its weak-modality score and the unimodal weak score (horizontal).

A method right of the vertical line fuses better than the reference; one above the dashed
horizontal line learned more from the weak modality. The toolkit's question, "does
balancing the modalities pay?", is whether points move up *and* right.
"""

from __future__ import annotations

import math

import pandas as pd

from equimodal.metrics import mean_std
from equimodal.report import plots

_LOWER_BETTER = ("mae", "mse", "loss")


def _values(runs: pd.DataFrame, key: str) -> list[float]:
    if key not in runs:
        return []
    return [float(v) for v in runs[key] if v is not None and not pd.isna(v)
            and math.isfinite(float(v))]


def _mean(runs: pd.DataFrame, key: str) -> float:
    vals = _values(runs, key)
    return sum(vals) / len(vals) if vals else math.nan


def weak_modality(done: pd.DataFrame, mods: list[str], metric: str,
                  baseline: str = "concat") -> tuple[str | None, str]:
    """The weak modality and where its rank came from (``unimodal`` or the baseline).

    Args:
        done: Finished runs of one dataset label.
        mods: The data's modalities.
        metric: Score compared (lower is better for errors).
        baseline: Reference method whose read-outs decide without unimodal runs.

    Returns:
        ``(modality or None, source method)``.
    """
    sign = 1.0 if not metric.endswith(_LOWER_BETTER) else -1.0
    for source in ("unimodal", baseline):
        runs = done[done["method"] == source]
        scores = {m: _mean(runs, f"test/{m}/{metric}") for m in mods}
        scores = {m: v for m, v in scores.items() if math.isfinite(v)}
        if len(scores) >= 2:
            return min(scores, key=lambda m: sign * scores[m]), source
    return None, ""


def balance_section(done: pd.DataFrame, mods: list[str], metric: str,
                    baseline: str = "concat") -> str:
    """``<h3>`` + explanation + the balance chart (empty string when nothing to draw)."""
    if done.empty or len(mods) < 2:
        return ""
    weak, source = weak_modality(done, mods, metric, baseline)
    if weak is None:
        return ""
    probe_metric = "probe_mae" if metric.endswith(_LOWER_BETTER) else "probe_accuracy"
    probe_key = f"test/{weak}/{probe_metric}"
    use_probe = bool(_values(done, probe_key))
    ykey = probe_key if use_probe else f"test/{weak}/{metric}"
    ylabel = (f"{weak}: linear-probe {metric} (test)" if use_probe
              else f"{weak}: read-out {metric} (test; no probe metric stored)")
    points = {}
    for method, runs in done.groupby("method"):
        xs, ys = _values(runs, f"test/{metric}"), _values(runs, ykey)
        if xs and ys:
            points[str(method)] = (*mean_std(xs), *mean_std(ys))
    ref = done[done["method"] == baseline]
    uni = done[done["method"] == "unimodal"]
    vlines = {f"{baseline} fusion": _mean(ref, f"test/{metric}")}
    hlines = {f"{baseline} {weak}": _mean(ref, ykey),
              f"unimodal {weak} (read-out)": _mean(uni, f"test/{weak}/{metric}")}
    img = plots.balance_scatter(points, f"fusion {metric} (test)", ylabel, vlines, hlines,
                                f"balance: fusion vs weak modality {weak}")
    if img is None:
        return ""
    what = "a linear probe on each method's own features" if use_probe else \
        "each method's read-out head (no linear-probe metric in these runs)"
    lower = metric.endswith(_LOWER_BETTER)
    side, up = ("left", "below") if lower else ("right", "above")
    return ("<h3>Balance: fusion vs the weak modality</h3>"
            f"<p class=meta>weak modality <b>{weak}</b> ({'higher' if lower else 'lower'} "
            f"{metric} of the {source} runs); y = its test {metric} measured by {what}; "
            f"mean ± std over seeds. {side.capitalize()} of the vertical line: better fusion "
            f"than {baseline}; {up} the dashed line: the weak modality learned more than "
            f"under {baseline}.</p>"
            f'<img alt="balance chart" src="data:image/png;base64,{img}">')
