"""`equimodal bench --log-to mlflow,tensorboard` read back with the real MLflow and TensorBoard.

MLflow: the runs are listed with ``MlflowClient`` on a ``file://`` store in a temporary folder
(MLflow 3 serves the file store only with ``MLFLOW_ALLOW_FILE_STORE=true``). TensorBoard: the
event files are read with ``EventAccumulator``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from equimodal.cli import main

TINY = {"n_train": 48, "n_valid": 24, "n_test": 24, "dim": 4, "latent": 2, "n_classes": 3}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pytest.importorskip("mlflow", reason="pip install mlflow (CI installs it)")
    pytest.importorskip("tensorboard", reason="pip install tensorboard (CI installs it)")
    out = tmp_path_factory.mktemp("tracked") / "b"
    uri = (out.parent / "mlruns").resolve().as_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        sets = [f"-sdata.{k}={v}" for k, v in TINY.items()] + ["-smodel.hidden=8",
                                                                 "-smodel.layers=1"]
        assert main(["bench", "--methods", "concat,late", "--datasets", "synthetic",
                     "--seeds", "1", "--epochs", "2", "--batch-size", "16", "--out", str(out),
                     "--workers", "1", "--quiet", "--log-to", "mlflow,tensorboard",
                     *sets]) == 0
    return out, uri


def test_mlflow_client_lists_the_runs_with_params_and_metrics(
        logged: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, uri = logged
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(out.name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["concat-synthetic-seed0",
                                                     "late-synthetic-seed0"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["train.epochs"] == "2"
        assert run.data.params["method"] == f'"{run.data.tags["method"]}"'
        assert 0.0 <= run.data.metrics["test/accuracy"] <= 1.0
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [0, 1]  # one point per epoch


def test_tensorboard_event_files_hold_the_scalars(logged: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = logged
    folders = sorted(p for p in (out / "tensorboard").iterdir() if p.is_dir())
    assert [p.name.split("-")[0] for p in folders] == ["concat", "late"]
    for folder in folders:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert {"train/loss", "valid/accuracy", "final_test/accuracy"} <= set(tags)
        assert [e.step for e in acc.Scalars("train/loss")] == [0, 1]
        assert 0.0 <= acc.Scalars("final_test/accuracy")[0].value <= 1.0
