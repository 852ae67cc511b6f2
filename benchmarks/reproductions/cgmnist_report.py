"""Generate docs/reproductions/cgmnist.md and benchmarks/reproductions/cgmnist.csv.

Usage:
    python benchmarks/reproductions/cgmnist_report.py [--db bench/cgmnist-udi/results.db]
        [--hsv-db bench/cgmnist-hsv/results.db]
        [--doc docs/reproductions/cgmnist.md] [--csv benchmarks/reproductions/cgmnist.csv]

Reads the results database of ``equimodal bench --suite cgmnist-udi`` (or
``cgmnist-udi-paper``), matches each row of UDI's CG-MNIST tables (Table 1-4) to its suite
entry (label + method), and writes our test accuracy (the epoch selected on the
out-of-distribution validation split) beside the paper's, the Spearman rank correlation of
Table 1, validation-accuracy-per-epoch curves of Sum and UDI (from the run folders' history,
including runs still in progress), and the hand-written analysis in
``benchmarks/reproductions/cgmnist_notes.md``. Rows without a finished run read "not run".

With ``--hsv-db`` (the database of ``benchmarks/reproductions/cgmnist-hsv.toml``: the same
protocol rendered with our HSV palette, a jitter calibration and a calibrated block) it also
writes ``cgmnist-hsv.md`` beside the doc (with ``cgmnist_hsv_notes.md``), the CSVs
``cgmnist_hsv.csv`` / ``cgmnist_hsv_calibrated.csv`` beside the CSV, and a palette comparison
table in the main doc.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equimodal.bench.store import load_results
from equimodal.bench.tables import latest_per_point

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: (table, row as in the paper, paper accuracy %, suite labels, method).
ROWS: list[tuple[str, str, float, tuple[str, ...], str]] = [
    ("t1", "Unimodal gray", 99.32, ("unimodal-gray",), "unimodal"),
    ("t1", "Unimodal color", 71.69, ("unimodal-color",), "unimodal"),
    ("t1", "Sum", 64.07, ("cgmnist", "cgmnist-seeds"), "sum"),
    ("t1", "MMPareto", 81.88, ("cgmnist", "cgmnist-seeds"), "mmpareto"),
    ("t1", "LFM", 97.77, ("cgmnist",), "lfm"),
    ("t1", "OGM", 66.40, ("cgmnist",), "ogm_ge"),
    ("t1", "AGM", 67.64, ("cgmnist",), "agm"),
    ("t1", "PMR", 78.50, ("cgmnist",), "pmr"),
    ("t1", "MLA", 71.40, ("cgmnist",), "mla"),
    ("t1", "OPM", 76.11, ("cgmnist",), "opm"),
    ("t1", "Greedy", 91.01, ("cgmnist",), "greedy"),
    ("t1", "Modality-valuation", 68.56, ("cgmnist",), "valuation"),
    ("t1", "UDI", 99.12, ("cgmnist", "cgmnist-seeds"), "udi"),
    ("t2", "DO only", 98.47, ("t2-do-only",), "udi"),
    ("t2", "DC only", 97.87, ("t2-dc-only",), "udi"),
    ("t2", "neither", 64.07, ("t2-neither",), "udi"),
    ("t3", "(0,1)", 99.02, ("t3-0-1",), "udi"),
    ("t3", "(1,0)", 96.37, ("t3-1-0",), "udi"),
    ("t3", "(0,0)", 97.87, ("t2-do-only",), "udi"),  # the same configuration as DO only
    ("t4", "gray anchor", 99.12, ("t4-anchor-gray",), "udi"),
    ("t4", "color anchor", 97.17, ("t4-anchor-color",), "udi"),
]
TITLES = {"t1": "Table 1: CG-MNIST column (accuracy %)",
          "t2": "Table 2: ablation of decoupled optimisation (DO) and the dynamic controller (DC)",
          "t3": "Table 3: fixed loss weights (alpha_con, alpha_com)",
          "t4": "Table 4: anchor choice (App. A.7)"}
TABLE1_METHODS = [r[1] for r in ROWS if r[0] == "t1" and not r[1].startswith("Unimodal")]
#: Suite labels of Table 1's rows in the paper's protocol: the one source for the other tables.
T1_LABELS = {row: labels for t, row, _, labels, _ in ROWS if t == "t1"}


def load_runs(db: Path) -> list[dict[str, Any]]:
    """The runs of the results database (JSON columns decoded, ``path`` the run folder),
    the newest of each (method, label, seed) only: a suite entry whose settings changed gets
    a new run id next to its superseded row (:func:`equimodal.bench.tables.latest_per_point`).
    """
    latest, _ = latest_per_point(load_results(db))
    runs = latest.to_dict("records")
    for r in runs:
        for k in ("config", "metrics", "timings"):  # None (a failed run) or NaN: empty
            r[k] = r[k] if isinstance(r.get(k), dict) else {}
    return runs


def _finished(runs: list[dict[str, Any]], labels: tuple[str, ...], method: str
              ) -> list[dict[str, Any]]:
    return [r for r in runs if r["label"] in labels and r["method"] == method
            and r["status"] == "finished"]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _record(runs: list[dict[str, Any]], table: str, row: str, paper: float,
            labels: tuple[str, ...], method: str) -> dict[str, Any]:
    """Ours (test accuracy at the epoch selected on OOD valid) and the branches' read-outs."""
    done = _finished(runs, labels, method)
    test = [r["metrics"]["test"] for r in done]
    mean, std = _mean_std([100 * t["accuracy"] for t in test])
    cfg = done[0]["config"] if done else {}
    rec: dict[str, Any] = {
        "table": table, "row": row, "paper": paper, "seeds": len(done),
        "ours_mean": mean, "ours_std": std,
        "valid_mean": _mean_std([100 * r["metrics"]["valid"]["accuracy"] for r in done])[0],
        "epochs": cfg.get("train", {}).get("epochs", ""),
        "n_train": cfg.get("data", {}).get("n_train") or (50000 if cfg else ""),
        "clip": cfg.get("train", {}).get("clip_norm") or 0.0,
        "minutes": statistics.fmean([(r["wall_seconds"] or 0) / 60 for r in done]) if done
        else math.nan,
        "failed": [r["reason"] for r in runs if r["label"] in labels
                   and r["method"] == method and r["status"] == "failed"],
    }
    for m in ("gray", "color"):  # each branch's own read-out inside the trained model
        rec[m] = _mean_std([100 * t[f"{m}/accuracy"] for t in test if f"{m}/accuracy" in t])[0]
    return rec


