"""The training loop: selection, resume, accumulation, clipping, stages, freezing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine import Trainer, fit, load_run
from equimodal.methods.base import Method, MethodConfig, Stage
from equimodal.registry import create_method

SMALL = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5, "n_train": 120, "n_valid": 40,
         "n_test": 40}


def _cfg(**train: object) -> RunConfig:
    t = {"epochs": 4, "batch_size": 32, "progress": False, "device": "cpu", **train}
    return RunConfig("concat", "synthetic", data=dict(SMALL),
                     model=ModelConfig(hidden=16, layers=1), train=TrainConfig(**t))  # type: ignore[arg-type]


def test_fit_writes_run_folder_and_reports_unimodal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = fit(_cfg(), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "history.jsonl", "metrics.json", "model.pt"} <= files
    assert "last.pt" not in files
    assert {"accuracy", "a/accuracy", "b/accuracy"} <= set(result.test)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"] == "concat" and "versions" in saved
    assert len(result.history) == 4


def test_selection_uses_validation_best_epoch(tiny_data) -> None:  # type: ignore[no-untyped-def]
    method = create_method("concat", tiny_data.info, ModelConfig(hidden=16))
    train = TrainConfig(epochs=6, lr=0.05, progress=False, device="cpu")
    result = Trainer(method, tiny_data, train).fit()
    best = max(h["valid/accuracy"] for h in result.history)
    assert math.isclose(result.valid["accuracy"], best)


def test_finished_run_is_reused_not_retrained(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = fit(_cfg(), tmp_path / "run")
    mtime = (tmp_path / "run" / "model.pt").stat().st_mtime_ns
    again = fit(_cfg(), tmp_path / "run")
    assert (tmp_path / "run" / "model.pt").stat().st_mtime_ns == mtime
    assert again.test == first.test
    loaded = load_run(tmp_path / "run")
    assert loaded.test == first.test


class _InterruptError(Exception):
    pass


def test_interrupted_run_resumes_to_identical_result(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reference = fit(_cfg(epochs=5), tmp_path / "ref")
    calls = {"n": 0}
    original = Method.on_epoch_end

    def crash_after_three(self, ctx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:  # epochs 0-2 finished and checkpointed; die inside epoch 3
            raise _InterruptError
        return original(self, ctx)

    monkeypatch.setattr(Method, "on_epoch_end", crash_after_three)
    with pytest.raises(_InterruptError):
        fit(_cfg(epochs=5), tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").exists()
    monkeypatch.setattr(Method, "on_epoch_end", original)
    resumed = fit(_cfg(epochs=5), tmp_path / "run")
    assert len(resumed.history) == 5
    assert resumed.test == reference.test
    assert resumed.history[-1]["train/loss"] == pytest.approx(reference.history[-1]["train/loss"])


def test_gradient_accumulation_matches_large_batch(tiny_data) -> None:  # type: ignore[no-untyped-def]
    def run(bs: int, accum: int) -> torch.Tensor:
        torch.manual_seed(0)
        method = create_method("concat", tiny_data.info, ModelConfig(hidden=16))
        train = TrainConfig(epochs=1, batch_size=bs, accum_steps=accum, optimizer="sgd",
                            momentum=0.0, weight_decay=0.0, lr=0.1, progress=False,
                            device="cpu", seed=0)
        Trainer(method, tiny_data, train).fit()
        return torch.cat([p.detach().flatten() for p in method.parameters()])

    # 160 samples: 4 batches of 40 vs 8 micro-batches of 20 accumulated in pairs.
    assert torch.allclose(run(40, 1), run(20, 2), atol=1e-5)


def test_clipping_bounds_the_update(tiny_data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    method = create_method("concat", tiny_data.info, ModelConfig(hidden=16))
    before = torch.cat([p.detach().flatten().clone() for p in method.parameters()])
    train = TrainConfig(epochs=1, batch_size=160, optimizer="sgd", momentum=0.0,
                        weight_decay=0.0, lr=1.0, clip_norm=1e-3, progress=False, device="cpu")
    Trainer(method, tiny_data, train).fit()
    after = torch.cat([p.detach().flatten() for p in method.parameters()])
    assert float((after - before).norm()) <= 1e-3 + 1e-6


@dataclass
class _TwoStageConfig(MethodConfig):
    pass


class _TwoStage(Method):
    """Stage 1 trains encoder a only; stage 2 trains the rest."""

    Config = _TwoStageConfig
    name = "two_stage_test"

    def param_groups(self, stage: Stage) -> dict[str, list[torch.nn.Parameter]]:
        a = list(self.model.encoders["a"].parameters())
        ids = {id(p) for p in a}
        return {"a": a, "rest": [p for p in self.parameters() if id(p) not in ids]}

    def stages(self, train: TrainConfig) -> list[Stage]:
        return [Stage("first", 2, groups=("a",)), Stage("second", 2, groups=("rest",))]


def test_stages_freeze_parameters_outside_active_groups(tiny_data) -> None:  # type: ignore[no-untyped-def]
    from equimodal.models import build_multimodal_model

    torch.manual_seed(0)
    model = build_multimodal_model(tiny_data.info, ModelConfig(hidden=16))
    method = _TwoStage(model, tiny_data.info, _TwoStageConfig())
    enc_a = [p.detach().clone() for p in method.model.encoders["a"].parameters()]
    enc_b = [p.detach().clone() for p in method.model.encoders["b"].parameters()]

    seen: list[tuple[str, bool, bool]] = []
    original = method.on_epoch_end

    def record(ctx):  # type: ignore[no-untyped-def]
        a_now = next(method.model.encoders["a"].parameters())
        b_now = next(method.model.encoders["b"].parameters())
        seen.append((ctx.stage.name, a_now.requires_grad, b_now.requires_grad))
        return original(ctx)

    method.on_epoch_end = record  # type: ignore[method-assign]
    train = TrainConfig(epochs=4, progress=False, device="cpu")
    result = Trainer(method, tiny_data, train).fit()
    assert [h["stage"] for h in result.history] == ["first", "first", "second", "second"]
    assert seen[0][1:] == (True, False) and seen[-1][1:] == (False, True)
    changed_a = any(not torch.equal(p, q) for p, q in
                    zip(enc_a, method.model.encoders["a"].parameters(), strict=True))
    changed_b = any(not torch.equal(p, q) for p, q in
                    zip(enc_b, method.model.encoders["b"].parameters(), strict=True))
    assert changed_a and changed_b


def test_non_finite_loss_raises_clear_error(tiny_data) -> None:  # type: ignore[no-untyped-def]
    method = create_method("concat", tiny_data.info, ModelConfig(hidden=16))
    train = TrainConfig(epochs=1, lr=1e30, optimizer="sgd", progress=False, device="cpu")
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        Trainer(method, tiny_data, train).fit()


def test_early_stopping_stops(tiny_data) -> None:  # type: ignore[no-untyped-def]
    method = create_method("concat", tiny_data.info, ModelConfig(hidden=16))
    train = TrainConfig(epochs=50, lr=0.0, patience=2, progress=False, device="cpu")
    result = Trainer(method, tiny_data, train).fit()
    assert len(result.history) == 3


def test_regression_and_multilabel_tasks_train() -> None:
    for task, key in (("regression", "mae"), ("multilabel", "f1_micro")):
        cfg = RunConfig("concat", "synthetic", data={**SMALL, "task": task},
                        train=TrainConfig(epochs=3, progress=False, device="cpu"))
        result = fit(cfg)
        assert math.isfinite(result.test[key])


def test_unimodal_baseline_reports_only_the_modality_it_reads() -> None:
    cfg = RunConfig(method="unimodal", dataset="synthetic", method_cfg={"modality": "b"},
                    data={"n_train": 60, "n_valid": 30, "n_test": 30},
                    train=TrainConfig(epochs=1, progress=False))
    test = fit(cfg).test
    assert "b/accuracy" in test and not any(k.startswith("a/") for k in test)
    assert test["b/accuracy"] == test["accuracy"]  # its unimodal read-out is its prediction
