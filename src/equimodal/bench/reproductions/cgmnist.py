"""The CG-MNIST reproduction's tables: UDI's rows, their suite labels, and our numbers.

Maps each row of UDI's CG-MNIST tables (Table 1-4 and the appendix's anchor choice) to the
suite entries that reproduce it (label + method) in ``equimodal bench --suite cgmnist-udi``
and the suite files beside it under ``benchmarks/reproductions/``, and summarises finished
runs into rows: our test accuracy at the epoch selected on the out-of-distribution
validation split (mean ± std over seeds), the branches' read-outs, the budget, and the
Spearman rank agreement with the paper's column.
``benchmarks/reproductions/cgmnist_report.py`` renders them.

Runs come from a results database and its committed archive (:mod:`equimodal.bench.archive`);
a row whose runs are in neither falls back to the CSV the report wrote last time
(:func:`read_previous`), flagged ``previous``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equimodal.bench.archive import merge_runs, read_archive, run_history
from equimodal.bench.store import load_results
from equimodal.bench.tables import latest_per_point

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


def load_runs(db: Path | None, archive: Path | None = None) -> list[dict[str, Any]]:
    """The runs of the results database and of its committed archive (JSON columns decoded,
    ``path`` the run folder, ``history`` the archived validation history), the newest of
    each (method, label, seed) only: a suite entry whose settings changed gets a new run id
    next to its superseded row (:func:`equimodal.bench.tables.latest_per_point`). The
    database's copy of a run wins over the archive's.
    """
    import pandas as pd

    current = (load_results(db).to_dict("records") if db is not None and db.exists() else [])
    merged = merge_runs(current, read_archive(archive) if archive is not None else [])
    if not merged:
        return []
    latest, _ = latest_per_point(pd.DataFrame.from_records(merged))
    runs = latest.to_dict("records")
    for r in runs:
        for k in ("config", "metrics", "timings"):  # None (a failed run) or NaN: empty
            r[k] = r[k] if isinstance(r.get(k), dict) else {}
        if not isinstance(r.get("history"), list):
            r["history"] = None  # NaN in the frame: read the run folder, if any
    return runs


def finished_runs(runs: list[dict[str, Any]], labels: tuple[str, ...], method: str
              ) -> list[dict[str, Any]]:
    return [r for r in runs if r["label"] in labels and r["method"] == method
            and r["status"] == "finished"]


def mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


#: A committed CSV's rows by (table, row, epochs, n_train): what the last generation wrote.
Previous = dict[tuple[str, str, int, int], dict[str, Any]]


def read_previous(path: Path) -> Previous:
    """The rows with results of a CSV this script wrote (its last generation), by (table,
    row, epochs, n_train): the fallback of rows whose runs are in neither the database nor
    the archive (a database lost with its machine)."""
    out: Previous = {}
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["ours_mean"] and r["seeds"] not in ("", "0"):
                out[(r["table"], r["row"], int(r["epochs"]), int(r["n_train"]))] = {
                    "ours_mean": float(r["ours_mean"]), "ours_std": float(r["ours_std"]),
                    "seeds": int(r["seeds"]), "epochs": int(r["epochs"]),
                    "n_train": int(r["n_train"])}
    return out


#: (epochs, n_train) of each block's runs: the key of its rows in the committed CSV.
BLOCK_BUDGET = {"": (6, 8000), "cal": (6, 8000), "long30": (30, 8000), "full6": (6, 50000)}


def row_record(runs: list[dict[str, Any]], table: str, row: str, paper: float,
            labels: tuple[str, ...], method: str,
            fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ours (test accuracy at the epoch selected on OOD valid) and the branches' read-outs;
    with fewer finished runs than ``fallback`` has seeds (none, or a rerun still in
    progress), that :func:`read_previous` row instead, flagged ``previous``: mean, std,
    seeds and budget only."""
    done = finished_runs(runs, labels, method)
    # A partial rerun (fewer seeds than the earlier record) does not replace that record.
    if fallback is not None and len(done) < fallback["seeds"]:
        seed0 = fallback["ours_mean"] if fallback["seeds"] == 1 else math.nan
        return {"table": table, "row": row, "paper": paper, **fallback, "previous": True,
                "seed0": seed0,
                "valid_mean": math.nan, "gray": math.nan, "color": math.nan, "clip": 0.0,
                "minutes": math.nan, "failed": []}
    test = [r["metrics"]["test"] for r in done]
    mean, std = mean_std([100 * t["accuracy"] for t in test])
    cfg = done[0]["config"] if done else {}
    rec: dict[str, Any] = {
        "table": table, "row": row, "paper": paper, "seeds": len(done),
        "ours_mean": mean, "ours_std": std,
        "valid_mean": mean_std([100 * r["metrics"]["valid"]["accuracy"] for r in done])[0],
        "epochs": cfg.get("train", {}).get("epochs", ""),
        "n_train": cfg.get("data", {}).get("n_train") or (50000 if cfg else ""),
        "clip": cfg.get("train", {}).get("clip_norm") or 0.0,
        "minutes": statistics.fmean([(r["wall_seconds"] or 0) / 60 for r in done]) if done
        else math.nan,
        "failed": [r["reason"] for r in runs if r["label"] in labels
                   and r["method"] == method and r["status"] == "failed"],
    }
    seed0 = [100 * r["metrics"]["test"]["accuracy"] for r in done if r["seed"] == 0]
    rec["seed0"] = seed0[0] if seed0 else math.nan
    for m in ("gray", "color"):  # each branch's own read-out inside the trained model
        rec[m] = mean_std([100 * t[f"{m}/accuracy"] for t in test if f"{m}/accuracy" in t])[0]
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
#: MMPareto's row averages seed 0 and the two extra seeds of ``long30-seeds`` (seed 0's gray
#: branch died, at 6 epochs as at 30; the 6-epoch row has three seeds for the same reason).
LONG30_LABELS = {"sum": ("long30-sum",), "udi": ("long30-follower30",),
                 "pmr": ("long30-t1", "long30-pmr-clip"),
                 "mmpareto": ("long30-t1", "long30-seeds")}


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