#: The calibrated block's color jitter and the labels its rows read instead (every other
#: label gets the ``cal-`` prefix; gray does not depend on the jitter).
CALIBRATED_VAR = 0.15
CALIBRATED_LABELS = {"unimodal-gray": "unimodal-gray",
                     "unimodal-color": f"jitter-{CALIBRATED_VAR:g}-color"}


#: The 30-epoch Table 1 (main suite `long30*` + cgmnist-udi-long.toml): method -> labels.
#: UDI's row is its method default (follower stage = train.epochs, Algorithm 1's E^m,
#: cgmnist-udi-follower.toml), chosen before its test figures were read; the main suite's
#: ``long30`` runs (follower stage pinned to 3 epochs) stay in the longer-budget table.
#: PMR's row is its clipped rerun (``train.clip_norm=1``; the unclipped run diverged), which
#: the budget column names.
LONG30_LABELS = {"sum": ("long30-sum",), "udi": ("long30-follower30",),
                 "pmr": ("long30-t1", "long30-pmr-clip")}


#: Table 1's rows trained on all 50,000 images for 6 epochs (cgmnist-udi-full.toml).
FULL6_LABELS = {"Unimodal gray": ("full6-gray",), "Unimodal color": ("full6-color",),
                "Sum": ("full6",), "UDI": ("full6",)}


