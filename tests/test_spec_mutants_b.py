"""Tests that kill sampled mutmut survivors in EBMC's and DecAlign's loss code (issue 18;
docs/mutation.md): the tau^2 scale of L_IMTD and the norm-only energy-gradient penalty."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import seed_everything
from equimodal.losses.consistency import js_divergence
from equimodal.losses.mi import club_nll
from equimodal.methods.decalign import prototype_alignment_loss
from equimodal.methods.ebmc import EBMC
from equimodal.registry import create_method, load_dataset

SMALL: dict[str, Any] = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5,
                         "strengths": [1.5, 1.0], "n_train": 32, "n_valid": 8, "n_test": 8}


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _ebmc(data: MultimodalData, **cfg: Any) -> EBMC:
    seed_everything(0)
    m: EBMC = create_method("ebmc", data.info, ModelConfig(hidden=16, layers=1), **cfg)
    seed_everything(1)
    other: EBMC = create_method("ebmc", data.info, ModelConfig(hidden=16, layers=1), **cfg)
    m.teacher.copy_from(other.net)
    m.train()
    return m


def test_imtd_tau_squared_scale(data: MultimodalData) -> None:
    batch = data.train.batch(torch.arange(16))
    losses = []
    for scale in (False, True):
        m = _ebmc(data, tau=3.0, tau_sq_scale=scale, teacher_calibration="none")
        torch.manual_seed(3)
        out = m(batch)
        losses.append(float(m._imtd_loss(batch, out, m._teacher_outputs(batch), {}).detach()))
    assert losses[1] == pytest.approx(9.0 * losses[0], rel=1e-5)


def test_norm_only_penalty_uses_the_configured_norm_reduction(data: MultimodalData) -> None:
    """``norm_only``: ``||d(alpha mean_f z^2)/dz||^2 = 4 alpha^2 ||z||^2 / D^2`` per sample."""
    m = _ebmc(data, grad_penalty="norm_only", sq_norm_reduction="mean", energy_alpha=0.7)
    batch = data.train.batch(torch.arange(16))
    torch.manual_seed(3)
    out = m(batch)
    names = data.info.modality_names
    uni = {n: m._uni_per_sample(out.extras[f"t/{n}"], batch.target) for n in names}
    parts: dict[str, torch.Tensor] = {}
    m._emc_loss(batch, out, uni, None, parts)
    want = sum(float((4 * 0.7**2 * out.features[n].detach().pow(2).sum(1)
                      / out.features[n].shape[1] ** 2).mean()) for n in names)
    assert float(parts["emc/penalty"]) == pytest.approx(want, rel=1e-4)


def test_msd_dis_with_a_single_sample_holding_both_modalities(data: MultimodalData) -> None:
    """Each ordered pair is averaged over the samples that have both modalities: one here."""
    m = _ebmc(data)
    batch = data.train.batch(torch.arange(6))
    names = data.info.modality_names
    batch.present[names[1]][1:] = False
    batch.inputs[names[1]][1:] = 0
    torch.manual_seed(3)
    out = m(batch)
    uni = {n: m._uni_per_sample(out.extras[f"t/{n}"], batch.target) for n in names}
    parts: dict[str, torch.Tensor] = {}
    m._msd_loss(batch, out, uni, parts)
    za, zb = (torch.nn.functional.normalize(out.extras[f"zs/{n}"][0], dim=-1) for n in names)
    assert float(parts["msd/dis"]) == pytest.approx(2 * float((za * zb).sum().detach()), rel=1e-5)


def test_udi_estimator_nll_uses_only_samples_with_both_modalities(data: MultimodalData) -> None:
    seed_everything(0)
    # The printed Eq. 10 (``raw``), whose closed form is ``club_nll``; the default
    # ``standardize`` reading changes the inputs and the reduction, not the mask.
    m = create_method("udi", data.info, ModelConfig(hidden=16, layers=1),
                      estimator_inputs="raw")
    batch = data.train.batch(torch.arange(12))
    names = data.info.modality_names
    batch.present[names[1]][:4] = False
    batch.inputs[names[1]][:4] = 0
    out = m(batch)
    plan = [(names[1], [names[0]])]
    both = batch.present[names[0]] & batch.present[names[1]]
    (g, est), = m._pairs(names[1], [names[0]])
    mu, logvar = est(out.features[g].detach())
    want = club_nll(out.features[names[1]].detach(), mu, logvar, both)
    got = m._estimator_nll(out, batch, plan)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_decalign_prototype_alignment_skips_absent_samples() -> None:
    feats = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]],
                          [[1.0, 1.0], [0.0, 2.0], [9.0, 9.0]]])  # [M=2, N=3, d=2]
    resp = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
                         [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])  # [M, N, K=2]
    means = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 3.0]]])  # [M, K, d]
    present = torch.tensor([[True, True, False], [True, True, True]])
    want = torch.zeros(())
    for i in range(2):
        j = 1 - i
        rows = [n for n in range(3) if present[i, n]]
        tot = sum(float(resp[i, n, k] * ((feats[i, n] - means[j, k]) ** 2).sum())
                  for n in rows for k in range(2))
        want = want + tot / len(rows)
    got = prototype_alignment_loss(feats, resp, means, present.float())
    assert torch.isfinite(got) and float(got) == pytest.approx(float(want), rel=1e-6)


def test_infobridge_critic_pass_detaches_the_encoder_features() -> None:
    """Algorithm 1: the critic's NCE pass (``detach=True``) must not reach the encoders."""
    from test_infobridge import _batch, _ctx
    from test_infobridge_wiring import MODEL
    from test_infobridge_wiring import SMALL as IB_SMALL

    ib_data = load_dataset("synthetic", seed=0, **IB_SMALL)
    seed_everything(0)
    method = create_method("infobridge", ib_data.info, MODEL)
    method.train()
    method.training_step(_batch(ib_data, 0, 32), _ctx(method, ib_data))  # fill the bank
    batch = _batch(ib_data, 32, 32)
    out = method(batch)
    feats = {n: f.detach().requires_grad_(True) for n, f in out.features.items()}
    with torch.no_grad():
        plans = method._plan(batch, out)
    critic_obj, _ = method.nce_objective(plans, feats, detach=True)
    assert critic_obj.requires_grad  # the critic still learns from it
    grads = torch.autograd.grad(critic_obj, list(feats.values()), allow_unused=True)
    assert all(g is None for g in grads)
    enc_obj, _ = method.nce_objective(plans, feats, detach=False)
    grads = torch.autograd.grad(enc_obj, list(feats.values()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_udi_consistency_uses_samples_with_the_follower_and_a_guide(data: MultimodalData) -> None:
    seed_everything(0)
    m = create_method("udi", data.info, ModelConfig(hidden=16, layers=1))
    batch = data.train.batch(torch.arange(12))
    a, b = data.info.modality_names
    batch.present[b][:4] = False
    batch.inputs[b][:4] = 0
    out = m(batch)
    con, _ = m._guidance(out, batch, b, [a])
    want = js_divergence(out.unimodal_logits[a].detach(), out.unimodal_logits[b],
                         batch.present[b] & batch.present[a])
    assert float(con.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_decalign_skips_prototype_and_homogeneity_terms_below_two_samples(
        data: MultimodalData) -> None:
    """A modality present in a single sample: L_hete and L_homo are zero, not fitted."""
    seed_everything(0)
    m = create_method("decalign", data.info, ModelConfig(hidden=16, layers=1))
    m.train()
    batch = data.train.batch(torch.arange(8))
    b = data.info.modality_names[1]
    batch.present[b][1:] = False
    batch.inputs[b][1:] = 0
    out = m(batch)
    terms = m.compute_loss(batch, out, SimpleNamespace(stage=None, epoch=0, step=0))
    for key in ("ot", "proto", "sem", "mmd"):
        assert float(terms[key].detach()) == 0.0


def test_msd_regression_term_reads_the_target() -> None:
    """EBMC regression: L_uni adds each teacher's scale NLL of the batch's target (Eq. 5)."""
    reg: MultimodalData = load_dataset("synthetic", seed=0, task="regression", **SMALL)
    m = _ebmc(reg, use_msd=False)
    batch = reg.train.batch(torch.arange(16))
    torch.manual_seed(3)
    out = m(batch)
    uni = {n: torch.zeros(16) for n in reg.info.modality_names}  # isolate the NLL term
    terms = []
    for target in (batch.target, batch.target + 3.0):
        moved = batch.__class__(**{**batch.__dict__, "target": target})
        parts: dict[str, torch.Tensor] = {}
        m._msd_loss(moved, out, uni, parts)
        terms.append(float(parts["msd/uni"]))
    assert all(torch.isfinite(torch.tensor(terms)))
    assert terms[1] > terms[0] + 0.1  # a target far from the teachers costs more
