"""The command line: list, train, eval and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from equimodal.cli import main

DATA = ["-s", "data.n_train=80", "-s", "data.n_valid=40", "-s", "data.n_test=40"]


def test_list_shows_methods_and_datasets(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "concat" in out and "synthetic" in out and "unimodal" in out


def test_train_then_eval_with_a_modality_removed(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["train", "--method", "concat", "--data", "synthetic", "--epochs", "2",
            "--out", str(tmp_path), "--no-progress", *DATA]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fusion" in out and "a (unimodal)" in out and "b (unimodal)" in out
    run = next(tmp_path.iterdir())
    assert main(["eval", str(run), "--modalities", "a"]) == 0
    assert "with modalities ['a']" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--method", "nope", "--data", "synthetic"], "unknown method 'nope'"),
        (["train", "--method", "concat", "--data", "nope"], "unknown dataset 'nope'"),
        (["train", "--method", "concat", "-s", "train.bogus=1"], "unknown field(s) ['bogus']"),
        (["train", "--method", "unimodal", "-s", "method.modality=zzz", "--epochs", "1",
          *DATA], "unknown modality 'zzz'"),
        (["train", "--method", "concat", "-s", "lr=1"], "section.key=value"),
        (["eval", "does/not/exist"], "not a run folder"),
    ],
)
def test_bad_input_gives_one_line_error(args: list[str], message: str, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = main([*args, "--out", str(tmp_path)] if args[0] == "train" else args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_train_prints_graph_diagnostics_of_scope(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["train", "--method", "scope", "--data", "synthetic", "--epochs", "1",
            "--out", str(tmp_path), "--no-progress", *DATA]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith("dirichlet_")]
    assert {ln[0] for ln in lines} == {"dirichlet_in", "dirichlet_prop", "dirichlet_out"}
    assert all(float(ln[1]) >= 0 for ln in lines)  # an energy is a sum of squared norms


def test_preset_expands_before_user_overrides(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from equimodal.cli import expand_preset
    from fixtures_formats import write_mmsa

    argv = expand_preset(["train", "--method", "concat", "--preset", "mosi:f1",
                          "-s", "train.epochs=1"])
    assert argv[:3] == ["train", "--data", "mmsa"]
    assert "train.select_metric=f1_non0" in argv
    assert argv.index("train.epochs=40") < argv.index("train.epochs=1")  # the user's wins
    bench = expand_preset(["bench", "--preset", "mosi", "--seeds", "2"])
    assert bench.count("--seeds") == 1 and bench[-2:] == ["--seeds", "2"]
    path = write_mmsa(tmp_path / "mosi.pkl")
    code = main(["train", "--method", "concat", "--preset", "mosi", "-s", f"data.path={path}",
                 "--epochs", "1", "--out", str(tmp_path / "runs"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "mae" in out and "corr" in out
    assert main(["list", "--preset", "mosi"]) == 2  # only train and bench take a preset
