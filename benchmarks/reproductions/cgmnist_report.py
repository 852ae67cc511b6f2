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
import math
from pathlib import Path
from typing import Any

from equimodal.bench.archive import run_history, write_archive
from equimodal.bench.reproductions.cgmnist import (
    BLOCK_BUDGET,
    CALIBRATED_VAR,
    CONTROLLER_RUNS,
    HELD_OUT,
    HSV,
    JITTERS,
    MAIN,
    PMR_HELD_OUT,
    ROWS,
    SIX,
    T1_LABELS,
    TABLE1_METHODS,
    THIRTY,
    THREE_SEED_ROWS,
    TITLES,
    Previous,
    SensitivityRows,
    Variant,
    block_rows,
    controller_record,
    finished_runs,
    has_runs,
    load_runs,
    ranks,
    read_previous,
    row_record,
    spearman,
    summarise,
)

# Re-exported for the script's users and tests: the tables' model lives in the package.
__all__ = ["ROWS", "TABLE1_METHODS", "ranks", "read_previous", "render", "spearman",
           "summarise", "write_doc", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

def _held_out_lines(runs: list[dict[str, Any]], previous: Previous | None) -> list[str]:
    """PMR's prototype and LFM's weighting variants, and Table 1's Spearman with PMR's
    held-out variant as its row (at 6 and 30 epochs), beside the Spearman above."""
    lines = _long_lines(runs, HELD_OUT, previous)
    if not lines:
        return []
    said = []
    for col, block in ((SIX, ""), (THIRTY, "long30")):
        recs = summarise(runs, block, previous)
        swap = row_record(runs, "t1", "PMR", 78.50, PMR_HELD_OUT[col], "pmr")
        if not swap["seeds"]:
            continue
        swapped = [swap if r["table"] == "t1" and r["row"] == "PMR" else r for r in recs]
        rho, pval, _ = spearman(swapped)
        said.append(f"{col}: **{fmt(rho, 3)}** (p = {fmt(pval, 3)}; with training prototypes "
                    f"{fmt(spearman(recs)[0], 3)})")
    if said:
        lines += ["Table 1's Spearman with the held-out-prototype run (reference settings) as "
                  "PMR's row: " + "; ".join(said) + ". Not the headline figure: those runs "
                  "train on validation labels (see the findings).", ""]
    return lines


#: The curves: (panel title, suite labels, method).
CURVES = [("Sum (fused, OOD valid)", T1_LABELS["Sum"], "sum"),
          ("UDI (fused; selection stage, then follower)", T1_LABELS["UDI"], "udi"),
          ("Unimodal gray / color", ("unimodal-gray", "unimodal-color"), "unimodal"),
          ("15 epochs (StepLR at 12): Sum", ("convergence",), "sum"),
          ("15 epochs (StepLR at 12): unimodal", ("convergence-gray", "convergence-color"),
           "unimodal")]


def curves(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Validation accuracy per epoch of the Sum, UDI and unimodal runs, as text."""
    out: dict[str, list[str]] = {}
    for _, labels, method in CURVES:
        for r in sorted(finished_runs(runs, labels, method), key=lambda r: (r["label"], r["seed"])):
            pts = []
            order = {m: i for i, m in enumerate(r.get("modalities") or ())}
            for h in run_history(r):
                stage = f"{h['stage']}:" if h.get("stage") not in (None, "main", "joint") else ""
                # In the data's modality order, which the run record keeps (an archived
                # history has its keys sorted); branches it does not name keep their place.
                keys = sorted((k for k in h if k.startswith("valid/") and k.endswith("/accuracy")
                               and k.count("/") == 2 and method != "unimodal"),
                              key=lambda k: order.get(k.split("/")[1], len(order)))
                branch = "/".join(f"{k.split('/')[1]} {100 * h[k]:.0f}" for k in keys)
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
        for r in sorted(finished_runs(runs, labels, method), key=lambda r: (r["label"], r["seed"])):
            hist = run_history(r)
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


#: How a cell taken from the committed CSV (no run record) is marked, and what the mark says.
EARLIER = "earlier record†"
EARLIER_NOTE = ("† *earlier record*: a row whose runs are in neither the database nor the "
                "archive (`benchmarks/reproductions/cgmnist-runs.jsonl`): mean, std and seeds "
                "come from the CSV this script wrote last time; its branch read-outs, "
                "validation and time are not available until its suite is run again.")


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
            budget = (f"{r['epochs']} ep × {r['n_train']}, "
                      + (EARLIER if r.get("previous") else f"{r['minutes']:.1f} min")
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
    extra = [r["row"] for r in recs if r["table"] == "t1" and r["row"] in TABLE1_METHODS
             and r["seeds"] > 1 and r["row"] not in THREE_SEED_ROWS]
    rho1, p1, n1 = spearman(recs, one_seed=True)
    if extra and n1 == n and not math.isnan(rho1):
        lines += [f"With seed 0 alone for {', '.join(extra)} (the protocol's one seed per "
                  f"method; three for {' and '.join(THREE_SEED_ROWS)}): **{fmt(rho1, 3)}** "
                  f"(p = {fmt(p1, 3)}).", ""]
    ran = [r for r in recs if r["table"] in tables and r["seeds"]]
    close = sum(1 for r in ran if abs(r["ours_mean"] - r["paper"]) <= 10)
    lines += [f"Rows within 10 points of the paper: **{close} of {len(ran)}** that ran.", ""]
    return lines


def _block_fallback(paper_row: str, method: str, labels: tuple[str, ...],
                    previous: Previous) -> dict[str, Any] | None:
    """The ``previous`` row of a longer-budget cell whose suite labels are those of a Table 1
    row of one of the blocks (the CSV holds those rows only)."""
    for block in ("", "long30", "full6"):
        for t, row, _, labs, m in block_rows(block):
            if t == "t1" and row == paper_row and m == method and labs == labels:
                return previous.get((t, row, *BLOCK_BUDGET[block]))
    return None


def _long_lines(runs: list[dict[str, Any]], variant: Variant,
                previous: Previous | None = None) -> list[str]:
    """The rows of ``variant.long`` at each budget (test accuracy (seeds; gray / color
    branch)); nothing unless a budget other than the first column has run."""
    prev = previous or {}
    recs = [(name, paper_row, {c: row_record(runs, "l", name, math.nan, labels, method,
                                          _block_fallback(paper_row, method, labels, prev))
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
            detail = (EARLIER if r is not None and r.get("previous") else
                      f"{fmt(r['gray'], 1)} / {fmt(r['color'], 1)}" if r is not None else "")
            cells.append("—" if r is None or not r["seeds"] else
                         f"{fmt(r['ours_mean'])}{spread} ({r['seeds']}; {detail})")
        if any(c != "—" for c in cells):  # a row with nothing on record is left out
            lines.append(f"| {name} | {paper[paper_row]:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def palette_lines(recs: list[dict[str, Any]], hsv: list[dict[str, Any]],
                  hsv_cal: list[dict[str, Any]], hsv_doc: str) -> list[str]:
    """Table 1 under both palettes: ours (LNTL's estimated colors) beside the HSV suite's."""
    if not any(r["seeds"] for r in hsv):
        return []
    by = [{(r["table"], r["row"]): r for r in rs} for rs in (recs, hsv, hsv_cal)]

    def cell(r: dict[str, Any] | None) -> str:
        return ("—" if r is None or not r["seeds"] else
                fmt(r["ours_mean"]) + ("†" if r.get("previous") else ""))

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
    sens = [(name, row_record(runs, "s", name, math.nan, labels, method),
             row_record(runs, "s", name, math.nan, base, method))
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
           notes_name: str = "benchmarks/reproductions/cgmnist_notes.md",
           previous: Previous | None = None) -> str:
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
        previous: :func:`read_previous` of the last CSV: the fallback of the rows at other
            budgets whose runs are gone (``recs`` already carry theirs).
    """
    done = [r for r in runs if r["status"] == "finished"]
    cpu = sum((r["timings"] or {}).get("job_cpu_seconds", 0) for r in done) / 60
    lines = [f"# Reproduction: UDI's CG-MNIST column (Tables 1-4){title}", "",
             "Generated by `python benchmarks/reproductions/cgmnist_report.py` from "
             f"`{db.as_posix()}` and the run records committed beside it "
             "(`benchmarks/reproductions/cgmnist*-runs.jsonl`); do not edit by hand (edit "
             f"`{notes_name}`).", "",
             f"{len(done)} finished runs on record, {cpu:.0f} CPU-minutes in all. Test accuracy is "
             "taken at the epoch selected on the out-of-distribution validation split, never "
             "on test. *gray / color branch*: each branch's own read-out (its logits alone) "
             "inside the trained model, test accuracy. The analysis of every gap follows the "
             "tables.", ""]
    calibrated = calibrated or []
    has_cal = has_runs(calibrated)
    lines += _block_lines(recs)
    if not has_cal:
        lines += _long_lines(runs, variant, previous)
        long30 = summarise(runs, "long30", previous)
        if sum(1 for r in long30 if r["seeds"]) > 2:
            lines += [x.replace("## ", "### ", 1) if x.startswith("## ") else x
                      for x in _block_lines(long30, " — 30 epochs", tables=("t1",))]
        lines += _held_out_lines(runs, previous)
    lines += extra or []
    jit = [(v, row_record(runs, "j", lab, math.nan, (lab,), "unimodal")) for v, lab in JITTERS]
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
        lines += _long_lines(runs, variant, previous)
    if variant.sensitivity:
        lines += _sensitivity_lines(runs, *variant.sensitivity)
    lines += controller_lines(runs)
    cur = curves(runs)
    if cur:
        lines += ["## Validation accuracy per epoch (Sum, UDI, unimodal; OOD valid)", ""]
        if figure:
            lines += [f"![validation accuracy per epoch]({figure})", ""]
        lines += ["UDI's epochs are prefixed by their stage (`unimodal`: both branches "
                  "trained alone; `follower_1`: the follower guided by the anchor); fused "
                  "accuracy, then each branch's own in parentheses.", ""]
        lines += [f"- `{k}`: {', '.join(v)}" for k, v in cur.items()] + [""]
    if any("†" in line for line in lines):
        lines += [EARLIER_NOTE, ""]
    return "\n".join(lines) + "\n" + notes


def controller_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The controller's weights per follower epoch against the paper's Fig. 3."""
    recs = [(what, rec) for label, what in CONTROLLER_RUNS
            if (rec := controller_record(runs, label)) is not None]
    if not recs:
        return []
    lines = ["## UDI's controller weights (Eq. 13-16) against Fig. 3", "",
             "The paper's Fig. 3: on CG-MNIST the controller \"favors the complementary term "
             "as training proceeds\"; alpha_com rises and stabilizes. Ours sets the weights "
             "once per epoch from one mini-batch (Sec. 3.3), as the paper says. Counts are "
             "follower epochs pooled over seeds; *one weight*: the other at most 0.05; "
             "*none*: both at most 0.05 (Eq. 15's ReLU zeroes both when neither gradient "
             "agrees with L_cls's).", "",
             "| runs | seeds | follower epochs | mean alpha_com, first third | last third | "
             "one weight | none | alpha_com > alpha_con |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {what} | {r['seeds']} | {r['epochs']} | {fmt(r['com_first'])} | "
              f"{fmt(r['com_last'])} | {r['one']} | {r['none']} | {r['com_wins']} |"
              for what, r in recs]
    return lines + [""]


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
              variant: Variant = MAIN, extra: list[str] | None = None, title: str = "",
              previous: Previous | None = None
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the doc (+ curves figure) and CSVs of ``runs`` (:func:`load_runs` of ``db``);
    rows without runs fall back to ``previous`` (:func:`read_previous`); return its (recs,
    calibrated)."""
    recs, cal = summarise(runs, "", previous), summarise(runs, "cal")
    notes = notes_path.read_text() if notes_path.exists() else ""
    doc.parent.mkdir(parents=True, exist_ok=True)
    figure = doc.with_name(doc.stem.replace("-", "_") + "_curves.png")
    drawn = plot_curves(runs, figure) if runs else False
    notes_name = (notes_path.relative_to(ROOT).as_posix() if notes_path.is_relative_to(ROOT)
                  else notes_path.name)
    doc.write_text(render(recs, runs, db, notes, figure.name if drawn else None, cal,
                          variant=variant, title=title, extra=extra, notes_name=notes_name,
                          previous=previous))
    # The 30-epoch and full-data Table 1 rows join the CSV (its ``epochs`` and ``n_train``
    # columns tell them apart).
    write_csv(out_csv, recs + [r for b in ("long30", "full6")
                               for r in summarise(runs, b, previous) if r["seeds"]])
    if has_runs(cal):
        write_csv(out_csv.with_name(out_csv.stem + "_calibrated.csv"), cal)
    return recs, cal


def main() -> None:
    """Write the doc and the CSV (and the HSV palette's, with ``--hsv-db`` or its archive),
    and refresh the run archives."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="bench/cgmnist-udi/results.db")
    p.add_argument("--archive", default=str(HERE / "cgmnist-runs.jsonl"),
                   help="committed run records, merged with --db and rewritten")
    p.add_argument("--hsv-db", default=None,
                   help="results of benchmarks/reproductions/cgmnist-hsv.toml (optional)")
    p.add_argument("--hsv-archive", default=str(HERE / "cgmnist-hsv-runs.jsonl"))
    p.add_argument("--doc", default="docs/reproductions/cgmnist.md")
    p.add_argument("--csv", default="benchmarks/reproductions/cgmnist.csv")
    p.add_argument("--notes", default=str(HERE / "cgmnist_notes.md"))
    p.add_argument("--hsv-notes", default=str(HERE / "cgmnist_hsv_notes.md"))
    args = p.parse_args()
    doc, out_csv, db = Path(args.doc), Path(args.csv), Path(args.db)
    hsv_csv = out_csv.with_name(out_csv.stem + "_hsv.csv")
    hsv_cal_csv = out_csv.with_name(out_csv.stem + "_hsv_calibrated.csv")
    # Read before anything is rewritten: the fallback of rows whose runs are gone.
    previous = read_previous(out_csv)
    runs = load_runs(db, Path(args.archive))
    if runs:
        write_archive(args.archive, runs)
    hsv_db = Path(args.hsv_db) if args.hsv_db else None
    hsv_runs = load_runs(hsv_db, Path(args.hsv_archive))
    hsv_doc = doc.with_name(doc.stem + "-hsv.md")
    if hsv_runs:
        write_archive(args.hsv_archive, hsv_runs)
        hsv, hsv_cal = write_doc(hsv_db or Path(args.hsv_archive), hsv_runs, hsv_doc, hsv_csv,
                                 Path(args.hsv_notes), HSV, title=" — HSV palette")
    else:  # its doc stays as it is; the comparison reads the HSV CSVs it wrote last time
        hsv = summarise([], "", read_previous(hsv_csv))
        hsv_cal = summarise([], "cal", read_previous(hsv_cal_csv))
    extra = palette_lines(summarise(runs, "", previous), hsv, hsv_cal, hsv_doc.name)
    recs, _ = write_doc(db, runs, doc, out_csv, Path(args.notes), extra=extra,
                        previous=previous)
    rho, _, n = spearman(recs)
    print(f"wrote {doc} and {out_csv}: {sum(1 for r in recs if r['seeds'])} of "
          f"{len(recs)} rows with results; Spearman {fmt(rho, 3)} over {n} methods")


if __name__ == "__main__":
    main()
