"""Bench: suites, grid expansion, skip/fail recording, reuse, resume, store, tables, CLI,
local process pool and Ray."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from equimodal.bench import ResultStore, expand, load_results, load_suite, run_grid
from equimodal.bench.jobs import JobSpec, run_job
from equimodal.bench.launchers import InlineLauncher, LocalLauncher, default_threads
from equimodal.bench.suite import DatasetEntry, Suite, suite_from_dict
from equimodal.bench.tables import all_tables, dataset_table, render
from equimodal.bench.tracking import make_trackers
from equimodal.cli import main
from equimodal.methods.base import Capabilities, Method
from equimodal.registry import METHODS

TINY = {"n_train": 48, "n_valid": 24, "n_test": 24, "dim": 6, "latent": 3, "n_classes": 3}
FAST = {"epochs": 2, "batch_size": 16, "progress": False}
SMALL = {"hidden": 8, "layers": 1}


def tiny_suite(methods: list[str], seeds: int = 2, **kw: Any) -> Suite:
    return Suite(name="t", methods=methods, seeds=list(range(seeds)), train=dict(FAST),
                 model=dict(SMALL), datasets=[DatasetEntry("synthetic", "syn", dict(TINY))],
                 **kw)


@pytest.fixture()
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two throw-away methods in the registry for this test only (in-process runs)."""

    class RegressionOnly(Method):
        """Test method that only supports regression."""

        capabilities = Capabilities(tasks=("regression",))

    class Crashes(Method):
        """Test method whose loss raises."""

        def compute_loss(self, batch, out, ctx):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom in compute_loss")

    for name, cls in (("_regression_only", RegressionOnly), ("_crashes", Crashes)):
        cls.name = name  # type: ignore[misc]
        monkeypatch.setitem(METHODS._items, name, cls)
        monkeypatch.setitem(METHODS._docs, name, "test")


# ----- suites ------------------------------------------------------------------------------
def test_quick_suite_covers_every_method_and_builtin_data() -> None:
    suite = load_suite("quick")
    assert suite.methods == ["all"] and suite.seeds == [0, 1, 2] and suite.robustness
    names = {d.name for d in suite.datasets}
    assert "synthetic" in names and ({"mfeat", "cgdigits"} & names)
    syn = next(d for d in suite.datasets if d.label == "synthetic")
    assert syn.kwargs["strengths"][0] > syn.kwargs["strengths"][1]  # imbalanced
    points = expand(suite, ["concat", "late"])
    assert len(points) == 2 * len(suite.datasets) * 3
    assert len({p.run_id for p in points}) == len(points)
    # DMD runs on the MSA-style entry only (the costly sequence baselines are excluded from
    # the classification sets to keep the suite inside its 10-minute budget).
    dmd = {p.label for p in expand(suite, ["concat", "dmd"]) if p.cfg.method == "dmd"}
    assert dmd == {"synthetic-msa"}


def test_override_priority_suite_dataset_method_cli() -> None:
    suite = suite_from_dict({
        "methods": ["concat", "late"], "seeds": [7],
        "train": {"epochs": 3, "lr": 0.5}, "model": {"hidden": 16},
        "datasets": [{"name": "synthetic", "label": "s", "kwargs": {"n_train": 40},
                      "train": {"epochs": 4, "batch_size": 8}}],
        "per_method": {"late": {"train": {"epochs": 5}, "model": {"hidden": 12}}},
    })
    pts = {p.cfg.method: p.cfg for p in expand(suite, ["concat", "late"], ["train.lr=0.1"])}
    assert pts["concat"].train.epochs == 4 and pts["late"].train.epochs == 5
    assert pts["concat"].model.hidden == 16 and pts["late"].model.hidden == 12
    assert pts["concat"].train.batch_size == 8 and pts["concat"].train.lr == 0.1
    assert pts["concat"].train.seed == 7 and pts["concat"].data == {"n_train": 40}
    # The digest is the run's address: same resolved config, same id; any change, new id.
    again = expand(suite, ["concat", "late"], ["train.lr=0.1"])
    assert [p.run_id for p in again] == [p.cfg.digest() for p in again]
    other = expand(suite, ["concat", "late"], ["train.lr=0.2"])
    assert pts["concat"].digest() != other[0].run_id


