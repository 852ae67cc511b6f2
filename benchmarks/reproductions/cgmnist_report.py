"""Generate docs/reproductions/cgmnist.md and benchmarks/reproductions/cgmnist.csv.

Usage:
    python benchmarks/reproductions/cgmnist_report.py [--db bench/cgmnist-udi/results.db]
        [--doc docs/reproductions/cgmnist.md] [--csv benchmarks/reproductions/cgmnist.csv]

Reads the results database of ``equimodal bench --suite cgmnist-udi`` (or
``cgmnist-udi-paper``), matches each row of UDI's CG-MNIST tables (Table 1-4) to its suite
entry (label + method), and writes our test accuracy (the epoch selected on the
out-of-distribution validation split) beside the paper's, the Spearman rank correlation of
Table 1, validation-accuracy-per-epoch curves of Sum and UDI (from the run folders' history,
including runs still in progress), and the hand-written analysis in
``benchmarks/reproductions/cgmnist_notes.md``. Rows without a finished run read "not run".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sqlite3
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: (table, row as in the paper, paper accuracy %, suite labels, method).
ROWS: list[tuple[str, str, float, tuple[str, ...], str]] = [
    ("t1", "Unimodal gray", 99.32, ("unimodal-gray",), "unimodal"),
    ("t1", "Unimodal color", 71.69, ("unimodal-color",), "unimodal"),
    ("t1", "Sum", 64.07, ("cgmnist", "cgmnist-seeds"), "sum"),
    ("t1", "MMPareto", 81.88, ("cgmnist",), "mmpareto"),
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


def load_runs(db: Path) -> list[dict[str, Any]]:
    """Rows of the ``runs`` table with JSON columns decoded."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = []
    for r in con.execute("SELECT * FROM runs"):
        d = dict(r)
        for k in ("config", "metrics", "timings"):
            d[k] = json.loads(d[k]) if d.get(k) else {}
        out.append(d)
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per paper row: ours mean/std over finished seeds, budget, validation."""
    out = []
    for table, row, paper, labels, method in ROWS:
        done = [r for r in runs if r["label"] in labels and r["method"] == method
                and r["status"] == "finished"]
        accs = [100 * r["metrics"]["test"]["accuracy"] for r in done]
        vals = [100 * r["metrics"]["valid"]["accuracy"] for r in done]
        cfg = done[0]["config"] if done else {}
        rec: dict[str, Any] = {
            "table": table, "row": row, "paper": paper, "seeds": len(accs),
            "ours_mean": statistics.fmean(accs) if accs else math.nan,
            "ours_std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else math.nan),
            "valid_mean": statistics.fmean(vals) if vals else math.nan,
            "epochs": cfg.get("train", {}).get("epochs", ""),
            "n_train": cfg.get("data", {}).get("n_train") or (50000 if cfg else ""),
            "minutes": sum(r["wall_seconds"] or 0 for r in done) / 60,
            "failed": [r["reason"] for r in runs if r["label"] in labels
                       and r["method"] == method and r["status"] == "failed"],
        }
        out.append(rec)
    return out


def spearman(recs: list[dict[str, Any]]) -> tuple[float, int]:
    """Spearman rho between ours and the paper over Table 1's methods that ran."""
    pairs = [(r["paper"], r["ours_mean"]) for r in recs
             if r["table"] == "t1" and r["row"] in TABLE1_METHODS and r["seeds"]]
    if len(pairs) < 3:
        return math.nan, len(pairs)
    from scipy.stats import spearmanr

    rho = spearmanr([p for p, _ in pairs], [o for _, o in pairs]).statistic
    return float(rho), len(pairs)


def curves(db: Path, methods: tuple[str, ...] = ("sum", "udi")) -> dict[str, list[str]]:
    """Validation accuracy per epoch of the seed runs of ``methods`` (in-progress included)."""
    out: dict[str, list[str]] = {}
    for folder in sorted((db.parent / "runs").glob("*")):
        hist = folder / "history.jsonl"
        method = folder.name.split("-")[0]
        if method not in methods or not hist.exists() or "-t" in folder.name:
            continue
        pts = []
        for line in hist.read_text().splitlines():
            h = json.loads(line)
            if "valid/accuracy" in h:
                stage = f"{h['stage']}:" if h.get("stage") not in (None, "main") else ""
                branch = "/".join(f"{k.split('/')[1]} {100 * v:.0f}" for k, v in h.items()
                                  if k.startswith("valid/") and k.endswith("/accuracy")
                                  and k.count("/") == 2)
                pts.append(f"{stage}{100 * h['valid/accuracy']:.1f}"
                           + (f" ({branch})" if branch else ""))
        if pts:
            out[folder.name] = pts
    return out


