"""EBMC: losses in closed form, the gradient penalty against finite differences, the
ablation switches, the stage-I teacher (including resumption) and the method contract."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Laplace, Normal, kl_divergence

from equimodal import cli
from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import Trainer, evaluate, fit, load_run, seed_everything
from equimodal.losses.distill import (
    categorical_kl,
    categorical_variance,
    regression_entropy,
    regression_scale_nll,
    regression_variance,
    trust_weights,
)
from equimodal.losses.energy import (
    categorical_entropy,
    energy_gap_loss,
    energy_gradient_penalty,
    modality_energy,
)
from equimodal.losses.nce import info_nce
from equimodal.methods.base import Stage
from equimodal.methods.check import check_method
from equimodal.methods.ebmc import EBMC, STAGE1, STAGE2, EBMCConfig
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch, ModelOutput

SMALL: dict[str, Any] = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5,
                         "strengths": [1.5, 1.0], "n_train": 96, "n_valid": 32, "n_test": 32}
MODEL = ModelConfig(hidden=16, layers=1)




@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _method(info: Any, **cfg: Any) -> EBMC:
    seed_everything(0)
    m: EBMC = create_method("ebmc", info, MODEL, **cfg)
    return m


def _parts(method: EBMC, batch: Batch, stage: str = STAGE2) -> dict[str, torch.Tensor]:
    if stage == STAGE2 and not bool(method.teacher.ready):
        method.teacher.copy_from(method.net)
    method.train()
    torch.manual_seed(1)  # CCE noise
    out = method(batch)
    ctx: Any = SimpleNamespace(stage=Stage(stage))
    return method.compute_loss(batch, out, ctx)


def _run_cfg(**method_cfg: Any) -> RunConfig:
    return RunConfig("ebmc", "synthetic", data=dict(SMALL), method_cfg=method_cfg, model=MODEL,
                     train=TrainConfig(epochs=4, batch_size=32, progress=False, device="cpu"))


# ----- the contract ---------------------------------------------------------------------------
def test_contract_default() -> None:
    report = check_method("ebmc")
    assert report.last_loss < report.first_loss


def test_contract_sequences_three_modalities_regression() -> None:
    check_method("ebmc", epochs=4, sequences=True)
    check_method("ebmc", n_modalities=3, epochs=4)
    report = check_method("ebmc", task="regression")
    assert report.score > report.chance


# ----- closed forms ---------------------------------------------------------------------------
def test_info_nce_closed_form_and_mask() -> None:
    tau = 0.5
    x = torch.eye(4)
    e = torch.exp(torch.tensor(1 / tau))
    assert float(info_nce(2 * x, x, tau)) == pytest.approx(float(-torch.log(e / (e + 3))))
    mask = torch.tensor([True, True, True, False])
    assert float(info_nce(x, x, tau, mask=mask)) == pytest.approx(float(-torch.log(e / (e + 2))))


def test_energy_gap_closed_form_and_implicit_weights() -> None:
    e = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    gap = energy_gap_loss(e)
    assert float(gap.detach()) == pytest.approx(14.0)
    (g,) = torch.autograd.grad(gap, e)
    # Eq. 28-30: dL/dE(m) = 2 |M| (E(m) - mean E).
    assert torch.allclose(g, 2 * 3 * (e - e.mean()).detach())


def test_modality_energy_terms() -> None:
    z = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    loss, unc = torch.tensor([0.5, 1.0]), torch.tensor([0.2, 0.4])
    e = modality_energy(z, loss, unc, alpha=2.0, beta=3.0, gamma=5.0)
    assert torch.allclose(e, torch.tensor([2 * 5 + 1.5 + 1.0, 2 * 9 + 3.0 + 2.0]))
    e_mean = modality_energy(z, None, None, alpha=1.0, norm_reduction="mean")
    assert torch.allclose(e_mean, torch.tensor([2.5, 4.5]))


def test_trust_weights_closed_form() -> None:
    sigma = torch.tensor([[0.1, 0.5, 0.3]])
    raw = torch.exp(-sigma) / torch.log1p(sigma)
    assert torch.allclose(trust_weights(sigma, sigma), raw / raw.sum())
    raw2 = torch.exp(-sigma) / (torch.log1p(sigma**2) + 0.1)
    assert torch.allclose(trust_weights(sigma, sigma**2, offset=0.1), raw2 / raw2.sum())
    present = torch.tensor([[True, False, True]])
    w = trust_weights(sigma, sigma, present)
    assert float(w[0, 1]) == 0.0 and float(w.sum()) == pytest.approx(1.0)
    assert float(w[0, 0]) > float(w[0, 2]), "lower variance, higher trust"


def test_predictive_distribution_helpers_match_torch_distributions() -> None:
    logits, other = torch.randn(5, 4), torch.randn(5, 4)
    p = F.softmax(logits, -1)
    assert torch.allclose(categorical_variance(logits), 1 - (p**2).sum(-1))
    assert torch.allclose(categorical_entropy(logits), Categorical(logits=logits).entropy())
    assert torch.allclose(categorical_kl(logits, other),
                          kl_divergence(Categorical(logits=logits), Categorical(logits=other)),
                          atol=1e-6)
    mean, log_s, y = torch.randn(5), torch.randn(5), torch.randn(5)
    lap, gau = Laplace(mean, log_s.exp()), Normal(mean, log_s.exp())
    assert torch.allclose(regression_entropy(log_s, "laplace"), lap.entropy())
    assert torch.allclose(regression_entropy(log_s, "gaussian"), gau.entropy())
    assert torch.allclose(regression_variance(log_s, "laplace"), lap.variance)
    assert torch.allclose(regression_variance(log_s, "gaussian"), gau.variance)
    assert torch.allclose(regression_scale_nll(mean, log_s, y, "laplace"), -lap.log_prob(y))
    assert torch.allclose(regression_scale_nll(mean, log_s, y, "gaussian"), -gau.log_prob(y))


# ----- the energy-gradient penalty (Eq. 12) -----------------------------------------------------
def _toy_energy(z: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(z) @ w.t()  # a nonlinear T_m so the Hessian is not trivial
    return modality_energy(z, F.cross_entropy(t, y, reduction="none"), categorical_entropy(t),
                           alpha=0.7, beta=0.3, gamma=0.2)


def test_gradient_penalty_matches_finite_differences() -> None:
    torch.manual_seed(0)
    b, d, c, h = 4, 3, 3, 1e-6
    z = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, c, (b,))
    (g2,) = energy_gradient_penalty([_toy_energy(z, w, y)], [z])
    # The value: per-sample ||d e_i / d z_i||^2 from central differences.
    fd = torch.zeros(b, d, dtype=torch.float64)
    for i in range(b):
        for j in range(d):
            zp, zm = z.detach().clone(), z.detach().clone()
            zp[i, j] += h
            zm[i, j] -= h
            fd[i, j] = (_toy_energy(zp, w, y)[i] - _toy_energy(zm, w, y)[i]) / (2 * h)
    assert torch.allclose(g2, (fd**2).sum(1), rtol=1e-6, atol=1e-8)

    # Its gradient by double backprop, against finite differences of the penalty itself.
    def penalty(zv: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
        zz = zv.detach().clone().requires_grad_(True)
        return energy_gradient_penalty([_toy_energy(zz, wv, y)], [zz], create_graph=False)[0].mean()

    dz, dw = torch.autograd.grad(g2.mean(), [z, w])
    for var, grad in ((w, dw), (z, dz)):
        fd_grad = torch.zeros_like(grad)
        for idx in range(var.numel()):
            vp, vm = var.detach().clone(), var.detach().clone()
            vp.view(-1)[idx] += h
            vm.view(-1)[idx] -= h
            args_p = (z, vp) if var is w else (vp, w)
            args_m = (z, vm) if var is w else (vm, w)
            fd_grad.view(-1)[idx] = (penalty(*args_p) - penalty(*args_m)) / (2 * h)
        assert torch.allclose(grad, fd_grad, rtol=1e-5, atol=1e-7)


def test_method_penalty_equals_per_sample_gradients(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info)
    batch = data.train.batch(torch.arange(8))
    parts = _parts(method, batch)
    torch.manual_seed(1)
    out = method(batch)
    cfg, total = method.cfg, 0.0
    for n in data.info.modality_names:
        z, t = out.features[n], out.extras[f"t/{n}"]
        e = modality_energy(z, F.cross_entropy(t, batch.target, reduction="none"),
                            categorical_entropy(t), cfg.energy_alpha, cfg.energy_beta,
                            cfg.energy_gamma, cfg.sq_norm_reduction)
        per = [torch.autograd.grad(e[i], z, retain_graph=True)[0][i].pow(2).sum() for i in range(8)]
        total += float(torch.stack(per).mean())
    assert float(parts["emc/penalty"]) == pytest.approx(total, rel=1e-4)


def test_norm_only_penalty_closed_form(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info, grad_penalty="norm_only", energy_alpha=0.5, sq_norm_reduction="sum")
    batch = data.train.batch(torch.arange(8))
    parts = _parts(method, batch)
    out = method(batch)
    expected = sum(float((4 * 0.5**2 * out.features[n].detach().pow(2).sum(1)).mean())
                   for n in data.info.modality_names)
    assert float(parts["emc/penalty"]) == pytest.approx(expected, rel=1e-5)


# ----- Eq. 17 and the ablation switches ---------------------------------------------------------
def test_objective_is_eq17(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info)
    parts = _parts(method, data.train.batch(torch.arange(16)))
    c = method.cfg
    expected = (parts["task"] + c.zeta * parts["msd"] + c.beta * parts["cce"]
                + c.gamma * parts["emc"] + c.eta * parts["imtd"])
    assert float(parts["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts["emc"]) == pytest.approx(
        float(parts["emc/gap"] + c.delta * parts["emc/penalty"]), rel=1e-5)
    stage1 = _parts(method, data.train.batch(torch.arange(16)), STAGE1)
    assert not any(k.startswith(("emc", "imtd", "trust", "energy")) for k in stage1)


def test_eq17_and_paper_defaults() -> None:
    """Sec. 3.6 / 4 / A.2: zeta = 0.5; lambda1 = lambda2 = beta = gamma = eta = 0.1; every
    module and energy term on; Eq. 12's full penalty; Eq. 16's KL(student || teacher)."""
    c = EBMCConfig()
    assert (c.zeta, c.beta, c.gamma, c.eta, c.lambda1, c.lambda2) == (0.5, 0.1, 0.1, 0.1, 0.1, 0.1)
    switches = [f.name for f in fields(c) if f.name.startswith("use_")]
    assert sorted(switches) == sorted(["use_msd", "use_cce", "use_emc", "use_imtd",
                                       "use_energy_norm", "use_energy_loss",
                                       "use_energy_uncertainty"])
    assert all(getattr(c, n) is True for n in switches)
    assert (c.grad_penalty, c.kl_direction, c.dis_form, c.rho_offset) == (
        "full", "student_teacher", "cosine", 0.0)
    assert (c.stage1_epochs, c.stage2_epochs) == (None, None)


@pytest.mark.parametrize(("switch", "gone"), [
    ("use_msd", ("msd/inv", "msd/dis")),
    ("use_cce", ("cce", "cce/rec/a")),
    ("use_emc", ("emc", "emc/gap", "energy/a")),
    ("use_imtd", ("imtd", "trust/a")),
])
def test_table4_ablation_removes_its_module(data, switch: str, gone: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    full = _parts(_method(data.info), data.train.batch(torch.arange(16)))
    method = _method(data.info, **{switch: False})
    parts = _parts(method, data.train.batch(torch.arange(16)))
    assert all(k in full for k in gone) and not any(k in parts for k in gone)
    assert "msd/uni" in parts and torch.isfinite(parts["loss"])
    if switch == "use_msd":
        assert method.net.disentangler is None
    if switch == "use_cce":
        assert method.net.enhancer is None


@pytest.mark.parametrize("term", ["use_energy_norm", "use_energy_loss", "use_energy_uncertainty"])
def test_table7_ablation_removes_its_energy_term(data, term: str) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info, **{term: False})
    batch = data.train.batch(torch.arange(16))
    parts = _parts(method, batch)
    torch.manual_seed(1)
    out = method(batch)
    c = method.cfg
    for n in data.info.modality_names:
        z, t = out.features[n], out.extras[f"t/{n}"]
        e = torch.zeros(16)
        if term != "use_energy_norm":
            e = e + c.energy_alpha * z.pow(2).mean(1)  # default: mean over features
        if term != "use_energy_loss":
            e = e + c.energy_beta * F.cross_entropy(t, batch.target, reduction="none")
        if term != "use_energy_uncertainty":
            e = e + c.energy_gamma * categorical_entropy(t)
        assert float(parts[f"energy/{n}"]) == pytest.approx(float(e.detach().mean()), rel=1e-5)


@pytest.mark.parametrize("overrides", [
    {"use_msd": False}, {"use_cce": False}, {"use_emc": False}, {"use_imtd": False},
    {"use_energy_norm": False}, {"use_energy_loss": False}, {"use_energy_uncertainty": False},
    {"grad_penalty": "norm_only", "sq_norm_reduction": "mean", "uncertainty_source": "teacher",
     "imtd_uncertainty": "reference", "rho_offset": 0.1, "kl_direction": "teacher_student",
     "tau_sq_scale": True, "dis_form": "cosine_sq", "cce_generator": "shared",
     "cce_task_term": "head_l1", "cce_impute_missing": True, "cce_own_dropout": 0.3},
])
def test_every_variant_trains_both_stages(data, overrides: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info, **overrides)
    train = TrainConfig(epochs=4, batch_size=32, progress=False, device="cpu")
    result = Trainer(method, data, train).fit()
    assert [h["stage"] for h in result.history] == [STAGE1, STAGE1, STAGE2, STAGE2]
    stage1 = [h["train/loss"] for h in result.history if h["stage"] == STAGE1]
    assert stage1[-1] < stage1[0]
    assert (f"train/{'imtd'}" in result.history[-1]) == overrides.get("use_imtd", True)
    # Fig. 4: every epoch logs each modality's contribution share.
    for row in result.history:
        shares = [row[f"train/contribution/{n}"] for n in data.info.modality_names]
        assert sum(shares) == pytest.approx(1.0) and min(shares) >= 0.0


def test_emc_training_closes_the_energy_gap(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info)
    batch = data.train.batch(torch.arange(32))
    opt = torch.optim.Adam(method.net.parameters(), lr=1e-2)
    gaps = []
    for _ in range(25):
        parts = _parts(method, batch)
        out = method(batch)
        uni = {n: F.cross_entropy(out.extras[f"t/{n}"], batch.target, reduction="none")
               for n in data.info.modality_names}
        emc = method._emc_loss(batch, out, uni, None, {})
        opt.zero_grad()
        emc.backward()
        opt.step()
        gaps.append(float(parts["emc/gap"]))
    assert gaps[-1] < 0.1 * gaps[0]


def test_imtd_trusts_the_confident_teacher_and_pulls_towards_it(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info)
    batch = data.train.batch(torch.arange(4))
    a, b = data.info.modality_names
    teacher = {a: torch.tensor([[6.0, 0.0, 0.0]]).repeat(4, 1), b: torch.zeros(4, 3)}
    student = torch.zeros(4, 3, requires_grad=True)
    parts: dict[str, torch.Tensor] = {}
    loss = method._imtd_loss(batch, ModelOutput(student), teacher, parts)
    assert float(parts[f"trust/{a}"]) > 0.9
    (g,) = torch.autograd.grad(loss, student)
    assert bool((g[:, 0] < 0).all()), "descent raises the confident teacher's class"
    w_a = float(parts[f"trust/{a}"])
    var = torch.stack([categorical_variance(teacher[a]), categorical_variance(teacher[b])], 1)
    assert w_a == pytest.approx(float(trust_weights(var, var)[0, 0]))
    batch.present[a] = torch.tensor([False, True, True, True])
    method._imtd_loss(batch, ModelOutput(student), teacher, parts)
    assert float(parts[f"trust/{a}"]) == pytest.approx(0.75 * w_a), "absent: zero trust"


def test_regression_imtd_uses_teacher_variance() -> None:
    d = load_dataset("synthetic", task="regression", seed=0, **SMALL)
    method = _method(d.info)
    assert method.net.predictors[d.info.modality_names[0]].out_features == 2
    batch = d.train.batch(torch.arange(3))
    a, b = d.info.modality_names
    teacher = {a: torch.tensor([[1.0, -2.0]] * 3), b: torch.tensor([[-1.0, 0.0]] * 3)}
    student = torch.full((3, 1), 0.5)
    parts: dict[str, torch.Tensor] = {}
    loss = method._imtd_loss(batch, ModelOutput(student), teacher, parts)
    var = torch.tensor([[2 * torch.exp(torch.tensor(-4.0)), 2.0]])
    w = trust_weights(var, var)
    expected = w[0, 0] * 0.25 / 2 + w[0, 1] * 2.25 / 2  # (f - mu)^2 / (2 tau)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_imputation_replaces_absent_features_with_enhanced_ones(data) -> None:  # type: ignore[no-untyped-def]
    batch = data.test.batch(torch.arange(6)).with_modalities([data.info.modality_names[0]])
    b = data.info.modality_names[1]
    for impute in (False, True):
        method = _method(data.info, cce_impute_missing=impute).eval()
        out = method(batch)
        feats = dict(out.features)
        feats[b] = out.extras[f"zt/{b}"] if impute else torch.zeros_like(feats[b])
        assert torch.allclose(out.logits, method.net.backbone.fuse(batch, feats).logits)


def test_contribution_reflects_the_fusion_weights(data) -> None:  # type: ignore[no-untyped-def]
    method = _method(data.info)
    batches = [data.train.full_batch()]
    shares = method.contribution(batches)
    assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) > 0
    a, b = data.info.modality_names
    fusion: Any = method.net.backbone.fusion
    lo, hi = fusion.offsets[b]
    with torch.no_grad():
        fusion.fc.weight[:, lo:hi] = 0.0
    assert method.contribution(batches) == {a: pytest.approx(1.0), b: pytest.approx(0.0, abs=1e-6)}


# ----- the teacher and the two-stage schedule -------------------------------------------------
def test_stage_lengths_and_config_validation(data) -> None:  # type: ignore[no-untyped-def]
    m = _method(data.info)
    assert m.stage_epochs(TrainConfig(epochs=6)) == (3, 3)
    assert m.stage_epochs(TrainConfig(epochs=30)) == (15, 15)
    assert _method(data.info, stage1_epochs=2, stage2_epochs=5).stage_epochs(
        TrainConfig(epochs=6)) == (2, 5)
    with pytest.raises(ValueError, match="grad_penalty"):
        _method(data.info, grad_penalty="sometimes")
    with pytest.raises(ValueError, match="energy term"):
        _method(data.info, use_energy_norm=False, use_energy_loss=False,
                use_energy_uncertainty=False)


class _InterruptError(Exception):
    pass


def test_teacher_is_the_selected_stage1_model_and_stays_frozen(data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}
    original = EBMC.on_stage_start

    def spy(self: EBMC, stage: Stage, ctx: Any) -> None:
        if stage.name == STAGE2:
            seen["net"] = copy.deepcopy(self.net)
        original(self, stage, ctx)

    monkeypatch.setattr(EBMC, "on_stage_start", spy)
    method = _method(data.info)
    result = Trainer(method, data, TrainConfig(epochs=6, batch_size=32, progress=False,
                                               device="cpu")).fit()
    assert not list(method.teacher.parameters())
    declared = {id(p) for ps in method.param_groups(Stage(STAGE2)).values() for p in ps}
    assert declared == {id(p) for p in method.parameters()}
    for name, t in seen["net"].state_dict().items():
        assert torch.equal(method.teacher.state()[name], t), name
    # The snapshot is the best-validation stage-I model, not the last stage-I epoch.
    probe = _method(data.info)
    probe.net.load_state_dict(seen["net"].state_dict())
    best = max(h["valid/accuracy"] for h in result.history if h["stage"] == STAGE1)
    assert evaluate(probe, data.valid, data.info)["accuracy"] == pytest.approx(best)
    batch = data.test.full_batch()
    expected = seen["net"].eval()(batch).extras
    got = method._teacher_outputs(batch)
    temp = method.teacher_temp  # teacher_calibration: T_m / s_m
    assert not torch.equal(temp, torch.ones_like(temp))
    assert all(torch.allclose(got[n] * temp[j], expected[f"t/{n}"], atol=1e-6)
               for j, n in enumerate(data.info.modality_names))


@pytest.mark.parametrize("where", ["stage_boundary", "inside_stage2"])
def test_resumed_run_keeps_the_stage1_teacher(tmp_path, monkeypatch, where: str) -> None:  # type: ignore[no-untyped-def]
    reference = fit(_run_cfg(), tmp_path / "ref")
    seen: dict[str, Any] = {}
    start, end = EBMC.on_stage_start, EBMC.on_epoch_end

    def stop_at_stage2(self: EBMC, stage: Stage, ctx: Any) -> None:
        if stage.name == STAGE2:
            seen["net"] = {k: v.clone() for k, v in self.net.state_dict().items()}
            raise _InterruptError
        start(self, stage, ctx)

    def stop_inside_stage2(self: EBMC, ctx: Any) -> dict[str, float]:
        if ctx.stage.name == STAGE2 and ctx.stage_epoch == 1:
            seen["net"] = {k: v.clone() for k, v in self.teacher.state().items()}
            raise _InterruptError
        return end(self, ctx)

    if where == "stage_boundary":
        monkeypatch.setattr(EBMC, "on_stage_start", stop_at_stage2)
    else:
        monkeypatch.setattr(EBMC, "on_epoch_end", stop_inside_stage2)
    with pytest.raises(_InterruptError):
        fit(_run_cfg(), tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").exists()
    monkeypatch.setattr(EBMC, "on_stage_start", start)
    monkeypatch.setattr(EBMC, "on_epoch_end", end)
    resumed = fit(_run_cfg(), tmp_path / "run")
    teacher = resumed.method.teacher.state()
    assert all(torch.equal(teacher[k], v) for k, v in seen["net"].items())
    ref_teacher = reference.method.teacher.state()
    assert all(torch.equal(teacher[k], ref_teacher[k]) for k in teacher)
    assert resumed.test == reference.test
    assert [h["stage"] for h in resumed.history] == [STAGE1, STAGE1, STAGE2, STAGE2]


_CLI_SMALL = ["-s", "data.n_classes=3", "-s", "data.dim=8", "-s", "data.latent=4",
              "-s", "data.noise=0.5", "-s", "data.strengths=[1.5,1.0]", "-s", "data.n_train=96",
              "-s", "data.n_valid=32", "-s", "data.n_test=32", "-s", "model.hidden=16",
              "-s", "model.layers=1"]
_KILL_AT_STAGE2 = textwrap.dedent("""
    import os, signal, sys
    import torch
    from equimodal import cli
    from equimodal.methods.ebmc import EBMC, STAGE2
    torch.set_num_threads(1)
    start = EBMC.on_stage_start
    def kill(self, stage, ctx):
        if stage.name == STAGE2:  # after the stage-I checkpoint, before the teacher snapshot
            os.kill(os.getpid(), signal.SIGKILL)
        start(self, stage, ctx)
    EBMC.on_stage_start = kill
    sys.exit(cli.main(sys.argv[1:]))