@pytest.mark.parametrize("bad, message", [
    ({"method": "x"}, "unknown keys"),
    ({"seeds": 0}, "seeds"),
    ({"datasets": [{"label": "x"}]}, "name"),
    ({"datasets": ["synthetic", {"name": "synthetic"}]}, "unique"),
    ({"per_method": {"concat": {"optim": {}}}}, "sections"),
])
def test_bad_suites_are_rejected(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        suite_from_dict(bad)


def test_dataset_entry_exclude_drops_methods_from_that_entry_only() -> None:
    suite = suite_from_dict({
        "methods": "all", "seeds": [0],
        "datasets": [{"name": "synthetic", "label": "a", "exclude": ["late"]},
                     {"name": "synthetic", "label": "b", "kwargs": {"n_train": 40}}],
    })
    pts = [(p.label, p.cfg.method) for p in expand(suite, ["concat", "late"])]
    assert pts == [("a", "concat"), ("b", "concat"), ("b", "late")]


def test_unknown_method_and_suite_fail_fast() -> None:
    with pytest.raises(KeyError, match="nope"):
        expand(tiny_suite(["nope"]), ["concat"])
    with pytest.raises(FileNotFoundError, match="built-in"):
        load_suite("no_such_suite")


# ----- jobs: skipped / failed / finished ---------------------------------------------------
def test_unsupported_and_crashing_runs_are_recorded_and_grid_continues(
        tmp_path: Path, fake_methods: None) -> None:
    suite = tiny_suite(["_regression_only", "_crashes", "concat"], seeds=1)
    suite.datasets.append(DatasetEntry("not_a_dataset", "ghost", optional=True))
    summary = run_grid(expand(suite, METHODS.names()), tmp_path, InlineLauncher())
    by = {(r["method"], r["label"]): r for r in summary.records}
    assert by[("_regression_only", "syn")]["status"] == "skipped"
    assert "does not support classification" in by[("_regression_only", "syn")]["reason"]
    crash = by[("_crashes", "syn")]
    assert crash["status"] == "failed" and "RuntimeError: boom" in crash["reason"]
    assert "compute_loss" in crash["traceback"]
    assert by[("concat", "syn")]["status"] == "finished"
    assert by[("concat", "ghost")]["status"] == "skipped"
    assert "not registered" in by[("concat", "ghost")]["reason"]
    df = load_results(tmp_path / "results.db")
    assert sorted(df["status"].value_counts().items()) == [
        ("failed", 1), ("finished", 1), ("skipped", 4)]


def test_non_optional_missing_dataset_is_a_failure(tmp_path: Path) -> None:
    spec = JobSpec("x", expand(tiny_suite(["concat"], 1), ["concat"])[0].cfg.to_dict(), "syn",
                   str(tmp_path / "r"))
    spec.cfg["dataset"] = "not_a_dataset"
    record = run_job(spec)
    assert record["status"] == "failed" and "not registered" in record["reason"]


# ----- reuse and resume --------------------------------------------------------------------
def test_rerun_skips_finished_runs(tmp_path: Path) -> None:
    points = expand(tiny_suite(["concat"]), ["concat"])
    first = run_grid(points, tmp_path, InlineLauncher())
    assert first.counts["finished"] == 2 and first.already == 0
    models = sorted((tmp_path / "runs").glob("*/model.pt"))
    stamps = [m.stat().st_mtime_ns for m in models]
    second = run_grid(points, tmp_path, InlineLauncher())
    assert second.already == 2 and not second.records
    assert [m.stat().st_mtime_ns for m in models] == stamps
    # Asking for robustness later reuses the trained models and only adds the evaluation.
    third = run_grid(points, tmp_path, InlineLauncher(), robustness=True)
    assert third.counts["finished"] == 2
    assert all(r["reused"] and "missing" in r["robustness"] for r in third.records)
    assert [m.stat().st_mtime_ns for m in models] == stamps


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from equimodal.engine.trainer import Trainer

    suite = tiny_suite(["concat"], seeds=1)
    suite.train["epochs"] = 5
    points = expand(suite, ["concat"])
    real = Trainer._checkpoint
    calls = {"n": 0}

    def dies_after_two(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the process is killed right after saving epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_grid(points, tmp_path, InlineLauncher())
    run_dir = tmp_path / "runs" / points[0].folder
    assert (run_dir / "last.pt").exists() and not (run_dir / "metrics.json").exists()
    before = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in before] == [0, 1]
    monkeypatch.setattr(Trainer, "_checkpoint", real)
    summary = run_grid(points, tmp_path, InlineLauncher())
    record = summary.records[0]
    assert record["status"] == "finished" and record["resumed"]
    after = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in after] == [0, 1, 2, 3, 4]
    # Epochs 0-1 were not retrained: their rows (wall-clock epoch times included) are kept.
    assert after[:2] == before
    assert not (run_dir / "last.pt").exists()
    # And the resumed run ends where an uninterrupted one does.
    fresh = run_grid(points, tmp_path / "fresh", InlineLauncher()).records[0]
    assert fresh["metrics"]["test"] == pytest.approx(record["metrics"]["test"])


