"""Hostile-but-fair use of the ``equimodal`` command line (issue 15), one row per case.

Every case runs the real CLI in a subprocess inside a temporary folder and prints a table:
case, exit code, first line of stderr, pass/fail. A case passes when the command ends with
exit code 2 and a one-line message (no traceback), or meets the expectation named in the
case (e.g. a crafted file runs nothing: its sentinel file is not created; changed data give
a new run or a refusal saying the data changed; no bench worker outlives a killed parent).

Usage::

    python benchmarks/abuse.py [--jobs 4] [--keep DIR]

Exit code 0 when every case passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "equimodal.cli"]
SMALL = ["--epochs", "2", "--no-progress"]
SYN = ["-s", "data.n_train=60", "-s", "data.n_valid=30", "-s", "data.n_test=30"]


@dataclass
class Outcome:
    """One row of the table."""

    case: str
    code: int | None
    first: str
    ok: bool
    note: str = ""


def cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``equimodal ARGS`` in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line(proc: subprocess.CompletedProcess[str], must: str = "") -> bool:
    """Exit 2, exactly one stderr line, no traceback (and ``must`` in it, case-insensitive)."""
    err = proc.stderr.strip()
    return (proc.returncode == 2 and "\n" not in err and "Traceback" not in err
            and must.lower() in err.lower())


def first_line(text: str) -> str:
    """The first non-empty line of ``text``."""
    return next((ln for ln in text.splitlines() if ln.strip()), "")


def row(case: str, proc: subprocess.CompletedProcess[str], ok: bool, note: str = "") -> Outcome:
    """An :class:`Outcome` from a finished command."""
    return Outcome(case, proc.returncode, first_line(proc.stderr), ok, note)


# --- fixtures ---------------------------------------------------------------------------


def write_npz(path: Path, n: int = 90, dim_a: int = 4, classes: int = 3, seed: int = 0,
              one_class_train: bool = False, permute: bool = False) -> Path:
    """A generic-format ``.npz`` (docs/data-formats.md: ``x_<modality>``, ``y``, ``split``)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    split = np.array(["train", "train", "train", "train", "valid", "test"] * (n // 6))
    if one_class_train:
        y = np.where(split == "train", 0, y)
    x_a = rng.normal(size=(n, dim_a)).astype("float32") + y[:, None]
    x_b = rng.normal(size=(n, 3)).astype("float32") + 0.5 * y[:, None]
    if permute:  # relabelled in place: same shapes and files, other labels
        y = (y + 1) % classes
    np.savez(path, x_a=x_a, x_b=x_b, y=y, split=split)
    return path


class _Touch:
    """Unpickling this creates ``path`` (a harmless stand-in for running any code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.path}",))


def train_run(work: Path, data: Path, out: str = "runs") -> tuple[subprocess.CompletedProcess[str],
                                                                    Path | None]:
    """Train concat on a generic npz; returns the command and its run folder."""
    proc = cli(["train", "-m", "concat", "-d", "generic", "-s", f"data.path={data}", *SMALL,
                "--out", out], work)
    match = re.search(r"^run: (.+)$", proc.stdout, re.M)
    return proc, (work / match.group(1)) if match else None


def _test_metric(stdout: str) -> str:
    part = stdout.split("test:", 1)[-1]
    match = re.search(r"^fusion\s+(\S+)", part, re.M)
    return match.group(1) if match else ""


# --- cases ------------------------------------------------------------------------------


def crafted_pickle(work: Path) -> Outcome:
    sentinel = work / "pwned_pickle"
    path = work / "evil.pkl"
    path.write_bytes(pickle.dumps(_Touch(sentinel)))
    proc = cli(["train", "-m", "concat", "-d", "mmsa", "-s", f"data.path={path}", *SMALL], work)
    ran = sentinel.exists()
    return row("crafted pickle (mmsa)", proc, one_line(proc) and not ran,
               "CODE RAN" if ran else "nothing ran")


def crafted_model(work: Path) -> Outcome:
    import torch

    proc, run = train_run(work, write_npz(work / "m.npz"), "runs_model")
    if run is None:
        return row("crafted model.pt (eval)", proc, False, "setup failed")
    sentinel = work / "pwned_model"
    torch.save({"state": _Touch(sentinel)}, run / "model.pt")
    proc = cli(["eval", str(run)], work)
    ran = sentinel.exists()
    return row("crafted model.pt (eval)", proc, one_line(proc) and not ran,
               "CODE RAN" if ran else "nothing ran")


def corrupt_npz(work: Path) -> Outcome:
    path = work / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04" + os.urandom(200))
    proc = cli(["train", "-m", "concat", "-d", "generic", "-s", f"data.path={path}", *SMALL],
               work)
    return row("corrupt .npz", proc, one_line(proc, "corrupt.npz"))


def unreadable(work: Path) -> Outcome:
    path = write_npz(work / "secret.npz")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: cannot be reproduced here
        return Outcome("unreadable file", None, "", True, "n/a: running as root")
    proc = cli(["train", "-m", "concat", "-d", "generic", "-s", f"data.path={path}", *SMALL],
               work)
    return row("unreadable file", proc, one_line(proc, "secret.npz"))


def truncated_npy(work: Path) -> Outcome:
    folder = work / "feats"
    folder.mkdir()
    rng = np.random.default_rng(0)
    n = 60
    np.save(folder / "a.npy", rng.normal(size=(n, 4)).astype("float32"))
    np.save(folder / "b.npy", rng.normal(size=(n, 3)).astype("float32"))
    np.save(folder / "labels.npy", np.arange(n) % 2)
    np.save(folder / "split.npy", np.array(["train", "train", "valid", "test"] * (n // 4)))
    raw = (folder / "a.npy").read_bytes()
    (folder / "a.npy").write_bytes(raw[: len(raw) // 2])
    proc = cli(["train", "-m", "concat", "-d", "generic", "-s", f"data.path={folder}", *SMALL],
               work)
    misleading = ("unsafe", "allow_pickle", "object arrays")  # hints for another problem
    return row("truncated .npy", proc, one_line(proc, "a.npy")
               and not any(m in proc.stderr.lower() for m in misleading))


def truncated_last(work: Path) -> Outcome:
    data = write_npz(work / "l.npz")
    proc, run = train_run(work, data, "runs_last")
    if run is None or not (run / "model.pt").exists():
        return row("truncated last.pt (resume)", proc, False, "setup failed")
    (run / "metrics.json").unlink()
    raw = (run / "model.pt").read_bytes()  # a checkpoint-sized file cut in half
    (run / "last.pt").write_bytes(raw[: len(raw) // 2])
    proc, _ = train_run(work, data, "runs_last")
    return row("truncated last.pt (resume)", proc, one_line(proc, "--no-resume"))


def truncated_model(work: Path) -> Outcome:
    proc, run = train_run(work, write_npz(work / "t.npz"), "runs_trunc")
    if run is None:
        return row("truncated model.pt (eval)", proc, False, "setup failed")
    raw = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(raw[: len(raw) // 2])
    proc = cli(["eval", str(run)], work)
    return row("truncated model.pt (eval)", proc, one_line(proc, "model.pt"))


def corrupt_config(work: Path) -> Outcome:
    proc, run = train_run(work, write_npz(work / "c.npz"), "runs_cfg")
    if run is None:
        return row("corrupt config.json (eval)", proc, False, "setup failed")
    (run / "config.json").write_text('{"method": "concat", ')
    proc = cli(["eval", str(run)], work)
    return row("corrupt config.json (eval)", proc, one_line(proc, "config.json"))


def _changed(case: str, work: Path, rewrite: Callable[[Path], None]) -> Outcome:
    data = write_npz(work / f"{case[:4]}.npz")
    out = f"runs_{case[:4]}"
    first, run1 = train_run(work, data, out)
    if run1 is None:
        return row(case, first, False, "setup failed")
    rewrite(data)
    proc, run2 = train_run(work, data, out)
    if proc.returncode == 2:
        return row(case, proc, one_line(proc, "changed"), "refused")
    fresh = proc.returncode == 0 and run2 is not None and run2 != run1
    note = "new run" if fresh else "same run reused (stale)" if proc.returncode == 0 else ""
    return row(case, proc, fresh, note)


def relabelled(work: Path) -> Outcome:
    return _changed("data relabelled in place", work, lambda p: write_npz(p, permute=True))


def dim_changed(work: Path) -> Outcome:
    return _changed("feature dim changed", work, lambda p: write_npz(p, dim_a=5))


def simple(case: str, args: list[str], must: str = "") -> Callable[[Path], Outcome]:
    """A case that expects exit 2 and one line containing ``must``."""

    def run(work: Path) -> Outcome:
        proc = cli(args, work)
        return row(case, proc, one_line(proc, must))

    return run


def one_class(work: Path) -> Outcome:
    data = write_npz(work / "one.npz", one_class_train=True)
    proc = cli(["train", "-m", "concat", "-d", "generic", "-s", f"data.path={data}", *SMALL],
               work)
    return row("single-class training split", proc, one_line(proc, "2 classes"))


def empty_modalities(work: Path) -> Outcome:
    proc, run = train_run(work, write_npz(work / "e.npz"), "runs_mods")
    if run is None:
        return row("eval --modalities ,", proc, False, "setup failed")
    proc = cli(["eval", str(run), "--modalities", ","], work)
    return row("eval --modalities ,", proc, one_line(proc, "--modalities"))


def sigpipe(work: Path) -> Outcome:
    read, write = os.pipe()
    proc = subprocess.Popen([*CLI, "list"], cwd=work, stdout=write, stderr=subprocess.PIPE,
                            text=True)
    os.close(write)
    os.close(read)  # the reader is gone before anything is written, like `| head`
    _, err = proc.communicate(timeout=120)
    ok = "Traceback" not in err and "BrokenPipeError" not in err
    return Outcome("list | head (SIGPIPE)", proc.returncode, first_line(err), ok)


BENCH = ["bench", "--methods", "concat", "--datasets", "synthetic", "--seeds", "1",
         "--workers", "1", "--quiet", "--no-progress", "-s", "train.epochs=2", *SYN]


def bench_corrupt_last(work: Path) -> Outcome:
    out = ["--out", "bench_last"]
    proc = cli([*BENCH, *out], work)
    runs = list((work / "bench_last" / "runs").glob("*/model.pt"))
    if proc.returncode != 0 or not runs:
        return row("bench: corrupt last.pt", proc, False, "setup failed")
    run = runs[0].parent
    (run / "metrics.json").unlink()
    (run / "last.pt").write_bytes(runs[0].read_bytes()[:100])
    proc = cli([*BENCH, *out], work)
    line = next((ln for ln in proc.stdout.splitlines() if "failed" in ln and "seed" in ln), "")
    ok = proc.returncode == 0 and "--no-resume" in line and "Traceback" not in proc.stdout
    return Outcome("bench: corrupt last.pt", proc.returncode, line.strip()[:120], ok)


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
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in "ZX"
    except OSError:
        return False


def orphans(work: Path) -> Outcome:
    case = "bench: kill -9 parent, orphaned workers"
    if not Path("/proc").is_dir():
        return Outcome(case, None, "", True, "n/a: needs /proc")
    proc = subprocess.Popen([*CLI, "bench", "--methods", "concat,sum", "--datasets", "synthetic",
                             "--seeds", "0,1", "--workers", "2", "--threads", "1", "--quiet",
                             "--no-progress", "-s", "train.epochs=5000", "-s", "data.n_train=300",
                             "--out", "bench_orphans"], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(work.glob("bench_orphans/runs/*/.claim")):
        time.sleep(0.2)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and any(_alive(w) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    return Outcome(case, -9, "", bool(workers) and not left,
                   f"{len(workers)} children, {len(left)} alive 10 s after the kill")


def two_benches(work: Path) -> Outcome:
    args = ["bench", "--methods", "concat,sum", "--datasets", "synthetic", "--seeds", "0,1",
            "--workers", "1", "--quiet", "--no-progress", "-s", "train.epochs=4", *SYN,
            "--out", "bench_shared"]
    first = subprocess.Popen([*CLI, *args], cwd=work, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(work.glob("bench_shared/runs/*/.claim")):
        time.sleep(0.1)
    second = subprocess.Popen([*CLI, *args], cwd=work, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    lines = [ln for out, _ in outs for ln in out.splitlines() if "] finished" in ln]
    trained = [ln for ln in lines if "reused" not in ln]
    codes = (first.returncode, second.returncode)
    ok = codes == (0, 0) and len(trained) == 4
    return Outcome("two benches on one folder", max(codes), first_line(outs[1][1]), ok,
                   f"{len(trained)} trainings for 4 runs")


CASES: list[Callable[[Path], Outcome]] = [
    crafted_pickle, crafted_model, corrupt_npz, unreadable, truncated_npy, truncated_last,
    truncated_model, corrupt_config, relabelled, dim_changed,
    simple("-s train.batch_size=0", ["train", *SMALL, *SYN, "-s", "train.batch_size=0"],
           "train.batch_size"),
    simple("-s train.batch_size=-5", ["train", *SMALL, *SYN, "-s", "train.batch_size=-5"],
           "train.batch_size"),
    simple("-s data.bogus=1", ["train", *SMALL, *SYN, "-s", "data.bogus=1"], "bogus"),
    simple("-s train.epochs=-1", ["train", *SMALL, *SYN, "-s", "train.epochs=-1"],
           "train.epochs"),
    simple("-s train.epochs=0", ["train", *SMALL, *SYN, "-s", "train.epochs=0"], "train.epochs"),
    simple("--epochs -3", ["train", "--no-progress", *SYN, "--epochs", "-3"], "train.epochs"),
    simple("-s model.hidden=0", ["train", *SMALL, *SYN, "-s", "model.hidden=0"],
           "model.hidden"),
    one_class, empty_modalities,
    simple("bench --workers -3", [*BENCH[:8], "-3", *BENCH[9:], "--out", "b_w"], "--workers"),
    simple("-s data.strengths=abc", ["train", *SMALL, *SYN, "-s", "data.strengths=abc"],
           "data.strengths"),
    simple("bench --seeds a", [*BENCH[:6], "a", *BENCH[7:], "--out", "b_s"], "--seeds"),
    simple("train -m OGM_GE", ["train", "-m", "OGM_GE", *SMALL, *SYN], "did you mean ogm_ge"),
    simple("bench --methods OGM_GE", [*BENCH[:2], "OGM_GE", *BENCH[3:], "--out", "b_m"],
           "did you mean ogm_ge"),
    sigpipe, bench_corrupt_last, orphans, two_benches,
]


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the table; exit 0 when all pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="cases run in parallel")
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="equimodal-abuse-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def run(case: Callable[[Path], Outcome]) -> Outcome:
        work = root / f"case{CASES.index(case):02d}"
        work.mkdir(exist_ok=True)
        try:
            return case(work)
        except Exception as err:  # noqa: BLE001 - a broken case is a failed row
            return Outcome(getattr(case, "__name__", "case"), None, "", False,
                           f"harness: {type(err).__name__}: {err}")

    # The process-heavy cases run alone at the end, so they do not starve each other.
    heavy = CASES[-2:]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(run, CASES[:-2]))
    results += [run(case) for case in heavy]
    width = max(len(r.case) for r in results)
    print(f"| {'case':<{width}} | exit | {'first line of stderr':<70} | result |")
    print(f"|{'-' * (width + 2)}|------|{'-' * 72}|--------|")
    for r in results:
        first = (r.first + (f" [{r.note}]" if r.note else ""))[:70].replace("|", "/")
        code = "" if r.code is None else str(r.code)
        print(f"| {r.case:<{width}} | {code:>4} | {first:<70} | {'pass' if r.ok else 'FAIL':<6} |")
    passed = sum(r.ok for r in results)
    print(f"\n{passed}/{len(results)} cases pass in {time.perf_counter() - t0:.0f}s"
          f" (work folder {root})")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"passed": passed, "total": len(results)}))
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
