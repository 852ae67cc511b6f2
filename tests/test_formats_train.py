"""`equimodal prepare` then `equimodal train` through the command line on a tiny fixture of
every supported format (written by tests/fixtures_formats.py in exactly that format), plus
skip-bad reporting and one-line CLI errors naming the file and field."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from equimodal.cli import main
from fixtures_formats import (
    generic_arrays,
    iemocap_split,
    make_cremad,
    make_food,
    make_mvsa,
    write_generic_folder,
    write_mmsa,
    write_pickle,
)

TRAIN = ["--method", "concat", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
         "--no-progress", "--set", "model.hidden=8", "--set", "model.layers=1"]


def _npz(root: Path) -> Path:
    arr = generic_arrays(20)
    np.savez(root / "d.npz", x_a=arr["a"], x_b=arr["b"], lengths_b=arr["b_len"],
             y=arr["labels"], split=arr["split"][:20])
    return root / "d.npz"


def _parquet(root: Path) -> Path:
    pytest.importorskip("pyarrow")
    import pandas as pd

    arr = generic_arrays(16)
    pd.DataFrame({"x_a": list(arr["a"]), "x_b": [list(v) for v in arr["b"]],
                  "lengths_b": arr["b_len"], "y": arr["labels"], "split": arr["split"][:16]}
                 ).to_parquet(root / "d.parquet")
    return root / "d.parquet"


def _iemocap(root: Path) -> Path:
    splits = {"train": iemocap_split(12, 0), "valid": iemocap_split(4, 1),
              "test": iemocap_split(4, 2)}
    return write_pickle(root / "iemocap_data.pkl", splits)


CREMAD = ["--n-frames", "1", "--image-size", "8", "--sample-rate", "8000", "--max-seconds",
          "0.2", "--n-mels", "8", "--no-progress"]
IMG = ["--image-size", "8", "--text-dim", "16", "--no-progress"]

# case -> (writer of the raw fixture, `prepare` arguments after the path, dataset, kind)
CASES = {
    "generic-npy": (lambda r: write_generic_folder(r / "g"), ["check", "--path"], "generic",
                    "classification"),
    "generic-npz": (_npz, ["check", "--path"], "generic", "classification"),
    "generic-parquet": (_parquet, ["check", "--path"], "generic", "classification"),
    "mmsa-aligned": (lambda r: write_mmsa(r / "MOSI" / "aligned_50.pkl"),
                     ["check", "--format", "mmsa", "--path"], "mmsa", "regression"),
    "mmsa-unaligned": (lambda r: write_mmsa(r / "SIMS" / "unaligned_39.pkl", aligned=False,
                                            sims=True),
                       ["check", "--format", "mmsa", "--path"], "mmsa", "regression"),
    "iemocap": (_iemocap, ["check", "--format", "iemocap", "--path"], "iemocap",
                "classification"),
    "cremad": (lambda r: (make_cremad(r / "crema"), r / "crema")[1],
               ["cremad", *CREMAD, "--root"], "cremad", "classification"),
    "mvsa": (lambda r: (make_mvsa(r / "mvsa"), r / "mvsa")[1],
             ["imagetext", "--layout", "mvsa", *IMG, "--root"], "imagetext", "classification"),
    "food101-csv": (lambda r: (make_food(r / "food"), r / "food")[1],
                    ["imagetext", "--layout", "csv", "--train-csv", "texts/train_titles.csv",
                     "--test-csv", "texts/test_titles.csv", *IMG, "--root"], "imagetext",
                    "classification"),
}


def _fusion_row(text: str) -> list[float]:
    """The numbers of the last ``fusion`` row (test metrics) printed by `equimodal train`."""
    rows = [line for line in text.splitlines() if line.startswith("fusion")]
    return [float(v) for v in rows[-1].split()[1:]]


@pytest.mark.parametrize("case", list(CASES))
def test_prepare_then_train_on_each_format(case: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    write, prep, dataset, kind = CASES[case]
    raw = write(tmp_path)
    args = ["prepare", *prep, str(raw)]
    path = raw
    if prep[0] != "check":  # a raw layout: features are written to --out
        path = tmp_path / "features"
        args += ["--out", str(path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("wrote" in out) if prep[0] != "check" else (f"{kind}," in out)
    assert main(["train", "--data", dataset, "--set", f"data.path={path}",
                 "--out", str(tmp_path / "runs"), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert f"on {dataset}" in printed
    metrics = _fusion_row(printed)
    assert metrics and all(math.isfinite(v) for v in metrics)


def test_train_skip_bad_reports_exclusions(tmp_path: Path, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    names = np.array(["cat", "dog", "eel"])[np.arange(24) % 3]
    names[[1, 5]] = "owl"
    folder = write_generic_folder(tmp_path / "u", labels=names,
                                  meta={"class_names": ["cat", "dog", "eel"]})
    base = ["train", "--data", "generic", "--set", f"data.path={folder}", "--out",
            str(tmp_path / "runs"), *TRAIN]
    assert main(base) == 2  # refused, naming the file, the field and the value
    err = capsys.readouterr().err
    assert "labels.npy" in err and "unknown label" in err and "'owl'" in err
    with caplog.at_level(logging.WARNING):
        assert main([*base, "--set", "data.skip_bad=true"]) == 0
    assert "2 sample(s) excluded in total" in caplog.text and "owl" in caplog.text
    assert main(["prepare", "check", "--path", str(folder), "--skip-bad"]) == 0
    assert "excluded 2 sample(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d.pop("test"), "missing split entry 'test'"),
        (lambda d: d["train"].update(audio=d["train"]["audio"][:-2]), "counts differ"),
    ],
)
def test_cli_errors_name_file_and_field(tmp_path: Path, capsys, edit, pattern) -> None:  # type: ignore[no-untyped-def]
    path = write_mmsa(tmp_path / "mosi.pkl")
    import pickle

    raw = pickle.loads(path.read_bytes())
    edit(raw)
    write_pickle(path, raw)
    assert main(["prepare", "check", "--format", "mmsa", "--path", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mosi.pkl" in err and pattern in err