# ----- store -------------------------------------------------------------------------------
def test_store_round_trip_filters_and_relative_paths(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "b" / "results.db")
    base = {"dataset": "synthetic", "config": {"x": 1}, "versions": {"torch": "t"}}
    store.upsert({**base, "run_id": "r1", "method": "concat", "label": "syn", "seed": 0,
                  "status": "finished", "run_dir": str(tmp_path / "b" / "runs" / "r1"),
                  "metrics": {"test": {"accuracy": 0.5, "a/accuracy": 0.4}, "valid": {}}})
    store.upsert({**base, "run_id": "r2", "method": "late", "label": "syn2", "seed": 1,
                  "status": "failed", "reason": "boom"})
    store.upsert({**base, "run_id": "r1", "method": "concat", "label": "syn", "seed": 0,
                  "status": "finished", "run_dir": str(tmp_path / "b" / "runs" / "r1"),
                  "metrics": {"test": {"accuracy": 0.75}, "valid": {}}})
    assert len(store) == 2
    assert store.status_map() == {"r1": ("finished", False), "r2": ("failed", False)}
    assert store.rows(method="concat")[0]["run_dir"] == str(Path("runs") / "r1")
    df = load_results(store.path)
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    row = df[df["run_id"] == "r1"].iloc[0]
    assert row["test/accuracy"] == 0.75 and row["config"] == {"x": 1}
    assert Path(row["path"]) == (tmp_path / "b" / "runs" / "r1")
    assert list(load_results(store.path, dataset="syn2")["run_id"]) == ["r2"]
    assert list(load_results(store.path, status="failed")["method"]) == ["late"]
    with pytest.raises(FileNotFoundError, match="equimodal bench"):
        load_results(tmp_path / "missing.db")