def summarise(runs: list[dict[str, Any]], block: str = "", previous: Previous | None = None
              ) -> list[dict[str, Any]]:
    """One record per paper row: ours mean/std over finished seeds, budget, validation; a
    row without runs takes its ``previous`` CSV row of the block's budget, if any."""
    epochs, n_train = BLOCK_BUDGET[block]
    prev = previous or {}
    return [row_record(runs, *row, fallback=prev.get((row[0], row[1], epochs, n_train)))
            for row in block_rows(block)]


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
SIX, THIRTY, FULL = "6 epochs", "30 epochs", "6 epochs × 50,000 images"
MAIN = Variant(
    long=[("Unimodal gray", "Unimodal gray", "unimodal",
           {SIX: T1_LABELS["Unimodal gray"], FULL: FULL6_LABELS["Unimodal gray"]}),
          ("Unimodal color", "Unimodal color", "unimodal",
           {SIX: T1_LABELS["Unimodal color"], FULL: FULL6_LABELS["Unimodal color"]}),
          ("Sum", "Sum", "sum", {SIX: T1_LABELS["Sum"],
                                 THIRTY: LONG30_LABELS["sum"], FULL: FULL6_LABELS["Sum"]}),
          ("UDI, follower stage 3 epochs", "UDI", "udi",
           {SIX: T1_LABELS["UDI"], THIRTY: ("long30",)}),
          ("UDI, follower stage = epochs (default)", "UDI", "udi",
           {THIRTY: LONG30_LABELS["udi"], FULL: FULL6_LABELS["UDI"]}),
          ("UDI, follower = epochs, started from its selection-stage weights", "UDI", "udi",
           {THIRTY: ("follower-init-unimodal",)}),
          ("UDI, follower = epochs, controller on 1,024 images", "UDI", "udi",
           {THIRTY: ("controller-batch-1024",)})],
    long_columns=(SIX, THIRTY, FULL),
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

#: Held-out data inside training (cgmnist-udi-heldout.toml). PMR's prototypes from training
#: features (Eq. 4, Table 1's row) or from held-out images, as its reference script computes
#: them (on test) for CG-MNIST; LFM's weights from 8 validation images per hyper-gradient step
#: (Table 1's row) or from its authors' heuristic schedule (no held-out data).
PMR_HELD_OUT: dict[str, tuple[str, ...]] = {SIX: ("pmr-refprotos",),
                                             THIRTY: ("long30-pmr-refprotos-clip",)}
HELD_OUT = Variant(
    long=[("PMR, training prototypes (Eq. 4; Table 1's row)", "PMR", "pmr",
           {SIX: T1_LABELS["PMR"], THIRTY: ("long30-pmr-clip",)}),
          ("PMR, held-out prototypes, the reference script's settings", "PMR", "pmr",
           PMR_HELD_OUT),
          ("PMR, held-out prototypes alone (paper's coefficients and PER)", "PMR", "pmr",
           {SIX: ("pmr-validprotos",)}),
          ("PMR, training prototypes, the reference script's coefficients (binary, no PER)",
           "PMR", "pmr", {SIX: ("pmr-refcoefs",)}),
          ("LFM, learned weights, 8 validation images per step (Table 1's row)", "LFM", "lfm",
           {SIX: T1_LABELS["LFM"], THIRTY: LONG30_LABELS.get("lfm", ("long30-t1",))}),
          ("LFM, heuristic schedule (no held-out data)", "LFM", "lfm",
           {SIX: ("lfm-heuristic",)})],
    long_columns=(SIX, THIRTY),
    long_title="Held-out data inside training: PMR's prototypes (Eq. 4: training features; "
               "its reference script: held-out images), LFM's weights")


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


#: Table 1's rows that the issue's protocol runs with three seeds (the others: one).
THREE_SEED_ROWS = ("Sum", "UDI")


def one_seed_value(rec: dict[str, Any]) -> float:
    """A row under the one-seed-per-method protocol: its mean for the three-seed rows and
    the single-seed ones, else its seed-0 run (NaN if that is unknown)."""
    if rec["row"] in THREE_SEED_ROWS or rec["seeds"] == 1:
        return float(rec["ours_mean"])
    return float(rec.get("seed0", math.nan))


def spearman(recs: list[dict[str, Any]], one_seed: bool = False) -> tuple[float, float, int]:
    """Spearman rho (and its p-value) between ours and the paper over Table 1's methods:
    our means over seeds, or with ``one_seed`` :func:`one_seed_value`."""
    value = one_seed_value if one_seed else (lambda r: float(r["ours_mean"]))
    pairs = [(r["paper"], value(r)) for r in recs
             if r["table"] == "t1" and r["row"] in TABLE1_METHODS and r["seeds"]
             and not math.isnan(value(r))]
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


#: UDI runs whose controller weights are summarised: (suite label, what it is).
CONTROLLER_RUNS = [("cgmnist", "Table 1, 6 epochs, follower stage 3 epochs"),
                   ("cgmnist-seeds", "Table 1, 6 epochs, seeds 1-2"),
                   ("long30", "30 epochs, follower stage 3 epochs"),
                   ("long30-follower30", "30 epochs, follower stage 30 epochs (default)"),
                   ("follower-init-unimodal", "30 + 30 epochs, follower from its own weights"),
                   ("controller-batch-1024", "30 + 30 epochs, controller on 1,024 images"),
                   ("full6", "6 epochs × 50,000 images, follower stage 6 epochs")]


def controller_record(runs: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    """UDI's controller weights (Eq. 16) over the follower stage of the runs of ``label``,
    pooled over seeds, against the paper's Fig. 3 (on CG-MNIST alpha_com "rises and
    stabilizes"): mean ``alpha_com`` over the first and the last third of the stage, and how
    many follower epochs had one weight alone (the other at most 0.05), none (both at most
    0.05; Eq. 15's ReLU zeroes both when both gradients disagree with ``L_cls``), or
    ``alpha_com > alpha_con``. ``None`` when no run of ``label`` logged controller weights.
    """
    first: list[float] = []
    last: list[float] = []
    counts = {"epochs": 0, "one": 0, "none": 0, "com_wins": 0}
    seeds = 0
    for r in finished_runs(runs, (label,), "udi"):
        pairs = [(float(h["train/alpha_con"]), float(h["train/alpha_com"]))
                 for h in run_history(r) if str(h.get("stage", "")).startswith("follower")
                 and "train/alpha_con" in h and "train/alpha_com" in h]
        if not pairs:
            continue
        seeds += 1
        third = max(1, len(pairs) // 3)
        first += [com for _, com in pairs[:third]]
        last += [com for _, com in pairs[-third:]]
        counts["epochs"] += len(pairs)
        counts["one"] += sum(1 for c, m in pairs if min(c, m) <= 0.05 < max(c, m))
        counts["none"] += sum(1 for c, m in pairs if max(c, m) <= 0.05)
        counts["com_wins"] += sum(1 for c, m in pairs if m > c)
    if not seeds:
        return None
    return {"label": label, "seeds": seeds, "com_first": statistics.fmean(first),
            "com_last": statistics.fmean(last), **counts}
