"""Runs are keyed on their data: changed data is never answered with stale results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from equimodal import cli
from equimodal.bench.jobs import JobSpec, run_job
from equimodal.config import RunConfig, TrainConfig
from equimodal.engine import DataChangedError, fit, load_run
from equimodal.engine import fingerprint as fpmod
from equimodal.registry import load_dataset
from fixtures_formats import write_generic_folder


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-m", "concat", "-d", "generic", "-s", f"data.path={data}",
            "--epochs", "2", "--no-progress", "--out", str(out), *extra]


def _relabel(root: Path) -> None:
    y = np.load(root / "labels.npy")
    np.save(root / "labels.npy", (y + 1) % 3)


def test_relabelled_data_is_not_answered_with_stale_metrics(tmp_path: Path, capsys: Any) -> None:
    root = write_generic_folder(tmp_path / "d", n=48)
    argv = _train(root, tmp_path / "runs")
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "test:" in first
    _relabel(root)
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert "test:" not in out  # the stored metrics are not reprinted
    assert "the data changed since this run was trained" in err and "--no-resume" in err
    assert "train/target" in err and "labels.npy" in err and "\n" not in err.strip()
    # Forcing retraining gives metrics that eval of the same run reproduces.
    assert cli.main([*argv, "--no-resume"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    stored = json.loads((run / "metrics.json").read_text())["test"]
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json"]) == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.index("{"):])
    assert printed["accuracy"] == pytest.approx(stored["accuracy"])
    assert cli.main(argv) == 0  # now consistent: reused without complaint


def test_changed_feature_size_is_a_clean_message(tmp_path: Path, capsys: Any) -> None:
    root = write_generic_folder(tmp_path / "d", n=24)
    argv = _train(root, tmp_path / "runs")
    assert cli.main(argv) == 0
    (run,) = (tmp_path / "runs").iterdir()
    a = np.load(root / "a.npy")
    np.save(root / "a.npy", np.concatenate([a, a], axis=1))
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "train/inputs/a [12x5] -> [12x10]" in err and "size mismatch" not in err, err
    assert cli.main(["eval", str(run)]) == 2  # weights no longer fit: named, not a traceback
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("equimodal: error:") and "data changed" in err


def test_interrupted_run_with_changed_data_is_not_resumed(tmp_path: Path) -> None:
    root = write_generic_folder(tmp_path / "d", n=24)
    cfg = RunConfig("concat", "generic", data={"path": str(root)},
                    train=TrainConfig(epochs=2, progress=False))
    run = tmp_path / "run"
    fit(cfg, run)
    (run / "metrics.json").unlink()
    (run / "model.pt").rename(run / "last.pt")  # stands in for an interrupted run
    _relabel(root)
    with pytest.raises(DataChangedError, match="--no-resume"):
        fit(cfg, run)
    result = fit(cfg, run, on_data_change="retrain")  # what bench does
    assert json.loads((run / "metrics.json").read_text())["test"] == result.test
    assert not (run / "last.pt").exists()


def test_touch_or_copy_is_not_a_change_but_content_is(tmp_path: Path) -> None:
    root = write_generic_folder(tmp_path / "d", n=24)
    cfg = RunConfig("concat", "generic", data={"path": str(root)},
                    train=TrainConfig(epochs=1, progress=False))
    fit(cfg, tmp_path / "run")
    later = os.stat(root / "labels.npy").st_mtime_ns + 10**9
    os.utime(root / "labels.npy", ns=(later, later))
    assert fpmod.files_changed(tmp_path / "run", cfg.data) == []
    fit(cfg, tmp_path / "run")  # reused, no error
    _relabel(root)
    assert fpmod.files_changed(tmp_path / "run", cfg.data) == [str((root / "labels.npy")
                                                                   .resolve())]


def test_bench_retrains_a_grid_point_whose_data_changed(tmp_path: Path) -> None:
    root = write_generic_folder(tmp_path / "d", n=24)
    cfg = RunConfig("concat", "generic", data={"path": str(root)},
                    train=TrainConfig(epochs=1, progress=False))
    spec = JobSpec(cfg.digest(), cfg.to_dict(), "generic", str(tmp_path / "run"))
    first = run_job(spec)
    assert first["status"] == "finished" and not first["reused"]
    assert run_job(spec)["reused"]
    _relabel(root)
    again = run_job(spec)
    assert again["status"] == "finished" and not again["reused"], again["reason"]
    assert again["metrics"]["test"] == load_run(tmp_path / "run").test


def test_builtin_fingerprint_is_stable_and_content_sensitive(monkeypatch: Any) -> None:
    kw = {"n_train": 64, "n_valid": 32, "n_test": 32}
    a, b = load_dataset("synthetic", **kw), load_dataset("synthetic", **kw)
    fa, fb = fpmod.data_fingerprint(a, kw), fpmod.data_fingerprint(b, kw)
    assert fa["content"] == fb["content"] and fa["files"] == {}
    b.train.target[3] = 1 - b.train.target[3]
    assert fpmod.data_fingerprint(b, kw)["content"] != fa["content"]
    # Large tensors are sampled, yet one changed value still shows (exact column sums).
    monkeypatch.setattr(fpmod, "_MAX_VALUES", 50)
    x = torch.randn(200, 7)
    before = fpmod.tensor_digest(x)
    x[101, 3] += 1e-6  # a row the sampling skips
    assert fpmod.tensor_digest(x) != before
    assert fpmod.tensor_digest(x.clone()) == fpmod.tensor_digest(x)


def _pretend_trained_under_other_default(run: Path) -> None:
    """Rewrite ``method.json`` as if a default (here concat's regression loss) had differed."""
    settings = json.loads((run / fpmod.SETTINGS_FILE).read_text())
    assert settings["config"]["regression_loss"] == "l1"  # concat's current default
    settings["config"]["regression_loss"] = "mse"
    (run / fpmod.SETTINGS_FILE).write_text(json.dumps(settings))


def test_changed_method_default_is_not_answered_with_stale_metrics(tmp_path: Path) -> None:
    cfg = RunConfig("concat", "synthetic", data={"n_train": 48, "n_valid": 24, "n_test": 24},
                    train=TrainConfig(epochs=1, progress=False))
    run = tmp_path / "run"
    fit(cfg, run)
    assert fpmod.settings_changed(run, "concat", {}) == []
    assert fpmod.settings_changed(run, "concat", {"regression_loss": "mse"}) == [
        "regression_loss"]
    _pretend_trained_under_other_default(run)
    with pytest.raises(DataChangedError, match="defaults of method 'concat' changed"):
        fit(cfg, run)
    fit(cfg, run, on_data_change="retrain")
    assert fpmod.settings_changed(run, "concat", {}) == []  # rewritten by the retraining


def test_bench_retrains_a_grid_point_whose_method_default_changed(tmp_path: Path) -> None:
    from equimodal.bench.runner import pending
    from equimodal.bench.store import ResultStore
    from equimodal.bench.suite import expand, suite_from_dict

    suite = suite_from_dict({"methods": ["concat"], "seeds": [0], "train": {"epochs": 1},
                             "datasets": [{"name": "synthetic", "kwargs": {"n_train": 48}}]})
    (point,) = expand(suite, ["concat"])
    spec = JobSpec(point.run_id, point.cfg.to_dict(), point.label,
                   str(tmp_path / "runs" / point.folder))
    store = ResultStore(tmp_path / "results.db")
    store.upsert(run_job(spec))
    assert pending([point], store, tmp_path / "runs", robustness=False) == ([], 1)
    _pretend_trained_under_other_default(Path(spec.run_dir))
    assert pending([point], store, tmp_path / "runs", robustness=False) == ([point], 0)
    again = run_job(spec)
    assert again["status"] == "finished" and not again["reused"], again["reason"]
