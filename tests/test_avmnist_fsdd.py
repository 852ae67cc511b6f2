"""AV-MNIST recordings a user can point at: `-s data.fsdd=PATH` and `prepare avmnist --fsdd`."""

from __future__ import annotations

from pathlib import Path

import pytest

from equimodal.data.builtin import avmnist as av
from equimodal.data.dataset import DataError


def _wavs(folder: Path, digits: range = range(10), per: int = 2) -> Path:
    from fixtures_formats import write_wav

    for d in digits:
        for i in range(per):
            write_wav(folder / f"{d}_tone_{i}.wav", 200.0 + 150.0 * d, seconds=0.1)
    return folder


def test_check_fsdd_accepts_a_checkout_or_the_recordings_folder(tmp_path: Path) -> None:
    rec = _wavs(tmp_path / "free-spoken-digit-dataset" / "recordings")
    for given in (rec.parent, rec):
        assert av.check_fsdd(given) == (rec, [])
    assert av.fsdd_folder(str(rec.parent)) == rec
    assert len(av.fsdd_index(av.fsdd_folder(str(rec.parent))).names) == 20


def test_check_fsdd_names_what_is_missing(tmp_path: Path) -> None:
    folder, problems = av.check_fsdd(tmp_path / "nowhere")
    assert folder is None and problems == [f"{tmp_path / 'nowhere'}: no such folder"]
    (tmp_path / "empty").mkdir()
    folder, problems = av.check_fsdd(tmp_path / "empty")
    assert folder is None and "no recordings/ folder" in problems[0]
    assert "Jakobovski/free-spoken-digit-dataset" in problems[0]
    part = _wavs(tmp_path / "part", digits=range(7))
    (part / "notes.wav").write_bytes(b"")
    folder, problems = av.check_fsdd(part)
    assert folder == part and problems == [f"{part}: no recording of digit(s) [7, 8, 9]"]
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "a.wav").write_bytes(b"")
    assert "none named" in av.check_fsdd(tmp_path / "odd")[1][0]
    with pytest.raises(DataError, match=r"no recording of digit\(s\) \[7, 8, 9\].*data.fsdd"):
        av.avmnist(fsdd=str(part), progress=False)


def test_prepare_avmnist_checks_the_folder_first(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from equimodal.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["prepare", "avmnist", "--fsdd", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no recordings/ folder" in err and "git clone --depth 1" in err


def test_missing_default_folder_says_how_to_point_at_it(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUIMODAL_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match="EQUIMODAL_SHARED_DATA.*-s data.fsdd=PATH"):
        av.fsdd_folder()