""")


def _cli_train(out: Path) -> list[str]:
    return ["train", "--method", "ebmc", "--data", "synthetic", "--epochs", "4",
            "--batch-size", "32", "--device", "cpu", "--no-progress", "--out", str(out),
            *_CLI_SMALL]


def test_cli_one_call_runs_both_stages_and_resumes_after_a_kill_at_the_switch(
        tmp_path: Path) -> None:
    """One ``equimodal train --method ebmc`` runs stage I and II; a process SIGKILLed at the
    stage switch resumes from the boundary checkpoint to the uninterrupted result."""
    assert cli.main(_cli_train(tmp_path / "ref")) == 0
    (ref_dir,) = (tmp_path / "ref").iterdir()
    ref = load_run(ref_dir)
    assert [h["stage"] for h in ref.history] == [STAGE1, STAGE1, STAGE2, STAGE2]
    assert all(f"train/contribution/{n}" in h for h in ref.history
               for n in ref.method.info.modality_names)
    assert "train/imtd" in ref.history[-1] and "train/emc" in ref.history[-1]
    assert bool(ref.method.teacher.ready)

    killed = subprocess.run([sys.executable, "-c", _KILL_AT_STAGE2,
                             *_cli_train(tmp_path / "run")], capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    (run_dir,) = (tmp_path / "run").iterdir()
    assert run_dir.name == ref_dir.name and not (run_dir / "model.pt").exists()
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert (ckpt["stage_index"], ckpt["stage_epoch"]) == (1, 0)
    assert not bool(ckpt["method"]["teacher.ready"])

    assert cli.main(_cli_train(tmp_path / "run")) == 0
    resumed = load_run(run_dir)
    assert [h["stage"] for h in resumed.history] == [STAGE1, STAGE1, STAGE2, STAGE2]
    assert resumed.test == ref.test
    for a, b in zip(resumed.history, ref.history, strict=True):
        assert {k: v for k, v in a.items() if "time" not in k and "per_s" not in k} == {
            k: v for k, v in b.items() if "time" not in k and "per_s" not in k}
    teacher, ref_teacher = resumed.method.teacher.state(), ref.method.teacher.state()
    assert all(torch.equal(teacher[k], ref_teacher[k]) for k in teacher)
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == ref.test