def block_rows(block: str = "") -> list[tuple[str, str, float, tuple[str, ...], str]]:
    """ROWS with the suite labels of ``block`` ("" = the paper's protocol, "cal" = the
    calibrated jitter, "long30" = Table 1's methods at 30 epochs, "full6" = its rows run on
    all 50,000 training images)."""
    if not block:
        return ROWS
    if block == "full6":
        return [(t, row, paper, FULL6_LABELS[row], method)
                for t, row, paper, _, method in ROWS if t == "t1" and row in FULL6_LABELS]
    if block == "long30":
        return [(t, row, paper, LONG30_LABELS.get(method, ("long30-t1",)), method)
                for t, row, paper, _, method in ROWS if t == "t1" and row in TABLE1_METHODS]
    return [(t, row, paper, tuple(CALIBRATED_LABELS.get(lab, f"{block}-{lab}") for lab in labs),
             method) for t, row, paper, labs, method in ROWS]


def has_runs(recs: list[dict[str, Any]]) -> bool:
    """Whether a block ran any of Table 1's methods (its unimodal gray row may be shared)."""
    return any(r["seeds"] for r in recs if r["row"] in TABLE1_METHODS)


def summarise(runs: list[dict[str, Any]], block: str = "") -> list[dict[str, Any]]:
    """One record per paper row: ours mean/std over finished seeds, budget, validation."""
    return [_record(runs, *row) for row in block_rows(block)]


#: Color alone at each jitter of the calibration grid (suite labels).
JITTERS = [(0.03, "unimodal-color"), (0.1, "jitter-0.1-color"), (0.15, "jitter-0.15-color"),
           (0.2, "jitter-0.2-color"), (0.3, "jitter-0.3-color")]


#: (row, paper row of Table 1, method, {column heading: suite labels}).
Budgets = list[tuple[str, str, str, dict[str, tuple[str, ...]]]]
#: (row, suite labels, method, suite labels of the same row in the paper's setting).
SensitivityRows = list[tuple[str, tuple[str, ...], str, tuple[str, ...]]]


@dataclass(frozen=True)
class Variant:
    """What one results database holds beyond the paper's rows.

    Attributes:
        long: Rows at other budgets: (row, paper row, method, {column: suite labels}).
        long_columns: The columns of ``long``, in order.
        long_title: Heading of the longer-budget table.
        sensitivity: (heading, sentence, column of the changed setting, rows) of a data
            sensitivity check, or ``None``.
        jitters: Whether it holds the color-alone jitter calibration (:data:`JITTERS`).
    """

    long: Budgets
    long_columns: tuple[str, ...]
    long_title: str
    sensitivity: tuple[str, str, str, SensitivityRows] | None = None
    jitters: bool = False


#: The main suite (`cgmnist-udi`): 30-epoch Sum and UDI, uniform test colors.
#: Its full-data column (cgmnist-udi-full.toml) trains on all 50,000 images for 6 epochs.
_SIX, _THIRTY, _FULL = "6 epochs", "30 epochs", "6 epochs × 50,000 images"
MAIN = Variant(
    long=[("Unimodal gray", "Unimodal gray", "unimodal",
           {_SIX: T1_LABELS["Unimodal gray"], _FULL: FULL6_LABELS["Unimodal gray"]}),
          ("Unimodal color", "Unimodal color", "unimodal",
           {_SIX: T1_LABELS["Unimodal color"], _FULL: FULL6_LABELS["Unimodal color"]}),
          ("Sum", "Sum", "sum", {_SIX: T1_LABELS["Sum"],
                                 _THIRTY: LONG30_LABELS["sum"], _FULL: FULL6_LABELS["Sum"]}),
          ("UDI, follower stage 3 epochs", "UDI", "udi",
           {_SIX: T1_LABELS["UDI"], _THIRTY: ("long30",)}),
          ("UDI, follower stage = epochs (default)", "UDI", "udi",
           {_THIRTY: LONG30_LABELS["udi"], _FULL: FULL6_LABELS["UDI"]}),
          ("UDI, follower = epochs, started from its selection-stage weights", "UDI", "udi",
           {_THIRTY: ("follower-init-unimodal",)})],
    long_columns=(_SIX, _THIRTY, _FULL),
    long_title="Other budgets (8,000 training images unless stated; StepLR after epoch 5, 24)",
    sensitivity=(
        "Data sensitivity: test colors uniform over the RGB cube",
        "Not a paper row: the same protocol and budget with test (and OOD valid) colors drawn "
        "uniformly from the RGB cube instead of a random class's jittered color (LNTL says "
        "only that test colors are random).",
        "uniform test colors",
        [("Unimodal color", ("uniform-test-color",), "unimodal", T1_LABELS["Unimodal color"]),
         ("Sum", ("uniform-test",), "sum", T1_LABELS["Sum"]),
         ("UDI", ("uniform-test",), "udi", T1_LABELS["UDI"])]))

