"""Bench processes: workers die with a killed parent, run claims let two benches on one
folder train each run once (issue 15, points 2 and 4)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from equimodal.bench.claims import CLAIM, held, release, try_claim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find the workers")

GRID = ["bench", "--datasets", "synthetic", "--quiet", "--no-progress", "--threads", "1",
        "-s", "data.n_valid=40", "-s", "data.n_test=40"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _bench(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "equimodal.cli", *GRID, *args],
                            env=_env(), text=True, **kw)  # type: ignore[call-overload]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_workers_die_within_seconds_of_a_killed_parent(tmp_path: Path) -> None:
    proc = _bench(["--methods", "concat,sum", "--seeds", "0,1", "--workers", "2",
                   "-s", "train.epochs=5000", "-s", "data.n_train=300",
                   "--out", str(tmp_path)], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob(f"runs/*/{CLAIM}")):
            time.sleep(0.2)  # a worker has started a job: the pool is up
        workers = _children(proc.pid)
        assert len(workers) >= 2, "the pool did not start"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    while time.monotonic() - killed < 10 and any(_alive(w) for w in workers):
        time.sleep(0.2)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # do not leave them behind when the test fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} worker(s) outlived the parent by 10 s"


def test_two_benches_on_one_folder_train_each_run_once(tmp_path: Path) -> None:
    args = ["--methods", "concat,sum", "--seeds", "0,1", "--workers", "1",
            "-s", "train.epochs=4", "-s", "data.n_train=200", "--out", str(tmp_path)]
    first = _bench(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(f"runs/*/{CLAIM}")):
        time.sleep(0.1)
    second = _bench(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1] for o in outs]
    lines = [ln for out, _ in outs for ln in out.splitlines() if "] finished" in ln]
    trained = [ln for ln in lines if "reused" not in ln]
    assert len(trained) == 4, "\n".join(lines)  # 2 methods x 2 seeds, each trained once
    assert len(list(tmp_path.glob("runs/*/metrics.json"))) == 4
    assert not list(tmp_path.glob(f"runs/*/{CLAIM}*"))  # every claim released
    from equimodal.bench.store import ResultStore

    rows = ResultStore(tmp_path / "results.db").rows()
    assert sorted(r["status"] for r in rows) == ["finished"] * 4


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = try_claim(run)
    assert first is not None and held(run)
    assert try_claim(run) is None  # a second claim is refused while the first is held
    release(first)
    assert not (run / CLAIM).exists()
    # A claim left by a process that has exited (same host): stale, taken over.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (run / CLAIM).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                         "start": "", "time": 0}))
    assert not held(run)
    taken = try_claim(run)
    assert taken is not None and json.loads(taken.read_text())["pid"] == os.getpid()
    release(taken)
    # A live holder (this test's parent process) keeps its claim.
    (run / CLAIM).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                         "start": "", "time": 0}))
    assert held(run) and try_claim(run) is None