# ----- tables ------------------------------------------------------------------------------
def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"dataset": "d", "status": "finished", "reason": "", "task": "classification",
            "modalities": ["a", "b"], "label": "d"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_paper_table_marks_best_and_second_per_row() -> None:
    rows = []
    for method, fused, a in (("m1", [0.80, 0.82], 0.7), ("m2", [0.90, 0.92], 0.6),
                             ("m3", [0.85, 0.85], 0.6)):
        for seed, f in enumerate(fused):
            rows.append({"method": method, "seed": seed, "test/accuracy": f,
                         "test/a/accuracy": a, "test/b/accuracy": 0.5})
    rows.append({"method": "m4", "seed": 0, "status": "skipped", "reason": "no regression"})
    table = dataset_table(_frame(rows), "d", methods=["m3"])
    assert table.rows == ["a (unimodal)", "b (unimodal)", "fusion"]
    assert table.cols == ["m3", "m1", "m2"]  # preferred order first, m4 has no result
    fusion = table.rows.index("fusion")
    assert table.marks[(fusion, 2, 0)] == 1 and table.marks[(fusion, 0, 0)] == 2
    assert (fusion, 1, 0) not in table.marks
    assert table.cells[fusion][2][0].text() == "91.00±1.41"
    # Ties share a mark: m2 and m3 both have a = 0.6 -> second place for both.
    assert table.marks[(0, 1, 0)] == 1 and table.marks[(0, 0, 0)] == 2 == table.marks[(0, 2, 0)]
    # All equal: best for everybody and no second.
    assert [table.marks.get((1, j, 0)) for j in range(3)] == [1, 1, 1]
    md = render([table], "markdown")
    assert "**91.00±1.41**" in md and "<u>85.00±0.00</u>" in md and "m4: skipped" in md
    tex = render([table], "latex")
    assert r"\textbf{91.00$\pm$1.41}" in tex and r"\underline{85.00$\pm$0.00}" in tex


def test_msa_layout_ranks_mae_lower_is_better() -> None:
    rows = []
    for method, mae, acc in (("m_1", 0.70, 0.80), ("m_2", 0.90, 0.85), ("m_3", 0.80, 0.75)):
        rows.append({"method": method, "seed": 0, "task": "regression", "test/mae": mae,
                     "test/acc2_has0": acc, "test/acc2_non0": acc + 0.01, "test/f1_has0": acc,
                     "test/f1_non0": acc, "test/acc7": 0.3, "test/corr": 0.5})
    table = dataset_table(_frame(rows), "d")
    assert table.cols == ["Acc-2", "F1", "Acc-7", "MAE", "Corr"] and table.rows == [
        "m_1", "m_2", "m_3"]
    mae = table.cols.index("MAE")
    assert table.marks[(0, mae, 0)] == 1 and table.marks[(2, mae, 0)] == 2
    assert table.marks[(1, 0, 0)] == 1 and table.marks[(1, 0, 1)] == 1  # has0 and non0
    assert table.cells[0][mae][0].text() == "0.700±0.000"
    assert "m\\_1" in render([table], "latex")


# ----- launchers ---------------------------------------------------------------------------
def test_local_pool_runs_in_worker_processes(tmp_path: Path) -> None:
    points = expand(tiny_suite(["concat", "late"], seeds=1), ["concat", "late"])
    summary = run_grid(points, tmp_path, LocalLauncher(2), threads=1)
    assert summary.counts["finished"] == 2
    import os

    assert all(r["pid"] != os.getpid() and r["threads"] == 1 for r in summary.records)
    inline = run_grid(points, tmp_path / "inline", InlineLauncher())
    by = {r["run_id"]: r["metrics"]["test"] for r in inline.records}
    for r in summary.records:  # a worker process computes exactly what this process does
        assert r["metrics"]["test"] == pytest.approx(by[r["run_id"]])
    assert default_threads(10**6) == 1 and default_threads(1) >= default_threads(2)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (pip install 'equimodal[ray]')")