#: The HSV palette's suite (benchmarks/reproductions/cgmnist-hsv.toml): its calibrated block
#: at longer budgets (the 30-epoch UDI runs from cgmnist-hsv-long.toml) and jitter 0.1.
HSV = Variant(
    long=[("Sum", "Sum", "sum", {"6 epochs": ("cal-cgmnist", "cal-cgmnist-seeds"),
                                 "15 epochs": ("cal-long",)}),
          ("UDI", "UDI", "udi", {"6 epochs": ("cal-cgmnist", "cal-cgmnist-seeds"),
                                 "15 epochs": ("cal-long",), "30 epochs": ("cal-long30",)})],
    long_columns=("6 epochs", "15 epochs", "30 epochs"),
    long_title="Calibrated block at longer budgets (StepLR after epoch 5, 12, 24)",
    sensitivity=(
        "Data sensitivity: color jitter variance 0.1 instead of 0.030",
        "Not a paper row: the same protocol and budget with a wider color jitter, so that "
        "color alone separates the classes less well in training.",
        "jitter 0.1",
        [("Unimodal color", ("jitter-0.1-color",), "unimodal", T1_LABELS["Unimodal color"]),
         ("Sum", ("jitter-0.1",), "sum", T1_LABELS["Sum"]),
         ("UDI", ("jitter-0.1",), "udi", T1_LABELS["UDI"])]),
    jitters=True)


def spearman(recs: list[dict[str, Any]]) -> tuple[float, float, int]:
    """Spearman rho (and its p-value) between ours and the paper over Table 1's methods."""
    pairs = [(r["paper"], r["ours_mean"]) for r in recs
             if r["table"] == "t1" and r["row"] in TABLE1_METHODS and r["seeds"]]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    from scipy.stats import spearmanr

    res = spearmanr([p for p, _ in pairs], [o for _, o in pairs])
    return float(res.statistic), float(res.pvalue), len(pairs)


def ranks(values: list[float]) -> list[float]:
    """1 = highest; ties share their mean rank (as Spearman's rho uses them)."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


#: The curves: (panel title, suite labels, method).
CURVES = [("Sum (fused, OOD valid)", T1_LABELS["Sum"], "sum"),
          ("UDI (fused; selection stage, then follower)", T1_LABELS["UDI"], "udi"),
          ("Unimodal gray / color", ("unimodal-gray", "unimodal-color"), "unimodal"),
          ("15 epochs (StepLR at 12): Sum", ("convergence",), "sum"),
          ("15 epochs (StepLR at 12): unimodal", ("convergence-gray", "convergence-color"),
           "unimodal")]


def history(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch records of one run (its ``history.jsonl``) that carry a validation."""
    if not isinstance(run.get("path"), str):  # no run folder (None, or NaN in the frame)
        return []
    path = Path(run["path"]) / "history.jsonl"
    if not path.exists():
        return []
    return [h for h in map(json.loads, path.read_text().splitlines()) if "valid/accuracy" in h]


