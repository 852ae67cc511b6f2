"""Run archives: a bench's records as a JSON-lines file that can be committed with a report.

A results database (SQLite) and its run folders are local outputs: a fresh clone or a new
machine does not have them, and a document generated from them can then no longer be
regenerated or audited. An archive keeps, for every run, its database row (configuration,
metrics, timings, status) and the validation part of its per-epoch history, one JSON object
per line, sorted by run id so that a re-export changes only the lines of runs that changed.

Archives are data, never code: :func:`read_archive` parses JSON only and names the file and
line of anything malformed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from equimodal.engine.checkpoint import read_history

#: Database columns kept in an archive (the traceback and package versions are not).
ARCHIVED_COLUMNS = ("run_id", "suite", "method", "dataset", "label", "seed", "status",
                    "reason", "task", "modalities", "config", "metrics", "timings",
                    "wall_seconds", "epochs", "git_commit", "updated_at")
#: Fields every archived record must have.
REQUIRED = ("run_id", "method", "label", "status")
#: Per-epoch history keys kept: the schedule position, the learning rate, every validation
#: accuracy (fused and per branch) and the loss weights a method sets itself (``alpha_*``,
#: e.g. UDI's controller, Eq. 16).
HISTORY_KEYS = ("epoch", "stage", "stage_epoch", "lr")
_KEPT = re.compile(r"^valid/([^/]+/)?accuracy$|^train/alpha_[^/]+(/[^/]+)?$")


def history_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs of a run's history that carry a validation, with the keys of
    :data:`HISTORY_KEYS` and the validation accuracies and loss weights only."""
    out = []
    for h in rows:
        if "valid/accuracy" not in h:
            continue
        out.append({k: v for k, v in h.items()
                    if k in HISTORY_KEYS or _KEPT.match(k)})
    return out


def _clean(value: Any) -> Any:
    """JSON-safe: NaN (pandas' missing value) becomes ``None``."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_history(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's validation history: ``run["history"]`` when it is a list (an archived run),
    else the :func:`history_summary` of its run folder's ``history.jsonl`` (``run["path"]``),
    else empty."""
    hist = run.get("history")
    if isinstance(hist, list):
        return list(hist)
    path = run.get("path")
    return history_summary(read_history(path if isinstance(path, str) else None))


def archive_record(run: dict[str, Any]) -> dict[str, Any]:
    """One run's archive entry: its kept columns and its validation history
    (:func:`run_history`)."""
    rec = {k: _clean(run.get(k)) for k in ARCHIVED_COLUMNS}
    rec["history"] = run_history(run)
    return rec


def write_archive(path: str | Path, runs: Iterable[dict[str, Any]]) -> int:
    """Write the archive entries of ``runs`` (sorted by run id); return how many."""
    recs = sorted((archive_record(r) for r in runs), key=lambda r: str(r["run_id"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    return len(recs)


def read_archive(path: str | Path) -> list[dict[str, Any]]:
    """The records of an archive (an absent file: none).

    Raises:
        ValueError: A line is not a JSON object with the :data:`REQUIRED` fields (the
            message names the file and line).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"{path}:{i}: run record without {', '.join(missing)}")
        out.append(rec)
    return out


def merge_runs(current: Iterable[dict[str, Any]], archived: Iterable[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``current`` (from a database) and the ``archived`` runs it does not hold (by run id):
    the database's copy of a run wins."""
    current = list(current)
    have = {r.get("run_id") for r in current}
    return current + [r for r in archived if r.get("run_id") not in have]
