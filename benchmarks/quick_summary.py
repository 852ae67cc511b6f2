"""One compact Markdown table of a bench database: methods as rows, datasets side by side.

Usage:
    python benchmarks/quick_summary.py [bench/quick/results.db]

For each classification dataset label: fusion accuracy, its paired difference to concat
(``Δ``: mean over matched seeds [95 % t-interval over seeds], ``*`` where the interval
excludes 0; :mod:`equimodal.bench.stats`) and the weakest modality's (lowest mean unimodal
accuracy of ``concat``) split read-out and linear probe, mean ± std over seeds; for each
regression label: MAE, its Δ to concat and Corr. Only the newest run of each (method, label,
seed) counts, as in ``equimodal results``. This is the table in README's "Results" section.
"""

from __future__ import annotations

import sys

import pandas as pd

from equimodal.bench.stats import paired
from equimodal.bench.store import load_results
from equimodal.bench.tables import latest_per_point
from equimodal.metrics import mean_std


def _cell(values: pd.Series, scale: float, digits: int) -> str:
    vals = [float(v) for v in values.dropna()]
    if not vals:
        return "–"
    mean, std = mean_std(vals)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def summary(db: str) -> str:
    """The Markdown table (see the module docstring)."""
    df, _ = latest_per_point(load_results(db))
    df = df[df["status"] == "finished"]
    deltas = {label: paired(df, label) for label in df["label"].unique()}
    columns: list[tuple[str, str, float, int]] = []  # header, column, scale, digits
    for label in sorted(df["label"].unique()):
        runs = df[df["label"] == label]
        if runs["task"].iloc[0] == "regression":
            columns += [(f"{label} MAE", "test/mae", 1.0, 3),
                        (f"{label} Δ MAE", "delta", 1.0, 3),
                        (f"{label} Corr", "test/corr", 1.0, 3)]
            continue
        ref = runs[runs["method"] == "concat"]
        mods = list(runs["modalities"].iloc[0])
        weak = min(mods, key=lambda m: ref[f"test/{m}/accuracy"].mean())
        columns += [(f"{label} fusion", "test/accuracy", 100.0, 1),
                    (f"{label} Δ vs concat", "delta", 100.0, 1),
                    (f"{label} {weak} read-out", f"test/{weak}/accuracy", 100.0, 1),
                    (f"{label} {weak} probe", f"test/{weak}/probe_accuracy", 100.0, 1)]
    lines = ["| method | " + " | ".join(c[0] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method in sorted(df["method"].unique()):
        cells = []
        for header, col, scale, digits in columns:
            label = header.split(" ")[0]
            mine = df[(df["method"] == method) & (df["label"] == label)]
            if col == "delta":
                p = deltas[label].get(method)
                cells.append(p.text("\\*") if p is not None else "–")
                continue
            cells.append(_cell(mine[col], scale, digits) if col in mine else "–")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1] if len(sys.argv) > 1 else "bench/quick/results.db"))
