"""The CG-MNIST reproduction report: rows, ranks, Spearman and the CSV from a results database."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import pytest

from benchmark_scripts import load_script
from equimodal.bench.store import ResultStore


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("reproductions/cgmnist_report.py", "cgmnist_report")


def test_ranks_share_ties_like_spearman(report: ModuleType) -> None:
    from scipy.stats import rankdata

    values = [3.0, 1.0, 3.0, 2.0, 5.0]
    # ours ranks 1 = highest; scipy ranks 1 = lowest, so flip.
    expected = [len(values) + 1 - r for r in rankdata(values)]
    assert report.ranks(values) == pytest.approx(expected)


def _run(label: str, method: str, seed: int, acc: float, run_dir: str = "",
         status: str = "finished") -> dict:
    test = {"accuracy": acc, "gray/accuracy": acc + 0.01, "color/accuracy": 0.1}
    return {"label": label, "method": method, "seed": seed, "status": status,
            "metrics": {"test": test, "valid": {"accuracy": acc - 0.05}},
            "config": {"train": {"epochs": 6}, "data": {"n_train": 8000}},
            "timings": {"job_cpu_seconds": 60.0}, "wall_seconds": 120.0, "reason": None,
            "run_dir": run_dir}


def _archives(tmp_path: Path) -> list[str]:
    """Archive paths in ``tmp_path`` (the defaults are the committed files)."""
    return ["--archive", str(tmp_path / "runs.jsonl"),
            "--hsv-archive", str(tmp_path / "hsv-runs.jsonl")]


def _table1_runs(report: ModuleType, reverse: bool = False) -> list[dict]:
    """One finished run per Table-1 method whose accuracy follows the paper's order."""
    rows = [r for r in report.ROWS if r[0] == "t1" and r[1] in report.TABLE1_METHODS]
    out = []
    for _, _, paper, labels, method in rows:
        acc = (100 - paper if reverse else paper) / 100
        out.append(_run(labels[0], method, 0, acc))
    return out


def test_summarise_means_stds_and_spearman(report: ModuleType) -> None:
    runs = _table1_runs(report)
    runs += [_run("cgmnist-seeds", "sum", 1, 0.60), _run("cgmnist-seeds", "sum", 2, 0.70),
             _run("cgmnist-seeds", "sum", 3, 0.10, status="failed")]
    recs = {(r["table"], r["row"]): r for r in report.summarise(runs)}
    s = recs[("t1", "Sum")]
    accs = [64.07, 60.0, 70.0]
    assert s["seeds"] == 3
    assert s["ours_mean"] == pytest.approx(sum(accs) / 3)
    assert s["ours_std"] == pytest.approx(float(__import__("statistics").stdev(accs)))
    assert s["gray"] == pytest.approx(sum(accs) / 3 + 1)
    assert recs[("t1", "Unimodal gray")]["seeds"] == 0
    assert math.isnan(recs[("t2", "DO only")]["ours_mean"])
    rho, _, n = report.spearman(list(recs.values()))
    assert n == len(report.TABLE1_METHODS)
    assert rho > 0.9  # Sum's mean moved a little; the order is otherwise the paper's
    rho_rev, _, _ = report.spearman(report.summarise(_table1_runs(report, reverse=True)))
    assert rho_rev == pytest.approx(-1.0)


