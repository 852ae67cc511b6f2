"""A public contract checker for methods (in the spirit of scikit-learn's ``check_estimator``).

Third parties can run :func:`check_method` on their own registered methods; the test suite
runs it over every registered method.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine.evaluate import predict_split
from equimodal.engine.seeding import seed_everything
from equimodal.engine.trainer import Trainer
from equimodal.methods.base import Method
from equimodal.registry import METHODS, create_method, load_dataset


@dataclass
class CheckReport:
    """What :func:`check_method` measured."""

    name: str
    task: str
    first_loss: float
    last_loss: float
    score: float
    chance: float


def easy_data(cls: type[Method], task: str = "classification", n_modalities: int = 2,
              sequences: bool = False, seed: int = 0) -> MultimodalData:
    """Small, easy synthetic data suited to a method's capabilities."""
    caps = cls.capabilities
    m = max(n_modalities, caps.min_modalities)
    if caps.max_modalities is not None:
        m = min(m, caps.max_modalities)
    names = [f"m{i}" for i in range(m)]
    strengths = [1.5] + [1.0] * (m - 1)
    data: MultimodalData = load_dataset(
        "synthetic", modalities=names, strengths=strengths, task=task, n_classes=3, dim=8,
        latent=4, noise=0.5, seq_len=6 if sequences else 0, n_train=240, n_valid=60,
        n_test=60, seed=seed,
    )
    return data


def _fit(name: str, data: MultimodalData, epochs: int, seed: int,
         overrides: dict[str, Any]) -> tuple[Method, list[dict[str, Any]]]:
    seed_everything(seed)
    method = create_method(name, data.info, ModelConfig(hidden=32, layers=1), **overrides)
    train = TrainConfig(epochs=epochs, batch_size=40, lr=3e-3, seed=seed, progress=False,
                        device="cpu")
    result = Trainer(method, data, train).fit()
    return result.method, result.history


def check_method(name: str, task: str | None = None, epochs: int = 6, sequences: bool = False,
                 n_modalities: int = 2, **overrides: Any) -> CheckReport:
    """Run the method contract on easy synthetic data; raise ``AssertionError`` on failure.

    Checks: finite losses; the training loss of the first stage goes down; the fused
    prediction beats chance clearly; predictions have shape ``[N, C]``; parameters outside
    every declared group do not change; a state-dict round trip reproduces predictions;
    the same seed gives the same numbers; batches with a missing modality give finite
    outputs where the capability tags claim support.

    Args:
        name: Registered method name.
        task: Task kind (default: the method's first supported one).
        epochs: Training epochs (multi-stage methods split them as they declare).
        sequences: Use ``[B, T, D]`` inputs.
        n_modalities: Number of modalities of the synthetic data.
        **overrides: Method config fields.
    """
    cls = METHODS.get(name)
    task = task or cls.capabilities.tasks[0]
    data = easy_data(cls, task, n_modalities, sequences)
    seed_everything(0)
    probe = create_method(name, data.info, ModelConfig(hidden=32, layers=1), **overrides)
    train_cfg = TrainConfig(epochs=epochs)
    declared = {id(p) for st in probe.stages(train_cfg) for ps in probe.param_groups(st).values()
                for p in ps}
    frozen_before = {n: p.detach().clone() for n, p in probe.named_parameters()
                     if id(p) not in declared}

    method, history = _fit(name, data, epochs, 0, overrides)
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses and all(math.isfinite(v) for v in losses), f"{name}: non-finite loss {losses}"
    first_stage = history[0]["stage"]
    # A method whose objective gains terms as training goes (Self-MM's unimodal losses start
    # at epoch 3) names the logged term that must go down in its ``contract_loss``.
    key = f"train/{cls.contract_loss}"
    stage_losses = [h[key] for h in history if h["stage"] == first_stage]
    assert stage_losses[-1] < stage_losses[0], f"{name}: loss did not decrease: {stage_losses}"

    out, _, target = predict_split(method, data.test)
    n_out = data.info.num_outputs
    assert out.dim() == 2 and out.shape[0] == len(data.test), f"{name}: bad shape {out.shape}"
    assert out.shape[1] == n_out, f"{name}: predicted {out.shape[1]} outputs, expected {n_out}"
    assert torch.isfinite(out).all(), f"{name}: non-finite predictions"
    if task == "classification":
        score = float((out.argmax(1) == target).float().mean())
        chance = float(torch.bincount(target).max()) / len(target)
        assert score > chance + 0.15, f"{name}: accuracy {score:.3f} vs chance {chance:.3f}"
    else:
        pred = out.reshape(-1) if task == "regression" else out
        score = -float((pred - target).abs().mean()) if task == "regression" else float(
            ((pred > 0).float() == target).float().mean())
        chance = -float((target - target.mean()).abs().mean()) if task == "regression" else 0.5

    named = dict(method.named_parameters())
    for pname, before in frozen_before.items():
        assert torch.equal(named[pname].detach().cpu(), before), (
            f"{name}: parameter {pname} is in no declared group but changed"
        )

    seed_everything(123)
    twin = create_method(name, data.info, ModelConfig(hidden=32, layers=1), **overrides)
    twin.load_state_dict(copy.deepcopy(method.state_dict()))
    out_twin, _, _ = predict_split(twin, data.test)
    assert torch.allclose(out, out_twin, atol=1e-5), f"{name}: state-dict round trip differs"

    again, _ = _fit(name, data, epochs, 0, overrides)
    out_again, _, _ = predict_split(again, data.test)
    assert torch.allclose(out, out_again, atol=1e-5), f"{name}: same seed, different result"

    if cls.capabilities.missing_modalities:
        first = data.info.modality_names[0]
        part, _, _ = predict_split(method, data.test, modalities=[first])
        assert torch.isfinite(part).all(), f"{name}: non-finite output with a modality missing"
    return CheckReport(name, task, stage_losses[0], stage_losses[-1], score, chance)
