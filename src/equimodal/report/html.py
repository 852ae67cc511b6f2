"""A self-contained HTML report of a results database (figures embedded as base64 PNG).

Per dataset label: the paper table (with a paired "Δ vs concat" row), the balance chart
(:mod:`equimodal.report.balance`), training curves and per-modality validation scores over
epochs (from each run's ``history.jsonl``), the robustness results stored by
``equimodal bench --robustness`` (missing-modality subsets, frame-drop and noise curves,
Shapley modality contributions, modality gap), and t-SNE maps of unimodal and fused
embeddings for one run per method. Then the skipped and failed runs with their reasons.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equimodal.bench.store import load_results
from equimodal.bench.tables import DEFAULT_METRIC, Stat, Table, dataset_table, mark, to_html
from equimodal.engine.checkpoint import read_history
from equimodal.metrics import mean_std
from equimodal.report import plots
from equimodal.report.balance import balance_section

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-top:1.4em}
table.results{border-collapse:collapse;margin:.6em 0;font-size:.85em}
table.results caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
table.results td,table.results th{border:1px solid #ddd;padding:.25em .55em;text-align:center}
table.results th{background:#f5f5f5}
img{max-width:100%;display:block;margin:.5em 0}
ul.notes{font-size:.8em;color:#555}pre{font-size:.75em;background:#f8f8f8;padding:.5em}
.meta{color:#555;font-size:.9em}.wide{overflow-x:auto}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return ""
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _num(value: Any) -> float:
    # Stored JSON turns NaN into null.
    return float(value) if isinstance(value, (int, float)) else math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    return mean_std(finite) if finite else (math.nan, math.nan)


def _metric(task: str | None, metric: str | None) -> str:
    if task == "regression":
        return "mae"
    return metric or DEFAULT_METRIC.get(task or "classification", "accuracy")


def _series(histories: list[list[dict[str, Any]]], key: str) -> plots.Series | None:
    by_epoch: dict[int, list[float]] = {}
    for hist in histories:
        for i, row in enumerate(hist):
            v = row.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_epoch.setdefault(int(row.get("epoch", i)), []).append(float(v))
    if not by_epoch:
        return None
    xs = sorted(by_epoch)
    stats = [mean_std(by_epoch[x]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def _stat_table(title: str, rows: list[str], cols: list[str],
                values: dict[tuple[str, str], list[float]], metric: str,
                ranked: bool = True) -> str:
    cells: list[list[list[Stat] | None]] = []
    for r in rows:
        line: list[list[Stat] | None] = []
        for c in cols:
            vals = [v for v in values.get((r, c), []) if math.isfinite(v)]
            m, s = mean_std(vals) if vals else (math.nan, math.nan)
            line.append([Stat(m, s, len(vals), metric)])
        cells.append(line)
    table = mark(Table(title, "method", rows, cols, cells, "col", ranked=ranked))
    return f'<div class="wide">{to_html(table)}</div>'


def _robustness_section(done: pd.DataFrame, task: str | None, metric: str) -> str:
    rob = done[done["robustness"].map(lambda r: isinstance(r, dict))] \
        if "robustness" in done else done.iloc[0:0]
    if rob.empty:
        return ""
    out = ["<h3>Robustness</h3>"]
    methods = sorted(rob["method"].unique())
    # Missing modalities: every non-empty subset, plus the paper's average of incomplete ones.
    miss: dict[tuple[str, str], list[float]] = {}
    subsets: list[str] = []
    for _, r in rob.iterrows():
        block = r["robustness"].get("missing")
        if not block:
            continue
        for row in block["rows"]:
            if row["modalities"] not in subsets:
                subsets.append(row["modalities"])
            miss.setdefault((r["method"], row["modalities"]), []).append(_num(row.get(metric)))
        avg = block.get("average", {}).get(metric)
        if avg is not None:
            miss.setdefault((r["method"], "Avg."), []).append(avg)
    if subsets:
        cols = subsets + (["Avg."] if any(k[1] == "Avg." for k in miss) else [])
        out.append(_stat_table(f"test {metric} with only these modalities present", methods,
                               cols, miss, metric))
        # Methods along x, one bar per subset: readable with many methods.
        bars = {s: [_mean_std(miss.get((m, s), [])) for m in methods] for s in subsets}
        out.append(_img(plots.grouped_bars(methods, bars, metric, "missing modalities"),
                        "missing-modality chart"))
    for key, xkey, title in (("frame_drop", "rate", "frame drop rate p"),
                             ("noise", "level", "Gaussian noise level (x feature std)")):
        curves: dict[str, plots.Series] = {}
        avgs: dict[tuple[str, str], list[float]] = {}
        for m in methods:
            runs = [r[key] for r in rob[rob["method"] == m]["robustness"] if r.get(key)]
            if not runs:
                continue
            hist = [[{"epoch": i, "v": row.get(metric)} for i, row in enumerate(run["rows"])]
                    for run in runs]
            s = _series(hist, "v")
            if s is not None:
                xs = [runs[0]["rows"][i][xkey] for i in s[0]]
                curves[m] = (xs, s[1], s[2])
            avgs[(m, "average")] = [_num(run["average"].get(metric)) for run in runs]
        if curves:
            out.append(_stat_table(f"test {metric} averaged over {title}", list(curves),
                                   ["average"], avgs, metric))
            out.append(_img(plots.line_panels({title: curves}, xkey, metric, cols=1, size=6.0,
                                              legend_outside=True), f"{key} curve"))
    shap: dict[tuple[str, str], list[float]] = {}
    gaps: dict[tuple[str, str], list[float]] = {}
    outvoted: dict[tuple[str, str], list[float]] = {}
    # The data's modality order (stored JSON sorts keys).
    mods: list[str] = list(next((v for v in rob["modalities"] if isinstance(v, list)), []))
    pairs: list[str] = []
    for _, r in rob.iterrows():
        diag = r["robustness"].get("diagnostics", {})
        for mod, v in diag.get("shapley", {}).get("values", {}).items():
            mods += [mod] if mod not in mods else []
            shap.setdefault((r["method"], mod), []).append(v)
        for pair, v in diag.get("modality_gap", {}).items():
            pairs += [pair] if pair not in pairs else []
            gaps.setdefault((r["method"], pair), []).append(v)
        votes = diag.get("votes", {})
        for mod, v in votes.get("branches", {}).items():
            outvoted.setdefault((r["method"], mod), []).append(v["outvoted"] / votes["n"])
    mods = [mod for mod in mods if any(k[1] == mod for k in shap)]
    if mods:
        sign = " (negated)" if metric == "mae" else ""
        out.append(_stat_table(f"modality contribution: Shapley value of test {metric}{sign}",
                               methods, mods, shap, metric, ranked=False))
        bars = {mod: [_mean_std(shap.get((m, mod), [])) for m in methods] for mod in mods}
        out.append(_img(plots.grouped_bars(methods, bars, f"Shapley value ({metric})",
                                           "modality contribution"), "Shapley chart"))
    if pairs:
        out.append(_stat_table("modality gap: centroid distance of L2-normalised features",
                               methods, pairs, gaps, "gap", ranked=False))
    branches = [mod for mod in mods or sorted({k[1] for k in outvoted})
                if any(k[1] == mod for k in outvoted)]
    if branches:
        out.append(_stat_table("branch outvoted: % of test samples the branch gets right "
                               "and the fused prediction wrong", methods, branches, outvoted,
                               "share", ranked=False))
    return "\n".join(out)


def _tsne(x: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(max(2.0, min(20.0, (len(x) - 1) / 3)))
    # One thread: OpenMP threads fight with other processes for cores and get slower.
    with threadpool_limits(1):
        out: np.ndarray = TSNE(2, perplexity=perplexity, init="pca", random_state=0,
                               max_iter=250).fit_transform(x)
    return out


def _tsne_section(done: pd.DataFrame, samples: int) -> str:
    from equimodal.engine import load_run
    from equimodal.eval.diagnostics import collect_embeddings
    from equimodal.registry import load_dataset

    if done.empty or samples < 5:
        return ""
    first = done.sort_values("seed").iloc[0]
    try:
        data = load_dataset(first["dataset"], **(first["config"] or {}).get("data", {}))
    except Exception as err:  # noqa: BLE001 - a report never fails on one figure
        log.warning("t-SNE skipped for %s: %s", first["label"], err)
        return ""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    continuous = data.info.kind == "regression"
    for method, group in done.groupby("method"):
        row = group.sort_values("seed").iloc[0]
        try:
            result = load_run(row["path"], data=data)
            emb = collect_embeddings(result.method, data.test, samples)
        except Exception as err:  # noqa: BLE001
            log.warning("t-SNE skipped for %s on %s: %s", method, row["label"], err)
            continue
        y = emb["target"]
        color = (y.float() if continuous else (y.argmax(-1) if y.dim() > 1 else y)).numpy()
        views = dict(emb["features"])
        if emb["fused"] is not None:
            views["fused"] = emb["fused"]
        panels[str(method)] = {
            name: (_tsne(x.numpy().astype(np.float64)), color)
            for name, x in views.items() if x.shape[0] >= 5 and x.shape[1] >= 2}
    img = plots.scatter_grid(panels, continuous)
    if img is None:
        return ""
    return ("<h3>t-SNE of unimodal and fused test embeddings</h3>"
            f"<p class=meta>first {samples} test samples, seed-{int(first['seed'])} "
            "runs, coloured by target</p>" + _img(img, "t-SNE"))


def _dataset_section(df: pd.DataFrame, label: str, metric: str | None, tsne: bool,
                     tsne_samples: int, baseline: str = "concat") -> str:
    runs = df[df["label"] == label]
    done = runs[runs["status"] == "finished"]
    task = next((t for t in done["task"] if t), None) if "task" in done else None
    m = _metric(task, metric)
    parts = [f'<h2 id="{_esc(label)}">{_esc(label)}</h2>',
             f'<div class="wide">{to_html(dataset_table(df, label, metric, None, baseline))}'
             "</div>"]
    mods_all = next((v for v in done["modalities"] if isinstance(v, list)), []) \
        if "modalities" in done else []
    parts.append(balance_section(done, list(mods_all), m, baseline))
    hist = {meth: [read_history(p if isinstance(p, str) else None) for p in g["path"]]
            for meth, g in done.groupby("method")}
    loss = {k: s for k, h in hist.items() if (s := _series(h, "train/loss")) is not None}
    valid = {k: s for k, h in hist.items() if (s := _series(h, f"valid/{m}")) is not None}
    parts.append("<h3>Training curves</h3>")
    parts.append(_img(plots.line_panels({"training loss": loss, f"validation {m}": valid},
                                        "epoch", "", cols=2, legend_outside=True, size=5.0,
                                        symlog=("training loss",)), "training curves"))
    mods = next((v for v in done["modalities"] if isinstance(v, list)), []) \
        if "modalities" in done else []
    per_mod: dict[str, dict[str, plots.Series]] = {}
    for meth, h in hist.items():
        lines = {mod: s for mod in mods if (s := _series(h, f"valid/{mod}/{m}")) is not None}
        if (s := _series(h, f"valid/{m}")) is not None:
            lines["fusion"] = s
        per_mod[str(meth)] = lines
    if any(per_mod.values()):
        parts.append(f"<h3>Per-modality validation {m} over epochs</h3>")
        parts.append(_img(plots.line_panels(per_mod, "epoch", m), "per-modality curves"))
    parts.append(_robustness_section(done, task, m))
    if tsne:
        parts.append(_tsne_section(done, tsne_samples))
    return "\n".join(p for p in parts if p)


def _problems(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "finished"]
    if bad.empty:
        return ""
    rows = []
    for _, r in bad.iterrows():
        trace = (f"<details><summary>traceback</summary><pre>{_esc(r['traceback'])}</pre>"
                 "</details>") if r.get("traceback") else ""
        rows.append(f"<tr><td>{_esc(r['method'])}</td><td>{_esc(r['label'])}</td>"
                    f"<td>{_esc(r['seed'])}</td><td>{_esc(r['status'])}</td>"
                    f"<td style='text-align:left'>{_esc(r['reason'] or '')}{trace}</td></tr>")
    return ('<h2 id="problems">Skipped and failed runs</h2><table class="results"><thead><tr>'
            "<th>method</th><th>dataset</th><th>seed</th><th>status</th><th>reason</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _header(df: pd.DataFrame, db: Path) -> str:
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    commits = sorted({c for c in df.get("git_commit", []) if c})
    versions = sorted({json.dumps(v, sort_keys=True) for v in df.get("versions", [])
                       if isinstance(v, dict) and v})
    suites = sorted({s for s in df.get("suite", []) if s})
    labels = sorted(df["label"].unique()) if not df.empty else []
    nav = " · ".join(f'<a href="#{_esc(x)}">{_esc(x)}</a>' for x in labels)
    return (f"<h1>equimodal benchmark report</h1><p class=meta>database {_esc(db.name)}; "
            f"generated {time.strftime('%Y-%m-%d %H:%M')}; suites {_esc(', '.join(suites))}; "
            f"runs: {_esc(', '.join(f'{v} {k}' for k, v in counts.items()) or 'none')}</p>"
            f"<p class=meta>git {_esc(', '.join(commits) or 'unknown')}; versions "
            f"{_esc('; '.join(versions) or 'unknown')}</p><p>{nav}</p>"
            "<p class=meta>Cells: test-split mean±std over seeds; <b>bold</b> best, "
            "<u>underlined</u> second best. Model selection used validation only. "
            "Rows <i>m (unimodal)</i> are the split read-out of the fused head (the field's "
            "convention); rows <i>m (probe)</i> a linear probe fitted on the modality's "
            "frozen train features, selected on valid, scored on test. "
            "Δ row/column: paired difference to the reference method on matched seeds, "
            "mean [95 % t-interval over seeds], * where the interval excludes 0.</p>")


def _section_job(args: tuple[pd.DataFrame, str, str | None, bool, int, str]) -> str:
    import torch

    # One thread per report worker: several workers already share the cores.
    torch.set_num_threads(1)
    return _dataset_section(*args)


def build_report(
    db: str | Path,
    out: str | Path,
    tsne: bool = True,
    tsne_samples: int = 100,
    metric: str | None = None,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    baseline: str = "concat",
) -> Path:
    """Write the HTML report of a results database.

    Args:
        db: Results database (``results.db``).
        out: HTML file to write.
        tsne: Draw t-SNE maps (reloads one run per method and dataset).
        tsne_samples: Test samples per t-SNE map.
        metric: Table metric for classification data (default per task).
        workers: Processes rendering datasets in parallel (``1``: this process).
        progress: Called with each dataset label as it is done.
        baseline: Reference method of the paired "Δ vs" rows and the balance chart.

    Returns:
        The written path.
    """
    db = Path(db)
    df = load_results(db)
    body = [_header(df, db)]
    if df.empty:
        body.append("<p>No runs in this database yet.</p>")
    labels = sorted(df["label"].unique()) if not df.empty else []
    jobs = [(df[df["label"] == label], label, metric, tsne, tsne_samples, baseline)
            for label in labels]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            for label, section in zip(labels, pool.map(_section_job, jobs), strict=True):
                body.append(section)
                if progress is not None:
                    progress(label)
    else:
        for job in jobs:
            body.append(_dataset_section(*job))
            if progress is not None:
                progress(job[1])
    if not df.empty:
        body.append(_problems(df))
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>equimodal report</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