def test_main_writes_doc_csv_and_curves(report: ModuleType, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "bench" / "results.db"
    db.parent.mkdir()
    runs = _table1_runs(report)
    udi = next(r for r in runs if r["method"] == "udi")
    udi["run_dir"] = "runs/udi-cgmnist-x"
    hist = db.parent / udi["run_dir"]
    hist.mkdir(parents=True)
    lines = [{"stage": "unimodal", "valid/accuracy": 0.5, "valid/gray/accuracy": 0.9},
             {"stage": "follower_1", "valid/accuracy": 0.7, "valid/gray/accuracy": 0.9},
             {"stage": "follower_1", "train/loss": 0.1}]  # no validation: skipped
    (hist / "history.jsonl").write_text("\n".join(json.dumps(h) for h in lines))
    # An older row of the same grid point (settings changed since) is superseded.
    store = ResultStore(db)
    stale = dict(_run("cgmnist", "sum", 0, 0.99), run_id="stale")
    for i, r in enumerate([stale, *runs]):
        store.upsert({**r, "run_id": r.get("run_id", f"run{i}"), "dataset": "cgmnist",
                      "run_dir": str(db.parent / r["run_dir"]) if r["run_dir"] else None})
    con = sqlite3.connect(db)
    con.execute("UPDATE runs SET updated_at = '2026-01-01' WHERE run_id = 'stale'")
    con.commit()
    con.close()
    doc, out_csv = tmp_path / "docs" / "cgmnist.md", tmp_path / "cgmnist.csv"
    monkeypatch.setattr(sys, "argv", ["x", "--db", str(db), "--doc", str(doc),
                                      "--csv", str(out_csv), "--notes", str(tmp_path / "no"),
                                      *_archives(tmp_path)])
    report.main()
    text = doc.read_text()
    assert "**1.000**" in text  # Spearman over the 11 methods, in the paper's order
    assert "unimodal:50.0 (gray 90), follower_1:70.0 (gray 90)" in text
    assert (doc.parent / "cgmnist_curves.png").stat().st_size > 1000
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["table", "row", "paper", "ours_mean", "ours_std", "seeds",
                             "epochs", "n_train"]
    assert {r["table"] for r in rows} == {"t1", "t2", "t3", "t4"}
    sum_row = next(r for r in rows if r["row"] == "Sum")
    assert (sum_row["ours_mean"], sum_row["seeds"], sum_row["epochs"]) == ("64.07", "1", "6")
    assert next(r for r in rows if r["row"] == "DO only")["ours_mean"] == ""


def test_calibrated_block_reads_its_own_labels(report: ModuleType) -> None:
    rows = {r[1]: r[3] for r in report.block_rows("cal")}
    assert rows["Sum"] == ("cal-cgmnist", "cal-cgmnist-seeds")
    assert rows["color anchor"] == ("cal-t4-anchor-color",)
    assert rows["Unimodal gray"] == ("unimodal-gray",)  # gray does not depend on the jitter
    assert rows["Unimodal color"] == ("jitter-0.15-color",)
    runs = [_run("cal-cgmnist", "sum", 0, 0.5), _run("cgmnist", "sum", 0, 0.2)]
    cal = {r["row"]: r for r in report.summarise(runs, "cal")}
    lit = {r["row"]: r for r in report.summarise(runs)}
    assert (cal["Sum"]["ours_mean"], lit["Sum"]["ours_mean"]) == pytest.approx((50.0, 20.0))


def test_longer_budget_tables(report: ModuleType, tmp_path: Path) -> None:
    # HSV suite: the calibrated block at 6, 15 and 30 epochs.
    runs = [_run("cal-cgmnist", "udi", 0, 0.90), _run("cal-long", "udi", 0, 0.95),
            _run("cal-long30", "udi", 0, 0.97), _run("cal-long30", "udi", 1, 0.99)]
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None,
                         report.summarise(runs, "cal"), variant=report.HSV)
    row = next(line for line in text.splitlines() if line.startswith("| UDI | 99.12 | 90.00 (1;"))
    assert "95.00 (1; 96.0 / 10.0)" in row and "98.00 ± 1.41 (2; 99.0 / 10.0)" in row
    assert "| Sum | 64.07 | — |" not in text  # no Sum run at any budget: no row
    # Main suite: the paper's setting at 6 and 30 epochs (no calibrated block).
    runs = [_run("cgmnist", "udi", 0, 0.90), _run("cgmnist-seeds", "udi", 1, 0.92),
            _run("long30", "udi", 0, 0.97), _run("long30-sum", "sum", 0, 0.40),
            _run("unimodal-gray", "unimodal", 0, 0.97)]
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None,
                         report.summarise(runs, "cal"))
    # The gray row is shared with the calibrated block; alone it does not make one.
    assert "Calibrated block" not in text and not report.has_runs(report.summarise(runs, "cal"))
    assert "| row | paper | 6 epochs | 30 epochs | 6 epochs × 50,000 images |" in text
    assert ("| UDI, follower stage 3 epochs | 99.12 | 91.00 ± 1.41 (2; 92.0 / 10.0) | "
            "97.00 (1; 98.0 / 10.0) | — |") in text
    assert "| Sum | 64.07 | — | 40.00 (1; 41.0 / 10.0) | — |" in text
    assert "| Unimodal gray | 99.32 | 97.00 (1; 98.0 / 10.0) | — | — |" in text
    # The method-default follower at 30 epochs and the full-data column: their own rows/cells.
    runs += [_run("long30-follower30", "udi", s, 0.96 + 0.02 * s) for s in range(2)]
    runs += [_run("full6", "udi", 0, 0.95), _run("full6-color", "unimodal", 0, 0.6)]
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None)
    assert ("| UDI, follower stage = epochs (default) | 99.12 | — | 97.00 ± 1.41 (2; 98.0 / "
            "10.0) | 95.00 (1; 96.0 / 10.0) |") in text
    assert "| Unimodal color | 71.69 | — | — | 60.00 (1; 61.0 / 10.0) |" in text