def curves(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Validation accuracy per epoch of the Sum, UDI and unimodal runs, as text."""
    out: dict[str, list[str]] = {}
    for _, labels, method in CURVES:
        for r in sorted(_finished(runs, labels, method), key=lambda r: (r["label"], r["seed"])):
            pts = []
            for h in history(r):
                stage = f"{h['stage']}:" if h.get("stage") not in (None, "main", "joint") else ""
                branch = "/".join(f"{k.split('/')[1]} {100 * v:.0f}" for k, v in h.items()
                                  if k.startswith("valid/") and k.endswith("/accuracy")
                                  and k.count("/") == 2 and method != "unimodal")
                pts.append(f"{stage}{100 * h['valid/accuracy']:.1f}"
                           + (f" ({branch})" if branch else ""))
            out[f"{method} {r['label']} seed {r['seed']}"] = pts
    return out


def plot_curves(runs: list[dict[str, Any]], path: Path) -> bool:
    """Validation accuracy per epoch (fused solid, branches dashed), one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.4), sharey=True)
    drawn = False
    for ax, (title, labels, method) in zip(axes, CURVES, strict=True):
        for r in sorted(_finished(runs, labels, method), key=lambda r: (r["label"], r["seed"])):
            hist = history(r)
            if not hist:
                continue
            drawn = True
            x = range(1, len(hist) + 1)
            name = r["label"].split("-")[-1] if method == "unimodal" else "fused"
            line, = ax.plot(x, [100 * h["valid/accuracy"] for h in hist], marker="o", ms=3,
                            label=f"{name} s{r['seed']}")
            if method != "unimodal":
                for m, style in (("gray", "--"), ("color", ":")):
                    key = f"valid/{m}/accuracy"
                    ax.plot(x, [100 * h.get(key, math.nan) for h in hist], style,
                            color=line.get_color(), alpha=0.7,
                            label=f"{m} branch s{r['seed']}" if r["seed"] == 0 else None)
            if method == "udi":  # where the follower stage starts
                cut = next((i for i, h in enumerate(hist)
                            if str(h.get("stage", "")).startswith("follower")), None)
                if cut is not None:
                    ax.axvline(cut + 0.5, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0].set_ylabel("OOD validation accuracy (%)")
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def fmt(x: float, nd: int = 2) -> str:
    """``x`` rounded, or an em dash for NaN."""
    return "—" if isinstance(x, float) and math.isnan(x) else f"{x:.{nd}f}"


def _table_lines(recs: list[dict[str, Any]], t: str) -> list[str]:
    rows = [x for x in recs if x["table"] == t]
    rank_cols = t == "t1"
    ranked = [r for r in rows if r["row"] in TABLE1_METHODS and r["seeds"]] if rank_cols else []
    names = [r["row"] for r in ranked]
    rp = dict(zip(names, ranks([r["paper"] for r in ranked]), strict=True))
    ro = dict(zip(names, ranks([r["ours_mean"] for r in ranked]), strict=True))
    head = ("| row | paper | ours (test, mean ± std) | diff | seeds | gray / color branch | "
            "valid (OOD) | budget per run |" + (" rank paper / ours |" if rank_cols else ""))
    lines = [f"## {TITLES[t]}", "", head,
             "|---" * (8 + rank_cols) + "|"]
    for r in rows:
        if r["seeds"]:
            ours = (f"{fmt(r['ours_mean'])} ± {fmt(r['ours_std'])}" if r["seeds"] > 1
                    else fmt(r["ours_mean"]))
            diff = f"{r['ours_mean'] - r['paper']:+.2f}"
            flag = " **(>10)**" if abs(r["ours_mean"] - r["paper"]) > 10 else ""
            budget = (f"{r['epochs']} ep × {r['n_train']}, {r['minutes']:.1f} min"
                      + (f", clip_norm {r['clip']:g}" if r["clip"] else ""))
        else:
            ours, diff, flag = "not run" + (" (failed)" if r["failed"] else ""), "—", ""
            budget = "—"
        branches = f"{fmt(r['gray'], 1)} / {fmt(r['color'], 1)}"
        line = (f"| {r['row']} | {r['paper']:.2f} | {ours} | {diff}{flag} | {r['seeds']} | "
                f"{branches} | {fmt(r['valid_mean'])} | {budget} |")
        if rank_cols:
            line += (f" {rp[r['row']]:g} / {ro[r['row']]:g} |" if r["row"] in rp else " — |")
        lines.append(line)
    return lines + [""]


def _block_lines(recs: list[dict[str, Any]], suffix: str = "",
                 tables: tuple[str, ...] = ("t1", "t2", "t3", "t4")) -> list[str]:
    lines: list[str] = []
    for t in tables:
        tl = _table_lines(recs, t)
        tl[0] += suffix
        lines += tl
    rho, pval, n = spearman(recs)
    lines += [f"### Rank agreement{suffix}" if suffix else "## Rank agreement", "",
              f"Spearman rank correlation between our Table-1 column and the paper's over the "
              f"{n} of {len(TABLE1_METHODS)} methods that ran: **{fmt(rho, 3)}** "
              f"(p = {fmt(pval, 3)})" + (" (needs at least 3 methods)" if n < 3 else "") + ".",
              ""]
    ran = [r for r in recs if r["table"] in tables and r["seeds"]]
    close = sum(1 for r in ran if abs(r["ours_mean"] - r["paper"]) <= 10)
    lines += [f"Rows within 10 points of the paper: **{close} of {len(ran)}** that ran.", ""]
    return lines


