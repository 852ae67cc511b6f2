"""Nothing loaded runs code; unreadable files and run files are one-line errors (exit 2)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from equimodal import cli
from equimodal.config import RunConfig, TrainConfig
from equimodal.data.dataset import DataError
from equimodal.data.formats import load_generic, load_iemocap, load_mmsa
from equimodal.data.formats.common import read_pickle, safe_load_pickle
from equimodal.engine import CheckpointError, Trainer, fit
from equimodal.engine.checkpoint import load_checkpoint, read_history
from fixtures_formats import iemocap_split, write_generic_folder, write_mmsa, write_pickle


class _Evil:
    """Unpickling this runs ``touch <sentinel>`` (what a crafted data file would do)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.sentinel}",))


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "-m", "concat", "-d", "synthetic", "-s", "data.n_train=48",
            "-s", "data.n_valid=24", "-s", "data.n_test=24", "--epochs", "2",
            "--no-progress", "--out", str(out), *extra]


def _one_line_error(capsys: Any, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("equimodal: error:") and "\n" not in err, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path, capsys: Any) -> None:
    sentinel = tmp_path / "pwned"
    evil = write_pickle(tmp_path / "evil.pkl", {"train": _Evil(sentinel)})
    with pytest.raises(DataError, match=r"evil\.pkl: refused to unpickle global 'posix\.system'"):
        read_pickle(evil)
    err = _one_line_error(capsys, ["prepare", "check", "--format", "mmsa", "--path", str(evil)],
                          str(evil), "posix.system")
    assert "refused" in err
    err = _one_line_error(capsys, ["prepare", "convert", str(evil), str(tmp_path / "o.npz"),
                                   "--format", "iemocap"], "posix.system")
    assert not sentinel.exists()
    assert not (tmp_path / "o.npz").exists()


def test_legit_pickles_still_load(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "mosi" / "aligned_50.pkl")
    data = load_mmsa(path)
    assert data.info.modality_names == ["text", "audio", "vision"] and len(data.train) == 10
    # Protocol 2 (as Python 2 era files): numpy arrays need _codecs.encode and a latin1 retry.
    raw = pickle.loads(path.read_bytes())
    old = tmp_path / "mosi2" / "aligned_50.pkl"
    old.parent.mkdir()
    old.write_bytes(pickle.dumps(raw, protocol=2))
    again = load_mmsa(old)
    assert torch.equal(again.train.inputs["audio"], data.train.inputs["audio"])
    buf = io.BytesIO(gzip.compress(pickle.dumps((np.arange(3), [1.5, "a"]))))
    with gzip.open(buf, "rb") as f:
        arr, rest = safe_load_pickle(f, "mem", encoding="latin1")
    assert arr.tolist() == [0, 1, 2] and rest == [1.5, "a"]


def test_truncated_pickle_is_one_line(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "mosi.pkl")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="mosi.pkl: not a readable pickle, truncated or corrupt"):
        read_pickle(path)


@pytest.mark.parametrize("name", ["last.pt", "model.pt"])
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, capsys: Any,
                                                       name: str) -> None:
    assert cli.main(_train_args(tmp_path / "runs")) == 0
    (run,) = (tmp_path / "runs").iterdir()
    sentinel = tmp_path / "pwned"
    torch.save({"method": _Evil(sentinel)}, run / name)
    with pytest.raises(CheckpointError, match="refused to load global 'posix.system'"):
        load_checkpoint(run / name)
    if name == "last.pt":
        (run / "metrics.json").unlink()
        _one_line_error(capsys, _train_args(tmp_path / "runs"), "last.pt", "--no-resume")
    else:
        _one_line_error(capsys, ["eval", str(run)], "model.pt", "posix.system")
    assert not sentinel.exists()