def test_uniform_test_colors_sensitivity(report: ModuleType, tmp_path: Path) -> None:
    runs = [_run("unimodal-color", "unimodal", s, 0.40 + 0.02 * s) for s in range(3)]
    runs += [_run("uniform-test-color", "unimodal", 0, 0.50), _run("uniform-test", "sum", 0, 0.7)]
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None)
    assert "## Data sensitivity: test colors uniform over the RGB cube" in text
    assert "| Unimodal color | 42.00 (3 seeds) | 50.00 (1 seed) | 51.0 / 10.0 |" in text
    assert "| Sum | — (0 seeds) | 70.00 (1 seed) |" in text


def test_palette_comparison_and_hsv_doc(report: ModuleType, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dbs = {}
    for name, runs in {"main": _table1_runs(report),
                       "hsv": [_run("cgmnist", "sum", 0, 0.27), _run("cal-cgmnist", "sum", 0, 0.8),
                               _run("cal-cgmnist", "udi", 0, 0.94)]}.items():
        db = tmp_path / name / "results.db"
        db.parent.mkdir()
        store = ResultStore(db)
        for i, r in enumerate(runs):
            store.upsert({**r, "run_id": f"{name}{i}", "dataset": "cgmnist", "run_dir": None})
        dbs[name] = db
    doc, out_csv = tmp_path / "docs" / "cgmnist.md", tmp_path / "out" / "cgmnist.csv"
    out_csv.parent.mkdir()
    (tmp_path / "hsv_notes.md").write_text("HSV NOTES")
    monkeypatch.setattr(sys, "argv", [
        "x", "--db", str(dbs["main"]), "--hsv-db", str(dbs["hsv"]), "--doc", str(doc),
        "--csv", str(out_csv), "--notes", str(tmp_path / "no"),
        "--hsv-notes", str(tmp_path / "hsv_notes.md"), *_archives(tmp_path)])
    report.main()
    text = doc.read_text()
    assert "## Palette comparison (Table 1)" in text and "(cgmnist-hsv.md)" in text
    assert "| Sum | 64.07 | 64.07 | 27.00 | 80.00 |" in text
    assert "| UDI | 99.12 | 99.12 | — | 94.00 |" in text
    hsv_text = (doc.parent / "cgmnist-hsv.md").read_text()
    assert "— HSV palette" in hsv_text.splitlines()[0] and hsv_text.endswith("HSV NOTES")
    assert "hsv_notes.md" in hsv_text.splitlines()[2]
    hsv_rows = list(csv.DictReader((out_csv.parent / "cgmnist_hsv.csv").open()))
    assert next(r for r in hsv_rows if r["row"] == "Sum")["ours_mean"] == "27.00"
    cal_rows = list(csv.DictReader((out_csv.parent / "cgmnist_hsv_calibrated.csv").open()))
    assert next(r for r in cal_rows if r["row"] == "UDI")["ours_mean"] == "94.00"
    assert not (out_csv.parent / "cgmnist_calibrated.csv").exists()  # main has no cal block


def test_table1_at_30_epochs(report: ModuleType, tmp_path: Path) -> None:
    rows = [r for r in report.ROWS if r[0] == "t1" and r[1] in report.TABLE1_METHODS]
    labels = {r[1]: r[3] for r in report.block_rows("long30")}
    # UDI's 30-epoch row: its method default (follower stage = train.epochs).
    assert labels["Sum"] == ("long30-sum",) and labels["UDI"] == ("long30-follower30",)
    assert labels["PMR"] == ("long30-t1", "long30-pmr-clip") and "Unimodal gray" not in labels
    runs = [_run(labels[row][0], method, 0, paper / 100) for _, row, paper, _, method in rows]
    for r in runs:
        r["config"]["train"]["epochs"] = 30
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None)
    assert "### Table 1: CG-MNIST column (accuracy %) — 30 epochs" in text
    assert "### Rank agreement — 30 epochs" in text and "**1.000**" in text
    assert "Rows within 10 points of the paper: **11 of 11** that ran." in text
    assert "| Greedy | 91.01 | 91.01 | +0.00 | 1 |" in text
    # PMR's clipped rerun replaces its failed run, and its budget says so.
    pmr = next(r for r in runs if r["method"] == "pmr")
    pmr["label"], pmr["config"]["train"]["clip_norm"] = "long30-pmr-clip", 1.0
    failed = _run("long30-t1", "pmr", 0, 0.1, status="failed")
    text = report.render(report.summarise(runs), [*runs, failed], tmp_path / "results.db", "",
                         None)
    assert "| PMR | 78.50 | 78.50 | +0.00 | 1 |" in text and ", clip_norm 1 |" in text
    assert text.count("clip_norm") == 1