def _long_lines(runs: list[dict[str, Any]], variant: Variant) -> list[str]:
    """The rows of ``variant.long`` at each budget (test accuracy (seeds; gray / color
    branch)); nothing unless a budget other than the first column has run."""
    recs = [(name, paper_row, {c: _record(runs, "l", name, math.nan, labels, method)
                               for c, labels in budgets.items()})
            for name, paper_row, method, budgets in variant.long]
    first = variant.long_columns[0]
    if not any(r["seeds"] for _, _, by_c in recs for c, r in by_c.items() if c != first):
        return []
    paper = {r[1]: r[2] for r in ROWS}
    cols = variant.long_columns
    lines = [f"### {variant.long_title}", "",
             "Test accuracy (seeds; gray / color branch read-outs).", "",
             "| row | paper | " + " | ".join(cols) + " |", "|---" * (2 + len(cols)) + "|"]
    for name, paper_row, by_c in recs:
        cells = []
        for c in cols:
            r = by_c.get(c)
            spread = f" ± {fmt(r['ours_std'])}" if r is not None and r["seeds"] > 1 else ""
            cells.append("—" if r is None or not r["seeds"] else
                         f"{fmt(r['ours_mean'])}{spread} ({r['seeds']}; "
                         f"{fmt(r['gray'], 1)} / {fmt(r['color'], 1)})")
        lines.append(f"| {name} | {paper[paper_row]:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def palette_lines(recs: list[dict[str, Any]], hsv: list[dict[str, Any]],
                  hsv_cal: list[dict[str, Any]], hsv_doc: str) -> list[str]:
    """Table 1 under both palettes: ours (LNTL's estimated colors) beside the HSV suite's."""
    if not any(r["seeds"] for r in hsv):
        return []
    by = [{(r["table"], r["row"]): r for r in rs} for rs in (recs, hsv, hsv_cal)]

    def cell(r: dict[str, Any] | None) -> str:
        return "—" if r is None or not r["seeds"] else fmt(r["ours_mean"])

    lines = ["## Palette comparison (Table 1)", "",
             "The same protocol and budget with our earlier palette (10 evenly spaced "
             "saturated hues, color x gray intensity: `palette=\"hsv\"`), at the paper's "
             f"jitter 0.030 and at the calibrated jitter {CALIBRATED_VAR:g}; full tables in "
             f"[{hsv_doc}]({hsv_doc}).", "",
             "| row | paper | LNTL palette (above) | HSV, jitter 0.030 | "
             f"HSV, jitter {CALIBRATED_VAR:g} |", "|---|---|---|---|---|"]
    for r in (x for x in recs if x["table"] == "t1"):
        key = (r["table"], r["row"])
        lines.append(f"| {r['row']} | {r['paper']:.2f} | "
                     + " | ".join(cell(b.get(key)) for b in by) + " |")
    rhos = [fmt(spearman(rs)[0], 3) for rs in (recs, hsv, hsv_cal)]
    lines += [f"| Spearman vs paper | | {rhos[0]} | {rhos[1]} | {rhos[2]} |", ""]
    return lines


def _sensitivity_lines(runs: list[dict[str, Any]], heading: str, sentence: str, column: str,
                       rows: SensitivityRows) -> list[str]:
    sens = [(name, _record(runs, "s", name, math.nan, labels, method),
             _record(runs, "s", name, math.nan, base, method))
            for name, labels, method, base in rows]
    if not any(s["seeds"] for _, s, _ in sens):
        return []
    lines = [f"## {heading}", "", sentence, "",
             f"| row | paper's setting (test) | {column} (test) | gray / color branch "
             f"with {column} |", "|---|---|---|---|"]
    for name, s, b in sens:
        lines.append(f"| {name} | {fmt(b['ours_mean'])} ({b['seeds']} seeds) | "
                     f"{fmt(s['ours_mean'])} ({s['seeds']} seed) | "
                     f"{fmt(s['gray'], 1)} / {fmt(s['color'], 1)} |")
    return lines + [""]


