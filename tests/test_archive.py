"""Run archives: a bench's records exported to JSON lines, read back, merged with a database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from equimodal.bench.archive import (
    archive_record,
    history_summary,
    merge_runs,
    read_archive,
    write_archive,
)
from equimodal.bench.store import ResultStore, load_results


def _history(folder: Path) -> None:
    folder.mkdir(parents=True)
    lines = [{"epoch": 0, "stage": "unimodal", "train/loss": 2.3, "valid/accuracy": 0.5,
              "valid/gray/accuracy": 0.9, "valid/gray/macro_f1": 0.8, "epoch_time": 20.0},
             {"epoch": 1, "train/loss": 1.0}]  # no validation: not archived
    (folder / "history.jsonl").write_text("\n".join(json.dumps(h) for h in lines) + "\n")


def test_history_summary_keeps_schedule_and_validation_accuracies() -> None:
    rows = [{"epoch": 3, "stage_epoch": 1, "valid/accuracy": 0.7, "valid/color/accuracy": 0.2,
             "valid/macro_f1": 0.6, "train/ce/gray": 1.0, "train/alpha_con": 0.25,
             "train/alpha_com/color": 0.75, "train/alpha": 1.0, "lr": 0.02}, {"epoch": 4}]
    assert history_summary(rows) == [{"epoch": 3, "stage_epoch": 1, "valid/accuracy": 0.7,
                                       "valid/color/accuracy": 0.2, "train/alpha_con": 0.25,
                                       "train/alpha_com/color": 0.75, "lr": 0.02}]


def test_database_runs_round_trip_through_an_archive(tmp_path: Path) -> None:
    db = tmp_path / "bench" / "results.db"
    db.parent.mkdir()
    _history(db.parent / "runs" / "a")
    store = ResultStore(db)
    store.upsert({"run_id": "b", "method": "sum", "dataset": "cgmnist", "label": "x",
                  "seed": 1, "status": "failed", "reason": "non-finite loss",
                  "traceback": "Traceback ...", "run_dir": None})
    store.upsert({"run_id": "a", "method": "udi", "dataset": "cgmnist", "label": "x",
                  "seed": 0, "status": "finished", "config": {"train": {"epochs": 6}},
                  "metrics": {"test": {"accuracy": 0.8}}, "wall_seconds": 12.5,
                  "run_dir": str(db.parent / "runs" / "a")})
    runs = load_results(db).to_dict("records")
    archive = tmp_path / "runs.jsonl"
    assert write_archive(archive, runs) == 2
    lines = archive.read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == ["a", "b"]  # sorted: stable diffs
    back = {r["run_id"]: r for r in read_archive(archive)}
    a, b = back["a"], back["b"]
    assert a["metrics"] == {"test": {"accuracy": 0.8}} and a["wall_seconds"] == 12.5
    assert a["config"] == {"train": {"epochs": 6}}
    assert a["history"] == [{"epoch": 0, "stage": "unimodal", "valid/accuracy": 0.5,
                             "valid/gray/accuracy": 0.9}]
    assert b["status"] == "failed" and b["reason"] == "non-finite loss" and b["history"] == []
    assert "traceback" not in b and b["wall_seconds"] is None  # NaN in the frame: null
    # Re-exporting archived records keeps their inline history (no run folder needed).
    write_archive(tmp_path / "again.jsonl", read_archive(archive))
    assert (tmp_path / "again.jsonl").read_text() == archive.read_text()


def test_merge_prefers_the_database_copy() -> None:
    current = [{"run_id": "a", "status": "finished"}]
    archived = [{"run_id": "a", "status": "failed"}, {"run_id": "c", "status": "finished"}]
    merged = merge_runs(current, archived)
    assert [(r["run_id"], r["status"]) for r in merged] == [("a", "finished"),
                                                             ("c", "finished")]
    assert archive_record({"run_id": "z", "history": [{"valid/accuracy": 1.0}]})["history"] == [
        {"valid/accuracy": 1.0}]


@pytest.mark.parametrize(("text", "message"), [
    ("{not json\n", ":2: not JSON"),
    ("[1, 2]\n", ":2: expected a JSON object, got list"),
    ('{"run_id": "x", "method": "sum"}\n', ":2: run record without label, status"),
])
def test_malformed_archives_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "runs.jsonl"
    good = {"run_id": "a", "method": "sum", "label": "x", "status": "finished"}
    path.write_text(json.dumps(good) + "\n" + text)
    with pytest.raises(ValueError, match=f"runs.jsonl{message}"):
        read_archive(path)
    assert read_archive(tmp_path / "absent.jsonl") == []