def test_full_data_rows_join_the_csv(report: ModuleType, tmp_path: Path) -> None:
    rows = {r[1]: (r[3], r[4]) for r in report.block_rows("full6")}
    assert set(rows) == {"Unimodal gray", "Unimodal color", "Sum", "UDI"}
    runs = [_run(labels[0], method, 0, 0.5) for labels, method in rows.values()]
    runs += [_run("cgmnist", "sum", 0, 0.45)]
    for r in runs[:-1]:
        r["config"]["data"] = {"n_train": None}  # all 50,000 images
    db = tmp_path / "results.db"
    out_csv = tmp_path / "cgmnist.csv"
    report.write_doc(db, runs, tmp_path / "cgmnist.md", out_csv, tmp_path / "no-notes.md")
    got = [(r["row"], r["n_train"], r["ours_mean"]) for r in csv.DictReader(out_csv.open())
           if r["seeds"] != "0"]
    assert ("Sum", "8000", "45.00") in got and ("Sum", "50000", "50.00") in got
    assert ("UDI", "50000", "50.00") in got and ("Unimodal color", "50000", "50.00") in got


def test_runs_outlive_their_database_through_the_archive(
        report: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generation archives its runs; once the database is gone the archive alone gives
    the same document, and rows that neither holds come from the last CSV, marked."""
    db = tmp_path / "bench" / "results.db"
    db.parent.mkdir()
    runs = _table1_runs(report)
    store = ResultStore(db)
    for i, r in enumerate(runs):
        store.upsert({**r, "run_id": f"run{i}", "dataset": "cgmnist", "run_dir": None})
    doc, out_csv = tmp_path / "docs" / "cgmnist.md", tmp_path / "cgmnist.csv"
    argv = ["x", "--db", str(db), "--doc", str(doc), "--csv", str(out_csv),
            "--notes", str(tmp_path / "no"), *_archives(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    first = doc.read_text()
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(runs)
    db.unlink()
    report.main()
    assert doc.read_text() == first and "†" not in first
    # Now only LFM's run is on record: every other row falls back to the CSV just written.
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    (tmp_path / "runs.jsonl").write_text(
        "".join(line + "\n" for line in lines if '"lfm"' in line))
    csv_before = out_csv.read_text()
    report.main()
    text = doc.read_text()
    assert ("| LFM | 97.77 | 97.77 | +0.00 | 1 | 98.8 / 10.0 | 92.77 | 6 ep × 8000, 2.0 min |"
            in text)
    assert "| Sum | 64.07 | 64.07 | +0.00 | 1 | — / — | — | 6 ep × 8000, earlier record† |" in text
    assert "**1.000**" in text and "† *earlier record*" in text
    assert out_csv.read_text() == csv_before  # the fallback rows are written back unchanged


def test_previous_rows_are_keyed_by_budget(report: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "cgmnist.csv"
    path.write_text("table,row,paper,ours_mean,ours_std,seeds,epochs,n_train\n"
                    "t1,UDI,99.12,82.03,2.10,3,6,8000\n"
                    "t1,UDI,99.12,96.85,0.29,3,30,8000\n"
                    "t1,UDI,99.12,94.49,0.00,1,6,50000\n"
                    "t2,DO only,98.47,,,0,,\n")
    prev = report.read_previous(path)
    assert set(prev) == {("t1", "UDI", 6, 8000), ("t1", "UDI", 30, 8000),
                         ("t1", "UDI", 6, 50000)}
    by_block = {b: next(r for r in report.summarise([], b, prev) if r["row"] == "UDI")
                for b in ("", "long30", "full6")}
    assert [by_block[b]["ours_mean"] for b in ("", "long30", "full6")] == [82.03, 96.85, 94.49]
    assert by_block["long30"]["seeds"] == 3 and by_block["long30"]["previous"]
    # Two of the three seeds rerun: the complete earlier record stands; all three replace it.
    part = [_run("cgmnist", "udi", 0, 0.5), _run("cgmnist-seeds", "udi", 1, 0.6)]
    udi = next(r for r in report.summarise(part, "", prev) if r["row"] == "UDI")
    assert (udi["ours_mean"], udi["seeds"], udi["previous"]) == (82.03, 3, True)
    part.append(_run("cgmnist-seeds", "udi", 2, 0.7))
    udi = next(r for r in report.summarise(part, "", prev) if r["row"] == "UDI")
    assert (udi["ours_mean"], udi["seeds"], "previous" in udi) == (pytest.approx(60.0), 3, False)
    # The longer-budget table: a cell takes a previous row only when its labels are that
    # row's. UDI's 3-epoch follower stage at 30 epochs (label long30) is not the 30-epoch
    # Table 1 row (long30-follower30), so it stays empty.
    text = "\n".join(report._long_lines([_run("long30-sum", "sum", 0, 0.6)], report.MAIN, prev))
    assert "| UDI, follower stage 3 epochs | 99.12 | 82.03 ± 2.10 (3; earlier record†) | — | — |" \
        in text
    assert ("| UDI, follower stage = epochs (default) | 99.12 | — | 96.85 ± 0.29 (3; earlier "
            "record†) | 94.49 (1; earlier record†) |") in text
    assert "started from its selection-stage weights" not in text  # nothing on record


def test_one_seed_spearman_and_pmr_prototype_rows(report: ModuleType, tmp_path: Path) -> None:
    rows = [r for r in report.ROWS if r[0] == "t1" and r[1] in report.TABLE1_METHODS]
    labels = {r[1]: r[3] for r in report.block_rows("long30")}
    assert labels["MMPareto"] == ("long30-t1", "long30-seeds")
    runs = [_run(labels[row][0], method, 0, paper / 100) for _, row, paper, _, method in rows]
    # MMPareto's extra seeds lift its mean to the top; seed 0 alone keeps the paper's order.
    runs += [_run("long30-seeds", "mmpareto", s, 0.999) for s in (1, 2)]
    recs = report.summarise(runs, "long30")
    assert report.spearman(recs)[0] < 1.0
    assert report.spearman(recs, one_seed=True)[0] == pytest.approx(1.0)
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None)
    assert "With seed 0 alone for MMPareto (the protocol's one seed per method; three for " \
           "Sum and UDI): **1.000**" in text
    # PMR's held-out prototypes: their own rows, and Table 1's Spearman with them as PMR's row.
    runs += [_run("pmr-refprotos", "pmr", 0, 0.20), _run("long30-pmr-refprotos-clip", "pmr", 0,
                                                         0.10),
             _run("long30-pmr-clip", "pmr", 0, 0.785)]
    text = report.render(report.summarise(runs), runs, tmp_path / "results.db", "", None)
    assert "### Held-out data inside training: PMR's prototypes" in text
    assert ("| LFM, learned weights, 8 validation images per step (Table 1's row) | 97.77 | "
            "— | 97.77 (1; 98.8 / 10.0) |") in text
    assert ("| PMR, held-out prototypes, the reference script's settings | 78.50 | 20.00 (1; "
            "21.0 / 10.0) | 10.00 (1; 11.0 / 10.0) |") in text
    swapped = [dict(r, ours_mean=10.0) if r["row"] == "PMR" else r for r in recs]
    want = report.spearman(swapped)[0]
    assert f"30 epochs: **{want:.3f}**" in text and want < 0.9


def test_controller_weights_against_fig3(report: ModuleType) -> None:
    from equimodal.bench.reproductions.cgmnist import controller_record

    def run(seed: int, alphas: list[tuple[float, float]]) -> dict:
        r = _run("long30-follower30", "udi", seed, 0.97)
        r["history"] = ([{"epoch": 0, "stage": "unimodal", "valid/accuracy": 0.9}]
                        + [{"epoch": 1 + i, "stage": "follower_1", "valid/accuracy": 0.95,
                            "train/alpha_con": c, "train/alpha_com": m}
                           for i, (c, m) in enumerate(alphas)])
        return r

    runs = [run(0, [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.2, 0.8), (0.0, 1.0), (0.03, 0.97)]),
            run(1, [(1.0, 0.0), (0.0, 1.0), (0.6, 0.4)]),
            _run("long30-follower30", "udi", 2, 0.96)]  # no controller weights: skipped
    rec = controller_record(runs, "long30-follower30")
    assert rec is not None and rec["seeds"] == 2 and rec["epochs"] == 9
    # Thirds: seed 0 epochs (0, 0.0) / (0.0 ... 1.0, 0.97) -> first [0, 0], last [1, .97];
    # seed 1 -> first [0], last [0.4].
    assert rec["com_first"] == pytest.approx((0.0 + 0.0 + 0.0) / 3)
    assert rec["com_last"] == pytest.approx((1.0 + 0.97 + 0.4) / 3)
    assert (rec["one"], rec["none"], rec["com_wins"]) == (5, 1, 4)
    assert controller_record(runs, "cgmnist") is None
    lines = report.controller_lines(runs)
    assert lines[0].startswith("## UDI's controller weights")
    assert "| 30 epochs, follower stage 30 epochs (default) | 2 | 9 | 0.00 | 0.79 | 5 | 1 | 4 |" \
        in lines


def test_curves_list_the_branches_in_the_data_order_whatever_the_key_order(
        report: ModuleType) -> None:
    """A database run keeps the data's modality order, an archived one has its keys sorted:
    the text is the same either way."""
    hist = {"epoch": 0, "valid/accuracy": 0.5, "valid/gray/accuracy": 0.9,
            "valid/color/accuracy": 0.2}
    run = {"label": "cgmnist", "method": "sum", "seed": 0, "status": "finished",
           "modalities": ["gray", "color"]}
    texts = [report.curves([{**run, "history": [dict(sorted(hist.items(), reverse=rev))]}])
             for rev in (False, True)]
    assert texts[0] == texts[1] == {"sum cgmnist seed 0": ["50.0 (gray 90/color 20)"]}
