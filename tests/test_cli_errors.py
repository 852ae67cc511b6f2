"""Bad input on the command line: exit code 2, one line on stderr naming the field or file,
never a traceback (issue 15, points 5-8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equimodal.cli import main

DATA = ["-s", "data.n_train=60", "-s", "data.n_valid=30", "-s", "data.n_test=30"]
TRAIN = ["train", "--method", "concat", "--data", "synthetic", "--no-progress", *DATA]
BENCH = ["bench", "--methods", "concat", "--datasets", "synthetic", "--seeds", "1",
         "--workers", "1", "--quiet", "-s", "train.epochs=1", *DATA]


def _one_class_npz(folder: Path) -> Path:
    """A generic ``.npz`` (docs/data-formats.md) whose training split has one label."""
    rng = np.random.default_rng(0)
    n = 40
    split = np.array(["train"] * 20 + ["valid"] * 10 + ["test"] * 10)
    y = np.where(split == "train", 0, np.arange(n) % 2)
    path = folder / "one_class.npz"
    np.savez(path, x_a=rng.normal(size=(n, 4)).astype("float32"),
             x_b=rng.normal(size=(n, 3)).astype("float32"), y=y, split=split)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run to evaluate."""
    out = tmp_path_factory.mktemp("runs")
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return next(out.iterdir())


CASES = [
    (["-s", "train.epochs=-1"], "train.epochs"),
    (["-s", "train.epochs=0"], "train.epochs"),
    (["--epochs", "-3"], "train.epochs"),
    (["-s", "train.batch_size=0"], "train.batch_size"),
    (["-s", "train.batch_size=-5"], "train.batch_size"),
    (["--batch-size", "0"], "train.batch_size"),
    (["-s", "train.lr=-0.1"], "train.lr"),
    (["--lr", "-1"], "train.lr"),
    (["-s", "model.hidden=0"], "model.hidden"),
    (["-s", "model.layers=0"], "model.layers"),
    (["-s", "model.dropout=1.5"], "model.dropout"),
    (["-s", "train.accum_steps=0"], "train.accum_steps"),
    (["-s", "data.bogus=1"], "['bogus']; valid: ["),
    (["-s", "data.strengths=abc"], "data.strengths"),
    (["-s", "train.epochs=abc"], "'epochs'"),
]


@pytest.mark.parametrize(("extra", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_train_refuses_bad_settings(extra: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*TRAIN, "--epochs", "1", *extra, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*/metrics.json"))  # nothing trained, nothing saved


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--method", "OGM_GE", "--data", "synthetic"], "did you mean ogm_ge?"),
    (["train", "--method", "concat", "--data", "Synthetic"], "did you mean synthetic?"),
    (["train", "--method", "ogm-ge", "--data", "synthetic"], "did you mean ogm_ge?"),
    ([*BENCH[:2], "OGM_GE", *BENCH[3:]], "did you mean ogm_ge?"),
    ([*BENCH[:2], "concat,gatd", *BENCH[3:]], "did you mean gated?"),
    ([*BENCH[:6], "a", *BENCH[7:]], "--seeds"),
    ([*BENCH[:6], "0,x", *BENCH[7:]], "--seeds"),
    ([*BENCH[:8], "-3", *BENCH[9:]], "--workers must be >= 1"),
    ([*BENCH[:8], "0", *BENCH[9:]], "--workers must be >= 1"),
    ([*BENCH, "-s", "train.batch_size=0"], "train.batch_size"),
    ([*BENCH, "-s", "data.bogus=1"], "['bogus']"),
])
def test_names_and_bench_flags_give_one_line(argv: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_single_class_training_split_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _one_class_npz(tmp_path)
    code = main(["train", "--method", "concat", "--data", "generic", "-s", f"data.path={path}",
                 "--epochs", "1", "--no-progress", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "at least 2 classes" in err and "[train]" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("keep", [",", "", " , "])
def test_eval_refuses_an_empty_modality_list(run_dir: Path, keep: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(run_dir), "--modalities", keep])
    err = capsys.readouterr().err
    assert code == 2
    assert "--modalities" in err and "names no modality" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_list_into_a_closed_pipe_ends_without_traceback() -> None:
    # The reader is gone before `list` writes (like `| head` after its lines): EPIPE.
    read, write = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "equimodal.cli", "list"], stdout=write,
                            stderr=subprocess.PIPE, env=env)
    os.close(write)
    os.close(read)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode in (0, 141, -13)


def test_bench_records_a_corrupt_checkpoint_on_one_line_and_no_resume_recovers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from equimodal.bench.store import ResultStore

    bench = [*BENCH, "--out", str(tmp_path)]
    assert main([*bench, "--dry-run"]) == 0
    run_id = capsys.readouterr().out.split()[0]
    assert not (tmp_path / "runs").exists()  # a dry run writes no run folder
    assert main(bench) == 0
    row = ResultStore(tmp_path / "results.db").rows()[0]
    assert row["run_id"] == run_id and row["status"] == "finished"
    run = ResultStore(tmp_path / "results.db").resolve_run_dir(row["run_dir"])
    assert run is not None
    (run / "metrics.json").unlink()  # unfinished again, with a truncated checkpoint
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    capsys.readouterr()
    assert main(bench) == 0
    out = capsys.readouterr().out
    row = ResultStore(tmp_path / "results.db").rows()[0]
    assert row["status"] == "failed"
    assert "\n" not in row["reason"] and "Traceback" not in row["reason"]
    assert "failed" in out and "Traceback" not in out
    assert main([*bench, "--no-resume"]) == 0
    row = ResultStore(tmp_path / "results.db").rows()[0]
    assert row["status"] == "finished" and (run / "metrics.json").exists()


def test_bench_progress_line_keeps_the_hint_at_the_end_of_a_long_reason() -> None:
    from equimodal.bench.cli import _shorten

    reason = "CheckpointError: run/last.pt: not a readable checkpoint " + "x" * 400 + \
        "; pass --no-resume to start the run over"
    short = _shorten(reason)
    assert len(short) <= 240 and short.startswith("CheckpointError: run/last.pt")
    assert short.endswith("pass --no-resume to start the run over")
    assert _shorten("short reason") == "short reason"