def test_ray_backend_runs_the_same_grid(tmp_path: Path) -> None:
    import ray

    from equimodal.bench.launchers import RayLauncher, init_local_ray

    suite = tiny_suite(["concat"], seeds=1)
    suite.datasets.append(DatasetEntry("not_a_dataset", "ghost", optional=True))
    points = expand(suite, ["concat"])
    # One local instance for the whole test (starting Ray costs ~10 s): a launcher that finds
    # Ray initialised uses it and leaves it running.
    init_local_ray(num_cpus=2)
    try:
        summary = run_grid(points, tmp_path, RayLauncher(threads=1), threads=1)
        assert ray.is_initialized()
        again = run_grid(points, tmp_path, RayLauncher(threads=1))
    finally:
        ray.shutdown()
    status = {r["label"]: r["status"] for r in summary.records}
    assert status == {"syn": "finished", "ghost": "skipped"}
    ref = run_grid(points[:1], tmp_path / "inline", InlineLauncher()).records[0]
    ray_rec = next(r for r in summary.records if r["label"] == "syn")
    assert ray_rec["metrics"]["test"] == pytest.approx(ref["metrics"]["test"])
    assert again.already == 1


# ----- CLI ---------------------------------------------------------------------------------
def test_cli_bench_results_and_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    out = tmp_path / "b"
    sets = [f"-sdata.{k}={v}" for k, v in TINY.items()] + ["-smodel.hidden=8",
                                                             "-smodel.layers=1"]
    args = ["bench", "--methods", "concat,late", "--datasets", "synthetic", "--seeds", "2",
            "--epochs", "1", "--batch-size", "16", "--out", str(out), "--workers", "1", *sets]
    assert main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("new") == 4
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "4 finished" in text and "| fusion |" in text
    assert main(args) == 0
    assert "4 already finished" in capsys.readouterr().out
    # A run trained under another method default is listed as stale (it will be retrained).
    settings_file = next((out / "runs").glob("concat-*")) / "method.json"
    settings = json.loads(settings_file.read_text())
    settings["config"]["regression_loss"] = "mse"
    settings_file.write_text(json.dumps(settings))
    assert main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("stale") == 1 and listing.count("finished") == 3
    db = str(out / "results.db")
    assert main(["results", "--db", db, "--method", "late", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {r["method"] for r in rows} == {"late"}
    assert all(math.isfinite(r["test/accuracy"]) for r in rows)
    assert main(["results", "--db", db, "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("run_id,") and len(csv) == 5
    assert main(["results", "--db", db, "--format", "latex"]) == 0
    assert r"\begin{tabular}" in capsys.readouterr().out
    assert main(["results", "--db", db]) == 0
    assert "concat" in capsys.readouterr().out
    assert main(["results", "--db", str(tmp_path / "none.db")]) == 2


def test_trackers_are_optional_and_log_finished_runs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    with pytest.raises(ValueError, match="unknown tracker"):
        make_trackers(["wandb"], tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # "not installed": import fails
    assert make_trackers(["mlflow"], tmp_path) == []
    # The real packages are exercised in tests/test_trackers_real.py; here a TensorBoard
    # stand-in checks the tracker's calls without the package.
    calls: list[tuple[str, Any]] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            calls.append(("logdir", log_dir))

        def add_scalar(self, key: str, value: float, step: int) -> None:
            calls.append(("scalar", (key, step)))

        def close(self) -> None:
            calls.append(("closed", None))

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    trackers = make_trackers(["tensorboard"], tmp_path)
    assert len(trackers) == 1
    summary = run_grid(expand(tiny_suite(["concat"], 1), ["concat"]), tmp_path, InlineLauncher(),
                       on_record=lambda r: [t(r) for t in trackers])
    assert summary.counts["finished"] == 1
    assert ("closed", None) in calls
    assert ("scalar", ("valid/accuracy", 1)) in calls


def test_all_tables_one_per_label(tmp_path: Path) -> None:
    suite = tiny_suite(["concat"], seeds=1)
    suite.datasets.append(DatasetEntry("synthetic", "syn-reg", {**TINY, "task": "regression"}))
    run_grid(expand(suite, ["concat"]), tmp_path, InlineLauncher())
    tables = all_tables(load_results(tmp_path / "results.db"))
    assert [t.title.split(":")[0] for t in tables] == ["syn", "syn-reg"]
    assert tables[1].cols[0] == "Acc-2" and tables[0].rows[-1] == "fusion"