def render(recs: list[dict[str, Any]], runs: list[dict[str, Any]], db: Path, notes: str,
           figure: str | None, calibrated: list[dict[str, Any]] | None = None,
           variant: Variant = MAIN, title: str = "", extra: list[str] | None = None,
           notes_name: str = "benchmarks/reproductions/cgmnist_notes.md") -> str:
    """The markdown document.

    Args:
        recs: :func:`summarise` of ``runs``. calibrated: the same for the ``cal-`` block.
        runs: :func:`load_runs` of ``db``.
        db: The database (named in the header).
        notes: Hand-written analysis appended at the end.
        figure: File name of the curves figure, or ``None``.
        variant: What the database holds beyond the paper's rows (:data:`MAIN`, :data:`HSV`).
        title: Appended to the doc's title.
        extra: Lines placed after the tables (the palette comparison).
        notes_name: The notes file, named in the header.
    """
    done = [r for r in runs if r["status"] == "finished"]
    cpu = sum((r["timings"] or {}).get("job_cpu_seconds", 0) for r in done) / 60
    lines = [f"# Reproduction: UDI's CG-MNIST column (Tables 1-4){title}", "",
             "Generated by `python benchmarks/reproductions/cgmnist_report.py` from "
             f"`{db.as_posix()}`; do not edit by hand (edit "
             f"`{notes_name}`).", "",
             f"{len(done)} finished runs, {cpu:.0f} CPU-minutes in all. Test accuracy is "
             "taken at the epoch selected on the out-of-distribution validation split, never "
             "on test. *gray / color branch*: each branch's own read-out (its logits alone) "
             "inside the trained model, test accuracy. The analysis of every gap follows the "
             "tables.", ""]
    calibrated = calibrated or []
    has_cal = has_runs(calibrated)
    lines += _block_lines(recs)
    if not has_cal:
        lines += _long_lines(runs, variant)
        long30 = summarise(runs, "long30")
        if sum(1 for r in long30 if r["seeds"]) > 2:
            lines += [x.replace("## ", "### ", 1) if x.startswith("## ") else x
                      for x in _block_lines(long30, " — 30 epochs", tables=("t1",))]
    lines += extra or []
    jit = [(v, _record(runs, "j", lab, math.nan, (lab,), "unimodal")) for v, lab in JITTERS]
    if variant.jitters and any(r["seeds"] for _, r in jit):
        lines += ["## Color alone against the color jitter (calibration)", "",
                  "The paper's color-unimodal row (71.69 %) measures how much its color "
                  "modality says about the digit at test time. The calibrated block below "
                  "uses the jitter of this grid whose color-alone **validation** (OOD) "
                  "accuracy is closest to it.", "",
                  "| jitter variance | color alone: valid (OOD) | test | seeds |",
                  "|---|---|---|---|"]
        lines += [f"| {v:g} | {fmt(r['valid_mean'])} | {fmt(r['ours_mean'])} | {r['seeds']} |"
                  for v, r in jit]
        lines.append("")
    if has_cal:
        suffix = f" — calibrated jitter {CALIBRATED_VAR:g}"
        lines += [f"## Calibrated block: color jitter {CALIBRATED_VAR:g}", "",
                  "Everything as above except the color jitter variance "
                  f"({CALIBRATED_VAR:g} instead of 0.030). Not the paper's literal setting: "
                  "an estimate of what its data looked like, from its color-unimodal row.", ""]
        lines += [x.replace("## ", "### ", 1) if x.startswith("## ") else x
                  for x in _block_lines(calibrated, suffix)]
        lines += _long_lines(runs, variant)
    if variant.sensitivity:
        lines += _sensitivity_lines(runs, *variant.sensitivity)
    cur = curves(runs)
    if cur:
        lines += ["## Validation accuracy per epoch (Sum, UDI, unimodal; OOD valid)", ""]
        if figure:
            lines += [f"![validation accuracy per epoch]({figure})", ""]
        lines += ["UDI's epochs are prefixed by their stage (`unimodal`: both branches "
                  "trained alone; `follower_1`: the follower guided by the anchor); fused "
                  "accuracy, then each branch's own in parentheses.", ""]
        lines += [f"- `{k}`: {', '.join(v)}" for k, v in cur.items()] + [""]
    return "\n".join(lines) + "\n" + notes