def fmt(x: float, nd: int = 2) -> str:
    """``x`` rounded, or an em dash for NaN."""
    return "—" if isinstance(x, float) and math.isnan(x) else f"{x:.{nd}f}"


def render(recs: list[dict[str, Any]], db: Path, notes: str) -> str:
    """The markdown document."""
    rho, n = spearman(recs)
    lines = ["# Reproduction: UDI's CG-MNIST column (Tables 1-4)", "",
             "Generated by `python benchmarks/reproductions/cgmnist_report.py` from "
             f"`{db.as_posix()}`; do not edit by hand (edit "
             "`benchmarks/reproductions/cgmnist_notes.md`).", ""]
    for t in ("t1", "t2", "t3", "t4"):
        lines += [f"## {TITLES[t]}", "",
                  "| row | paper | ours (test, mean ± std) | diff | seeds | budget | valid (OOD) |",
                  "|---|---|---|---|---|---|---|"]
        for r in (x for x in recs if x["table"] == t):
            if r["seeds"]:
                ours = f"{fmt(r['ours_mean'])} ± {fmt(r['ours_std'])}"
                diff = f"{r['ours_mean'] - r['paper']:+.2f}"
                flag = " **(>10)**" if abs(r["ours_mean"] - r["paper"]) > 10 else ""
                budget = f"{r['epochs']} ep, {r['n_train']} train, {r['minutes']:.0f} min"
            else:
                ours, diff, flag = "not run" + (" (failed)" if r["failed"] else ""), "—", ""
                budget = "—"
            lines.append(f"| {r['row']} | {r['paper']:.2f} | {ours} | {diff}{flag} | "
                         f"{r['seeds']} | {budget} | {fmt(r['valid_mean'])} |")
        lines.append("")
    lines += ["## Rank agreement", "",
              f"Spearman rank correlation between our Table-1 column and the paper's over the "
              f"{n} of {len(TABLE1_METHODS)} methods that ran: **{fmt(rho, 3)}**"
              + (" (needs at least 3 methods)" if n < 3 else "") + ".", ""]
    cur = curves(db)
    if cur:
        lines += ["## Validation accuracy per epoch (Sum and UDI, OOD valid)", "",
                  "UDI's epochs are prefixed by their stage (`unimodal`: both branches "
                  "trained alone; `follower_1`: the follower guided by the anchor); fused "
                  "accuracy, then each branch's own in parentheses.", ""]
        lines += [f"- `{k}`: {', '.join(v)}" for k, v in cur.items()] + [""]
    return "\n".join(lines) + "\n" + notes


def main() -> None:
    """Write the doc and the CSV."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="bench/cgmnist-udi/results.db")
    p.add_argument("--doc", default="docs/reproductions/cgmnist.md")
    p.add_argument("--csv", default="benchmarks/reproductions/cgmnist.csv")
    p.add_argument("--notes", default=str(HERE / "cgmnist_notes.md"))
    args = p.parse_args()
    db = Path(args.db)
    recs = summarise(load_runs(db)) if db.exists() else summarise([])
    notes = Path(args.notes).read_text() if Path(args.notes).exists() else ""
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text(render(recs, db, notes))
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "row", "paper", "ours_mean", "ours_std", "seeds", "epochs",
                    "n_train"])
        for r in recs:
            w.writerow([r["table"], r["row"], r["paper"],
                        "" if not r["seeds"] else f"{r['ours_mean']:.2f}",
                        "" if not r["seeds"] else f"{r['ours_std']:.2f}",
                        r["seeds"], r["epochs"], r["n_train"]])
    rho, n = spearman(recs)
    print(f"wrote {args.doc} and {args.csv}: {sum(1 for r in recs if r['seeds'])} of "
          f"{len(recs)} rows with results; Spearman {fmt(rho, 3)} over {n} methods")


if __name__ == "__main__":
    main()
