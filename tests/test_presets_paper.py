"""Paper-recipe presets (``--preset <method>-paper``): values, expansion, one tiny epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from equimodal.cli import expand_preset, main
from equimodal.config import RunConfig
from equimodal.presets import PAPER_PRESETS, paper_preset

# The papers' stated values (section cited in presets.py), checked field by field.
EXPECTED = {
    "scope-paper": {"optimizer": "adamw", "lr": 1e-4, "scheduler": "cosine", "batch_size": 60,
                    "epochs": 100},
    "decalign-paper": {"optimizer": "adam", "lr": 2e-4, "scheduler": "plateau",
                       "clip_norm": 0.6, "batch_size": 32, "epochs": 50},
    "ebmc-paper": {"optimizer": "adam", "lr": 1e-4, "batch_size": 64, "epochs": 200,
                   "clip_norm": 1.0},
    "udi-paper": {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-2, "weight_decay": 1e-4,
                  "batch_size": 64},
    "infobridge-paper": {"optimizer": "sgd", "momentum": 0.9, "lr": 1e-2, "weight_decay": 1e-4,
                         "scheduler": "cosine", "batch_size": 128, "epochs": 200},
}


def test_every_specification_method_has_a_paper_preset() -> None:
    assert set(PAPER_PRESETS) == set(EXPECTED)
    with pytest.raises(KeyError, match="known: scope-paper"):
        paper_preset("mult-paper")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_resolves_to_the_paper_recipe(name: str) -> None:
    preset = paper_preset(name)
    cfg = preset.apply(RunConfig(method="concat", dataset="synthetic", data={"n_train": 10}))
    for key, value in EXPECTED[name].items():
        assert getattr(cfg.train, key) == value, key
    assert cfg.method == "concat" and cfg.data == {"n_train": 10}  # recipe only
    assert preset.apply(cfg, epochs=3).train.epochs == 3
    argv = expand_preset(["train", "--preset", name, "--set", "train.lr=0.5"])
    assert argv[:3] == ["train", "--method", preset.method]
    assert argv[-2:] == ["--set", "train.lr=0.5"]  # the user's value comes last and wins
    kept = expand_preset(["train", "-m", "concat", "--preset", name])
    assert "--method" not in kept and kept[-2:] == ["-m", "concat"]


def test_paper_recipe_lives_in_the_presets_only() -> None:
    from equimodal.methods.scope import Scope

    # One home for a paper's training recipe: the preset, not a copy on the method class.
    assert not hasattr(Scope, "recommended_train")
    assert PAPER_PRESETS["scope-paper"].method == "scope"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_trains_one_tiny_epoch(name: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--preset", name, "--data", "synthetic", "--epochs", "1",
                 "--no-progress", "--device", "cpu", "--out", str(tmp_path),
                 "--set", "data.n_train=64", "--set", "data.n_valid=32",
                 "--set", "data.n_test=32", "--set", "model.hidden=16"])
    assert code == 0
    run = next(tmp_path.iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == paper_preset(name).method
    for key, value in EXPECTED[name].items():
        if key != "epochs":
            assert cfg["train"][key] == value, key
    assert cfg["train"]["epochs"] == 1
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert "accuracy" in metrics
    out = capsys.readouterr().out
    assert "a (unimodal)" in out and "a (probe)" in out  # the probe printed by `train`


def _health() -> Any:
    from benchmark_scripts import load_script

    return load_script("health.py", "health_panel")


def test_health_panel_grid_and_verdicts() -> None:
    import pandas as pd

    health = _health()
    args = health.parse(["--methods", "scope", "--datasets", "synthetic", "--seeds", "0,1"])
    points = health.grid(args)
    assert len(points) == 8  # (concat + scope) x 2 seeds x (shared, scope-paper)
    paper = [p for p in points if p.label == "synthetic@scope-paper"]
    assert {p.cfg.method for p in paper} == {"concat", "scope"}
    assert all(p.cfg.train.lr == 1e-4 and p.cfg.train.epochs == args.paper_epochs
               and p.cfg.train.optimizer == "adamw" for p in paper)
    shared = [p for p in points if p.label == "synthetic@shared"]
    assert all(p.cfg.train.lr == 1e-3 and p.cfg.train.epochs == args.shared_epochs
               for p in shared)

    def row(method: str, seed: int, fused: float, probe_b: float) -> dict[str, object]:
        return {"label": "d@shared", "method": method, "seed": seed, "status": "finished",
                "reason": None, "modalities": ["a", "b"], "test/accuracy": fused,
                "test/a/accuracy": 0.9, "test/b/accuracy": 0.3, "test/a/probe_accuracy": 0.95,
                "test/b/probe_accuracy": probe_b}

    df = pd.DataFrame([row("concat", 0, 0.90, 0.60), row("concat", 1, 0.92, 0.62),
                       row("scope", 0, 0.905, 0.50), row("scope", 1, 0.905, 0.52),
                       row("udi", 0, 0.88, 0.61), row("udi", 1, 0.88, 0.61)])
    text, misses = health.panel_table(df, "d@shared", ["scope", "udi"])
    assert "weak modality: `b`" in text  # lowest concat probe, not hard-coded
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "FAIL (weak probe -10.0)" in lines["scope"]  # fusion -0.5 is within 1 point
    assert "FAIL (fusion -3.0)" in lines["udi"]
    assert len(misses) == 2


def test_health_panel_exact_tolerance_passes() -> None:
    import pandas as pd

    health = _health()
    rows = [{"label": "d@shared", "method": m, "seed": 0, "status": "finished", "reason": None,
             "modalities": ["a", "b"], "test/accuracy": f, "test/b/probe_accuracy": p}
            for m, f, p in (("concat", 0.9825, 0.735), ("ebmc", 0.9725, 0.715))]
    _, misses = health.panel_table(pd.DataFrame(rows), "d@shared", ["ebmc"])
    assert misses == []  # -1.0 and -2.0 points sit on the target, not below it