def write_csv(path: Path, recs: list[dict[str, Any]]) -> None:
    """The issue's columns: table,row,paper,ours_mean,ours_std,seeds,epochs,n_train."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "row", "paper", "ours_mean", "ours_std", "seeds", "epochs",
                    "n_train"])
        for r in recs:
            w.writerow([r["table"], r["row"], r["paper"],
                        "" if not r["seeds"] else f"{r['ours_mean']:.2f}",
                        "" if not r["seeds"] else f"{r['ours_std']:.2f}",
                        r["seeds"], r["epochs"], r["n_train"]])


def write_doc(db: Path, runs: list[dict[str, Any]], doc: Path, out_csv: Path, notes_path: Path,
              variant: Variant = MAIN, extra: list[str] | None = None, title: str = ""
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the doc (+ curves figure) and CSVs of ``runs`` (:func:`load_runs` of ``db``);
    return its (recs, calibrated)."""
    recs, cal = summarise(runs), summarise(runs, "cal")
    notes = notes_path.read_text() if notes_path.exists() else ""
    doc.parent.mkdir(parents=True, exist_ok=True)
    figure = doc.with_name(doc.stem.replace("-", "_") + "_curves.png")
    drawn = plot_curves(runs, figure) if runs else False
    notes_name = (notes_path.relative_to(ROOT).as_posix() if notes_path.is_relative_to(ROOT)
                  else notes_path.name)
    doc.write_text(render(recs, runs, db, notes, figure.name if drawn else None, cal,
                          variant=variant, title=title, extra=extra, notes_name=notes_name))
    # The 30-epoch and full-data Table 1 rows join the CSV (its ``epochs`` and ``n_train``
    # columns tell them apart).
    write_csv(out_csv, recs + [r for b in ("long30", "full6") for r in summarise(runs, b)
                               if r["seeds"]])
    if has_runs(cal):
        write_csv(out_csv.with_name(out_csv.stem + "_calibrated.csv"), cal)
    return recs, cal


def main() -> None:
    """Write the doc and the CSV (and the HSV palette's, with ``--hsv-db``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="bench/cgmnist-udi/results.db")
    p.add_argument("--hsv-db", default=None,
                   help="results of benchmarks/reproductions/cgmnist-hsv.toml (optional)")
    p.add_argument("--doc", default="docs/reproductions/cgmnist.md")
    p.add_argument("--csv", default="benchmarks/reproductions/cgmnist.csv")
    p.add_argument("--notes", default=str(HERE / "cgmnist_notes.md"))
    p.add_argument("--hsv-notes", default=str(HERE / "cgmnist_hsv_notes.md"))
    args = p.parse_args()
    doc, out_csv, db = Path(args.doc), Path(args.csv), Path(args.db)
    runs = load_runs(db) if db.exists() else []
    extra: list[str] = []
    if args.hsv_db:
        hsv_db, hsv_doc = Path(args.hsv_db), doc.with_name(doc.stem + "-hsv.md")
        hsv, hsv_cal = write_doc(hsv_db, load_runs(hsv_db) if hsv_db.exists() else [], hsv_doc,
                                 out_csv.with_name(out_csv.stem + "_hsv.csv"),
                                 Path(args.hsv_notes), HSV, title=" — HSV palette")
        extra = palette_lines(summarise(runs), hsv, hsv_cal, hsv_doc.name)
    recs, _ = write_doc(db, runs, doc, out_csv, Path(args.notes), extra=extra)
    rho, _, n = spearman(recs)
    print(f"wrote {doc} and {out_csv}: {sum(1 for r in recs if r['seeds'])} of "
          f"{len(recs)} rows with results; Spearman {fmt(rho, 3)} over {n} methods")


if __name__ == "__main__":
    main()
