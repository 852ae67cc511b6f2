"""Options added by the health ablations (docs/health.md, "Why the misses miss"): DecAlign's
per-modality encoder for vector inputs and EBMC's trust-only teacher calibration."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import seed_everything
from equimodal.methods.ebmc import EBMC
from equimodal.registry import create_method, load_dataset

MODEL = ModelConfig(hidden=16, layers=1, heads=2)


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", n_classes=3, dim=8, latent=4, noise=0.5,
                                     strengths=[1.5, 1.0], n_train=64, n_valid=16, n_test=16,
                                     seed=0)
    return d


@pytest.mark.parametrize("vector_encoder", [False, True])
def test_decalign_vector_encoder_makes_modality_features_nonlinear(
        data: MultimodalData, vector_encoder: bool) -> None:
    """Without the encoder every per-modality feature (what the linear probe reads) is a
    bias-free linear map of the raw input, f(2x) = 2 f(x); with it, it is not."""
    seed_everything(0)
    m = create_method("decalign", data.info, MODEL, vector_encoder=vector_encoder).eval()
    batch = data.train.batch(torch.arange(16))
    double = data.train.batch(torch.arange(16))
    double.inputs = {n: 2 * x for n, x in batch.inputs.items()}
    with torch.no_grad():
        f1, f2 = m.modality_features(batch), m.modality_features(double)
    linear = all(torch.allclose(f2[n], 2 * f1[n], atol=1e-5) for n in f1)
    assert linear is not vector_encoder
    assert set(m.model.encoders) == (set(data.info.modality_names) if vector_encoder else set())


def _ebmc(data: MultimodalData, **cfg: Any) -> EBMC:
    seed_everything(0)
    m: EBMC = create_method("ebmc", data.info, MODEL, tau=2.0, **cfg)
    seed_everything(1)
    other: EBMC = create_method("ebmc", data.info, MODEL, tau=2.0, **cfg)
    m.teacher.copy_from(other.net)
    m.teacher_temp.copy_(torch.tensor([2.0, 0.5]))
    return m.train()


@pytest.mark.parametrize("calibration", ["temperature", "trust"])
def test_ebmc_trust_calibration_distils_towards_the_raw_teacher(
        data: MultimodalData, calibration: str) -> None:
    """``trust``: Eq. 13-15 trust from T_m / s_m, Eq. 16's KL targets from the raw T_m;
    ``temperature``: both from T_m / s_m."""
    m = _ebmc(data, teacher_calibration=calibration)
    batch = data.train.batch(torch.arange(24))
    torch.manual_seed(3)
    out = m(batch)
    names = data.info.modality_names
    teacher = m._teacher_outputs(batch)  # calibrated: T_m / s_m
    present = torch.stack([batch.present[n] for n in names], 1)
    alpha = m._trust(teacher, present)
    s = F.softmax(out.logits / 2.0, -1)
    want = torch.zeros(())
    for j, n in enumerate(names):
        logits = teacher[n] * m.teacher_temp[j] if calibration == "trust" else teacher[n]
        t = F.softmax(logits / 2.0, -1)
        want = want + (alpha[:, j] * (s * (s.log() - t.log())).sum(-1)).mean()
    got = m._imtd_loss(batch, out, teacher, {})
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_health_set_overrides_the_method_not_concat() -> None:
    """``health.py --set``: the ablation reaches the specification method only, so concat's
    runs (and run ids) are the plain panel's; only method.* / train.* are accepted."""
    from benchmark_scripts import load_script

    health = load_script("health.py", "health_panel_ablation")
    base = ["--methods", "scope", "--datasets", "synthetic", "--seeds", "0", "--recipes",
            "shared"]
    plain = {p.cfg.method: p for p in health.grid(health.parse(base))}
    abl = {p.cfg.method: p for p in health.grid(health.parse(
        [*base, "--set", "method.use_mid=false", "--set", "train.patience=0"]))}
    assert abl["concat"].run_id == plain["concat"].run_id
    assert abl["scope"].run_id != plain["scope"].run_id
    assert abl["scope"].cfg.method_cfg == {"use_mid": False}
    assert abl["scope"].cfg.train.patience == 0 and abl["concat"].cfg.train.patience == 5
    with pytest.raises(SystemExit):
        health.parse([*base, "--set", "data.n_train=10"])
