"""Results store: an embedded SQLite database with one row per run.

Each row holds the run's identity (``run_id`` = config digest, method, dataset, label,
seed), its status (``finished``, ``skipped``, ``failed``) with the reason and a traceback
summary, the resolved config, metrics, optional robustness results (JSON text), timings,
library versions, the git commit and the host. Run folders are stored relative to the
database's folder, so a bench folder can be moved or copied as a whole.

Only the orchestrating process writes (workers return records), so there is no concurrent
writer; readers (``equimodal results``, ``equimodal report``) may run at any time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    suite TEXT,
    method TEXT NOT NULL,
    dataset TEXT NOT NULL,
    label TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    reason TEXT,
    traceback TEXT,
    task TEXT,
    modalities TEXT,
    run_dir TEXT,
    config TEXT,
    metrics TEXT,
    robustness TEXT,
    timings TEXT,
    wall_seconds REAL,
    epochs INTEGER,
    versions TEXT,
    git_commit TEXT,
    host TEXT,
    updated_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_method ON runs (method);
CREATE INDEX IF NOT EXISTS runs_label ON runs (label);
"""
_JSON_COLUMNS = ("modalities", "config", "metrics", "robustness", "timings", "versions")
_COLUMNS = ("run_id", "suite", "method", "dataset", "label", "seed", "status", "reason",
            "traceback", "task", "modalities", "run_dir", "config", "metrics", "robustness",
            "timings", "wall_seconds", "epochs", "versions", "git_commit", "host",
            "updated_at")


class ResultStore:
    """Read and write the ``runs`` table of a SQLite file.

    Args:
        path: Database file (created with its folder if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A generous timeout: a report may read while the bench writes.
        con = sqlite3.connect(self.path, timeout=60)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def _relative(self, run_dir: str | None) -> str | None:
        if not run_dir:
            return run_dir
        try:
            return os.path.relpath(Path(run_dir).resolve(), self.path.parent.resolve())
        except ValueError:  # another drive on Windows
            return str(run_dir)

    def resolve_run_dir(self, stored: str | None) -> Path | None:
        """The run folder of a stored (database-relative) path."""
        if not stored:
            return None
        path = Path(stored)
        return path if path.is_absolute() else self.path.parent / path

    def upsert(self, record: dict[str, Any]) -> None:
        """Insert or replace the row of ``record["run_id"]`` (unknown keys are ignored)."""
        row = {k: record.get(k) for k in _COLUMNS}
        row["run_dir"] = self._relative(record.get("run_dir"))
        row["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        for k in _JSON_COLUMNS:
            if row[k] is not None:
                row[k] = json.dumps(row[k], sort_keys=True, default=str)
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(f":{c}" for c in _COLUMNS)
        with self._connect() as con:
            con.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", row)

    def rows(
        self,
        method: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        status: str | list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), filtered by method, dataset name or label,
        and status; each filter takes one value or a list."""
        where, args = [], []
        for col, value in (("method", method), ("status", status)):
            if value:
                vals = [value] if isinstance(value, str) else list(value)
                where.append(f"{col} IN ({', '.join('?' * len(vals))})")
                args += vals
        if dataset:
            vals = [dataset] if isinstance(dataset, str) else list(dataset)
            marks = ", ".join("?" * len(vals))
            where.append(f"(dataset IN ({marks}) OR label IN ({marks}))")
            args += vals + vals
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY label, method, seed"
        with self._connect() as con:
            out = [dict(r) for r in con.execute(sql, args)]
        for r in out:
            for k in _JSON_COLUMNS:
                r[k] = json.loads(r[k]) if r[k] else None
        return out

    def status_map(self) -> dict[str, tuple[str, bool]]:
        """``run_id -> (status, has robustness results)`` for deciding what to rerun."""
        with self._connect() as con:
            rows = con.execute("SELECT run_id, status, robustness IS NOT NULL FROM runs")
            return {r[0]: (r[1], bool(r[2])) for r in rows}

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def _flatten(prefix: str, d: dict[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in (d or {}).items()}


def load_results(
    db: str | Path,
    method: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    status: str | list[str] | None = None,
) -> pd.DataFrame:
    """All runs of a results database as a DataFrame, one row per run.

    Columns: the store's scalar columns, the decoded JSON columns (``config``, ``metrics``,
    ``robustness``, ...) as Python objects, the absolute ``path`` of the run folder, and one
    column per metric, ``test/<metric>`` and ``valid/<metric>`` (per-modality metrics are
    ``test/<modality>/<metric>``).

    Args:
        db: Database file.
        method: Keep these methods.
        dataset: Keep these datasets (registered name or label).
        status: Keep these statuses.

    Raises:
        FileNotFoundError: ``db`` does not exist.
    """
    path = Path(db)
    if not path.exists():
        raise FileNotFoundError(f"no results database at {path}; run `equimodal bench` first "
                                "or pass --db")
    store = ResultStore(path)
    records = []
    for r in store.rows(method, dataset, status):
        metrics = r.get("metrics") or {}
        run_dir = store.resolve_run_dir(r.get("run_dir"))
        records.append({**r, "path": str(run_dir) if run_dir else None,
                        **_flatten("test", metrics.get("test")),
                        **_flatten("valid", metrics.get("valid"))})
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=[*_COLUMNS, "path"])
    return frame