def test_last_pt_holds_only_safe_types_and_resumes_exactly(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    cfg = RunConfig("concat", "synthetic", data={"n_train": 48, "n_valid": 24, "n_test": 24},
                    train=TrainConfig(epochs=3, progress=False))
    ref = fit(cfg, tmp_path / "ref")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_finish", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # no allow-listing
    assert isinstance(ckpt["rng"]["numpy"][1], list) and isinstance(ckpt["rng"]["python"][1],
                                                                    list)
    monkeypatch.undo()
    # Same resume path, interrupted after the last epoch: results equal an uninterrupted run.
    assert fit(cfg, tmp_path / "run").test == ref.test


def _generic(tmp_path: Path) -> Path:
    return write_generic_folder(tmp_path / "d", n=24)


def _corrupt_npz(tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    return ["prepare", "check", "--path", str(path)], ("d.npz", "not a valid .npz")


def _truncated_npz(tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    path = tmp_path / "d.npz"
    np.savez(path, x_a=np.zeros((24, 5), np.float32), y=np.arange(24) % 2,
             split=np.resize(np.array(["train", "valid", "test"]), 24))
    path.write_bytes(path.read_bytes()[:300])
    return ["prepare", "check", "--path", str(path)], ("d.npz",)


def _dir_as_file(tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    root = _generic(tmp_path)
    (root / "labels.npy").unlink()
    (root / "labels.npy").mkdir()
    return ["prepare", "check", "--path", str(root)], ("labels.npy", "cannot read")


def _truncated_npy(tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    root = _generic(tmp_path)
    data = (root / "a.npy").read_bytes()
    (root / "a.npy").write_bytes(data[: len(data) - 40])
    return ["prepare", "check", "--path", str(root)], ("a.npy", "truncated")


def _headerless_npy(tmp_path: Path) -> tuple[list[str], tuple[str, ...]]:
    root = _generic(tmp_path)
    (root / "labels.npy").write_bytes(b"\x93NU")
    return ["prepare", "check", "--path", str(root)], ("labels.npy", "not a .npy file")


@pytest.mark.parametrize("make", [_corrupt_npz, _truncated_npz, _dir_as_file, _truncated_npy,
                                  _headerless_npy])
def test_broken_data_files_are_one_line_errors(tmp_path: Path, capsys: Any, make: Any) -> None:
    argv, needles = make(tmp_path)
    err = _one_line_error(capsys, argv, *needles)
    assert "allow_pickle" not in err and "unsafely" not in err


def test_permission_error_names_the_file(tmp_path: Path, capsys: Any,
                                         monkeypatch: Any) -> None:
    # Tests run as root, where chmod does not block reading: simulate the OS refusal.
    root = _generic(tmp_path)
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "b.npy":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    _one_line_error(capsys, ["prepare", "check", "--path", str(root)], "b.npy",
                    "Permission denied")
    npz = tmp_path / "x.npz"
    np.savez(npz, x_a=np.zeros((3, 2)))
    monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(npz))))
    with pytest.raises(DataError, match=r"x\.npz: cannot read \(Permission denied\)"):
        load_generic(npz)


@pytest.mark.parametrize("what", ["last.pt", "model.pt", "config.json", "history.jsonl"])
def test_broken_run_files_are_one_line_errors(tmp_path: Path, capsys: Any, what: str) -> None:
    assert cli.main(_train_args(tmp_path / "runs")) == 0
    (run,) = (tmp_path / "runs").iterdir()
    if what == "history.jsonl":  # reusing the finished run reads its history
        with (run / what).open("a") as fh:
            fh.write('{"epoch": 9, "valid/accuracy": \n')
        lines = len((run / what).read_text().splitlines())
        _one_line_error(capsys, _train_args(tmp_path / "runs"), f"history.jsonl:{lines}",
                        "not valid JSON")
        return
    if what == "config.json":
        (run / what).write_text('{"method": "concat", ')
        _one_line_error(capsys, ["eval", str(run)], "config.json", "not valid JSON")
        return
    blob = (run / "model.pt").read_bytes()
    (run / what).write_bytes(blob[:300])
    if what == "last.pt":
        (run / "metrics.json").unlink()
        _one_line_error(capsys, _train_args(tmp_path / "runs"), "last.pt", "truncated",
                        "--no-resume")
    else:
        _one_line_error(capsys, ["eval", str(run)], "model.pt", "truncated")
        _one_line_error(capsys, _train_args(tmp_path / "runs"), "model.pt")


def test_convert_round_trips_pickles(tmp_path: Path, capsys: Any) -> None:
    src = write_mmsa(tmp_path / "mosi.pkl")
    assert cli.main(["prepare", "convert", str(src), str(tmp_path / "mosi.npz"),
                     "--format", "mmsa", "-s", "task=classification"]) == 0
    a, b = load_mmsa(src, task="classification"), load_generic(tmp_path / "mosi.npz")
    iem = write_pickle(tmp_path / "iem.pkl", {s: iemocap_split(n, i) for i, (s, n) in
                                              enumerate(zip(("train", "valid", "test"),
                                                            (8, 4, 4), strict=True))})
    assert cli.main(["prepare", "convert", str(iem), str(tmp_path / "iem"),
                     "--format", "iemocap", "-s", "task=multilabel"]) == 0
    c, d = load_iemocap(iem, task="multilabel"), load_generic(tmp_path / "iem")
    for x, y in ((a, b), (c, d)):
        assert (x.info.kind, x.info.num_outputs, x.info.class_names) == (
            y.info.kind, y.info.num_outputs, y.info.class_names)
        for split in ("train", "valid", "test"):
            sx, sy = getattr(x, split), getattr(y, split)
            assert torch.equal(sx.target, sy.target)
            for m in x.info.modality_names:
                assert torch.equal(sx.inputs[m], sy.inputs[m])
                assert torch.equal(sx.lengths[m], sy.lengths[m])
    with zipfile.ZipFile(tmp_path / "mosi.npz") as z:
        assert json.loads(np.load(z.open("meta.npy")).item())["task"] == "classification"


def test_history_reader_names_file_and_line(tmp_path: Path) -> None:
    assert read_history(None) == [] and read_history(tmp_path) == []  # no history: none
    (tmp_path / "history.jsonl").write_text('{"epoch": 0}\n\n{"epoch": 1}\n')
    assert read_history(tmp_path) == [{"epoch": 0}, {"epoch": 1}]
    (tmp_path / "history.jsonl").write_text('{"epoch": 0}\n[1, 2]\n')
    with pytest.raises(CheckpointError, match=r"history\.jsonl:2: expected a JSON object"):
        read_history(tmp_path)
    (tmp_path / "history.jsonl").write_text('{"epoch": 0}\n{"epoch": NaN, "x": }\n')
    with pytest.raises(CheckpointError, match=r"history\.jsonl:2: not valid JSON"):
        read_history(str(tmp_path))
