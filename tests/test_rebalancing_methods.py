"""Part-B imbalance baselines: one test of each method's defining mechanism (against the
papers' / official code's formulas) plus the public contract in default configuration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import StepContext, Trainer, seed_everything
from equimodal.losses.calibration import cml_rank_penalty, max_confidence, removal_masks
from equimodal.losses.robust import certified_bound, crmt_margin_loss, own_normalize
from equimodal.methods.base import Stage
from equimodal.methods.check import check_method
from equimodal.methods.gblending import ogr_blend_weights
from equimodal.methods.inforeg import regulation_strength, window_speed
from equimodal.methods.lfm import alpha_step, heuristic_alpha_cls
from equimodal.methods.relearning import purity_score, relearn_strength
from equimodal.methods.valuation import extra_copies, shapley_values
from equimodal.registry import create_method, load_dataset

NAMES = ["relearning", "gblending", "cml", "lfm", "inforeg", "valuation", "crmt"]




@pytest.fixture(scope="module")
def data() -> MultimodalData:
    """Two vector modalities, 3 classes, the first one stronger."""
    d: MultimodalData = load_dataset(
        "synthetic", n_classes=3, dim=8, latent=4, noise=0.5, strengths=[1.5, 0.5],
        n_train=160, n_valid=60, n_test=60, seed=0,
    )
    return d


def _method(name: str, data: MultimodalData, **cfg: Any) -> Any:
    seed_everything(0)
    return create_method(name, data.info, ModelConfig(hidden=16, layers=1), **cfg)


def _ctx(data: MultimodalData, epoch: int = 0, **train: Any) -> StepContext:
    ctx = StepContext(TrainConfig(batch_size=40, progress=False, device="cpu", **train),
                      torch.device("cpu"), data.train, torch.Generator().manual_seed(0))
    ctx.valid_split = data.valid
    ctx.stage = Stage("joint")
    ctx.stage_epoch = ctx.epoch = epoch
    return ctx


def _fit(method: Any, data: MultimodalData, epochs: int) -> Any:
    train = TrainConfig(epochs=epochs, batch_size=40, lr=3e-3, progress=False, device="cpu")
    return Trainer(method, data, train).fit()


# ----- contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_contract_default_config(name: str) -> None:
    report = check_method(name)
    assert report.last_loss < report.first_loss


# ----- relearning -----------------------------------------------------------------------------
def test_relearning_soft_reinit_interpolates_with_purity_gap_alpha(data: MultimodalData) -> None:
    assert purity_score(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1])) == 0.8
    assert purity_score(np.array([2, 2, 1]), np.array([5, 5, 7])) == 1.0
    assert relearn_strength(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))
    assert relearn_strength(0.5, 0.5, 3.0) == 0.0
    method = _method("relearning", data)
    _fit(method, data, 2)  # move the encoders away from their initialisation
    purities = method.diagnose(data.train, data.valid, 40)
    before = {n: parameters_to_vector(method.encoder(n).parameters()).detach().clone()
              for n in method.names}
    count = int(method.reinit_count)
    alphas = method.diagnose_and_relearn(data.train, data.valid, 40)
    for n in method.names:
        p_train, p_valid = purities[n]
        expected = math.tanh(3.0 * abs(p_train - p_valid))  # Eq.: alpha = tanh(lambda * gap)
        assert alphas[n] == pytest.approx(expected)
        after = parameters_to_vector(method.encoder(n).parameters())
        target = expected * method.init_vector(n) + (1 - expected) * before[n]
        assert torch.allclose(after, target, atol=1e-6)
    assert int(method.reinit_count) == count + 1
    assert any(a > 0 for a in alphas.values())


def test_relearning_schedule_every_and_cap(data: MultimodalData) -> None:
    method = _method("relearning", data)
    assert method.every(90) == 20  # the code's --reinit_epoch 20 of --epochs 90
    method = _method("relearning", data, reinit_every=1, reinit_num=2)
    result = _fit(method, data, 5)  # diagnoses before epochs 1, 2 (then capped)
    assert int(result.method.reinit_count) == 2


# ----- gblending ------------------------------------------------------------------------------
def test_gblending_weights_follow_ogr_formula(data: MultimodalData) -> None:
    t0, v0 = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.2, 1.1, 1.3])
    t1, v1 = torch.tensor([0.5, 0.8, 0.4]), torch.tensor([0.9, 1.0, 1.1])
    # dG = [0.3, 0.1, 0.2]; dO = [0.2, 0.1, 0.4]; w ∝ dG / dO^2 = [7.5, 10, 1.25]
    w = ogr_blend_weights(t0, v0, t1, v1, eps=0.0)
    assert torch.allclose(w, torch.tensor([7.5, 10.0, 1.25]) / 18.75)
    worse = ogr_blend_weights(t0, v0, t1, torch.tensor([1.3, 1.0, 1.1]), eps=0.0)
    assert float(worse[0]) == 0.0  # held-out loss got worse: no weight
    assert torch.allclose(ogr_blend_weights(t0, v0, t1, v0 + 1), torch.full((3,), 1 / 3))
    # The blended loss is sum_k w_k L_k over [unimodal..., fused].
    method = _method("gblending", data)
    method.weights.copy_(torch.tensor([0.2, 0.3, 0.5]))
    batch = data.train.batch(torch.arange(20))
    out = method(batch)
    losses = method.head_losses(batch, out)
    terms = method.compute_loss(batch, out, _ctx(data))
    expected = float((losses * method.weights).sum().detach())
    assert float(terms["loss"].detach()) == pytest.approx(expected, 1e-6)
    # GB_Estimate stores normalised weights from held-out (validation) losses.
    ctx = _ctx(data)
    w_est = method.estimate(ctx)
    assert float(w_est.sum()) == pytest.approx(1.0) and bool((w_est >= 0).all())
    assert torch.equal(method.weights, w_est)
    assert method.holdout(ctx)[1] is data.valid


# ----- cml ------------------------------------------------------------------------------------
def test_cml_penalty_zero_on_confidence_drop_positive_on_rise() -> None:
    y = torch.tensor([0, 0, 0])
    full = torch.tensor([0.9, 0.6, 0.7])
    drop = torch.tensor([0.5, 0.4, 0.7])
    rise = torch.tensor([0.95, 0.8, 0.9])
    assert float(cml_rank_penalty(full, y, drop, y, y)) == 0.0
    assert float(cml_rank_penalty(full, y, rise, y, y)) == pytest.approx(0.05 + 0.2 + 0.2)
    assert float(cml_rank_penalty(full, y, rise, y, y, epsilon=0.1)) == pytest.approx(0.2)
    # Removing a modality may legitimately fix a wrong prediction: no penalty.
    wrong, right = torch.tensor([1, 1, 1]), y
    assert float(cml_rank_penalty(full, wrong, rise, right, y)) == 0.0
    # Both wrong ("trick 2"): only the reduced prediction is pushed down.
    c_more = full.clone().requires_grad_(True)
    c_less = rise.clone().requires_grad_(True)
    cml_rank_penalty(c_more, wrong, c_less, wrong, y).backward()
    assert c_more.grad is not None and c_less.grad is not None
    assert float(c_more.grad.abs().sum()) == 0.0 and float(c_less.grad.sum()) == 3.0
    conf, pred = max_confidence(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    assert pred.tolist() == [0, 1] and float(conf[0]) == pytest.approx(1 / (1 + math.exp(-2)))


def test_cml_removal_chain_is_nested_and_ends_with_one_modality() -> None:
    present = {n: torch.ones(50, dtype=torch.bool) for n in ("a", "b", "c")}
    steps = removal_masks(present, torch.Generator().manual_seed(0))
    assert len(steps) == 3 and all(bool(steps[0][n].all()) for n in present)
    counts = [sum(s[n].long() for n in present) for s in steps]
    assert [int(c.unique().item()) for c in counts] == [3, 2, 1]
    for prev, nxt in zip(steps[:-1], steps[1:], strict=True):
        assert all(bool((nxt[n] <= prev[n]).all()) for n in present)
    last = torch.stack([steps[-1][n] for n in present], 1).float().argmax(1)
    assert len(last.unique()) > 1  # random order per sample


# ----- lfm ------------------------------------------------------------------------------------
def test_lfm_dynamic_weights(data: MultimodalData) -> None:
    g_val = [torch.tensor([1.0, 0.0])]
    g_cls, g_align = [torch.tensor([0.0, 1.0])], [torch.tensor([1.0, 0.0])]
    # The held-out gradient agrees with the contrastive one: alpha_align grows.
    assert alpha_step(0.5, g_val, g_cls, g_align, 0.1, (0.05, 0.95)) == pytest.approx(0.6)
    assert alpha_step(0.5, g_val, g_align, g_cls, 0.1, (0.05, 0.95)) == pytest.approx(0.4)
    assert alpha_step(0.9, g_val, g_cls, g_align, 1.0, (0.05, 0.95)) == 0.95
    assert heuristic_alpha_cls(0) == pytest.approx(0.2046237)
    assert heuristic_alpha_cls(100) == pytest.approx(0.5392, abs=1e-3)
    method = _method("lfm", data)
    assert method.weights() == pytest.approx((0.05, 0.95))
    batch = data.train.batch(torch.arange(20))
    out = method(batch)
    terms = method.compute_loss(batch, out, _ctx(data))
    expected = 0.05 * terms["cls"] + 0.95 * terms["align"]
    assert float(terms["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    before = float(method.alpha_align)
    method.on_epoch_start(_ctx(data, epoch=1))
    assert float(method.alpha_align) != before  # one hyper-gradient step was taken
    heur = _method("lfm", data, strategy="heuristic")
    heur.stages(TrainConfig(epochs=10))
    heur.on_epoch_start(_ctx(data, epoch=5))  # epoch 5 of 10 -> t = 50 on the fitted curve
    assert heur.weights()[0] == pytest.approx(heuristic_alpha_cls(50))


# ----- inforeg --------------------------------------------------------------------------------
def test_inforeg_proximal_term_on_dominant_modality_in_window(data: MultimodalData) -> None:
    assert window_speed(torch.zeros(11)) == 1.0
    assert window_speed(torch.tensor([0.0] * 10 + [5.0])) == 1.0  # the code's epoch 1
    hist = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert window_speed(hist) == pytest.approx((1.0 - 4.0) / 6.0)
    d, beta = regulation_strength(torch.tensor([10.0, 30.0]), 0.95)
    assert d == 1 and beta == pytest.approx(0.95 * math.exp(math.tanh(20.0)))

    method = _method("inforeg", data)
    method.on_epoch_start(_ctx(data))  # theta_prev <- current encoders
    with torch.no_grad():
        for n in method.names:
            for p in method.encoder(n).parameters():
                p.add_(0.05 * torch.randn_like(p))
    batch = data.train.batch(torch.arange(40))
    out = method(batch)
    d, beta = regulation_strength(method.scores(batch, out), 0.95)
    dom = method.names[d]
    prox, d_used, beta_used = method.proximal(batch, out)
    assert d_used == d and beta_used == pytest.approx(beta) and float(prox.detach()) > 0
    terms = method.compute_loss(batch, out, _ctx(data))
    assert float(terms["prox"]) == pytest.approx(float(prox.detach()))
    params = list(method.encoder(dom).parameters())
    grads = torch.autograd.grad(prox, params)
    flat = torch.cat([g.reshape(-1) for g in grads])
    assert torch.allclose(flat, method.regulation_gradient(dom, beta), atol=1e-5)
    other = [n for n in method.names if n != dom][0]
    g_other = torch.autograd.grad(prox, list(method.encoder(other).parameters()),
                                  allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in g_other)
    # Outside the prime learning window (Fisher trace no longer growing): no regulation.
    method.trace_history.copy_(torch.linspace(2.0, 1.0, 11).repeat(len(method.names), 1))
    assert float(method.compute_loss(batch, method(batch), _ctx(data))["prox"]) == 0.0


# ----- valuation ------------------------------------------------------------------------------
def test_valuation_shapley_and_resampling(data: MultimodalData) -> None:
    # Two modalities: phi_a = (v_a + v_all - v_b) / 2 with v_all = 2 * correct (official code).
    ca, cb, call = (torch.tensor(v, dtype=torch.bool) for v in
                    ([1, 1, 0, 0, 1], [1, 0, 1, 0, 0], [1, 1, 1, 0, 0]))
    phi = shapley_values({(0,): ca, (1,): cb, (0, 1): call}, 2)
    ref_a = (ca.float() + 2 * call.float() - cb.float()) / 2
    ref_b = (cb.float() + 2 * call.float() - ca.float()) / 2
    assert torch.allclose(phi, torch.stack([ref_a, ref_b], 1))
    # Three modalities: efficiency (sum = v(N)) and symmetry when all subsets are right.
    g = torch.Generator().manual_seed(0)
    subsets = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    correct = {s: torch.rand(7, generator=g) > 0.5 for s in subsets}
    phi3 = shapley_values(correct, 3)
    assert torch.allclose(phi3.sum(1), 3 * correct[(0, 1, 2)].float(), atol=1e-6)
    ones = shapley_values({s: torch.ones(2, dtype=torch.bool) for s in subsets}, 3)
    assert torch.allclose(ones, torch.ones(2, 3))
    copies = extra_copies(torch.tensor([1.5, 1.0, 0.5, 0.0, -0.5]), (0.9, 0.4, -0.1))
    assert copies.tolist() == [0, 0, 1, 2, 3]
    # Each low-contributing (sample, modality) adds copies keeping only that modality.
    method = _method("valuation", data, warmup=1)
    method.stages(TrainConfig(epochs=4))
    ctx = _ctx(data, epoch=1)
    table = method.valuate(ctx)
    assert table.shape == (len(data.train), 2)
    batch = data.train.batch(torch.arange(30))
    out, target = method.resampled(batch, ctx)
    n = extra_copies(table[:30], (0.9, 0.4, -0.1))
    assert out.logits.shape[0] == target.shape[0] == 30 + int(n.sum())
    warm, _ = method.resampled(batch, _ctx(data, epoch=0))  # still warming up
    assert warm.logits.shape[0] == 30


# ----- crmt -----------------------------------------------------------------------------------
def test_crmt_margin_bound_and_orthogonal_classifier(data: MultimodalData) -> None:
    w = own_normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(w @ w.t(), torch.eye(3), atol=1e-5)
    assert torch.allclose(w.sum(1), torch.zeros(3), atol=1e-5)  # rows centred
    rows = own_normalize(torch.randn(3, 8), orthogonal=False)
    assert torch.allclose(rows.norm(dim=1), torch.ones(3), atol=1e-5)
    h = [torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.5, 1.0, 0.0]])]
    y = torch.tensor([0])
    explicit = math.log(math.exp(-2) + math.exp(-3) + math.exp(0.5) + math.exp(-0.5) + 1e-5)
    assert float(crmt_margin_loss(h, y)) == pytest.approx(explicit, rel=1e-5)
    a = torch.tensor([[1.0, 0.5, 2.0], [0.2, 1.0, 1.0]])
    b = torch.tensor([0.1, 0.0, 0.3])
    lip = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 1.5]])
    # fused = [2*1 + 0.5*0.2 + 0.1, 0 + 1 + 0, -2 + 0 + 0.3] = [2.2, 1.0, -1.7]: runner-up 1.
    numer = (1.0 * 2.0 - 0.5 * 0.0) + (0.2 * 0.5 - 1.0 * 1.0) + 0.1 - 0.0
    denom = math.sqrt((1.0 * 1.0 + 0.5 * 2.0) ** 2 + (0.2 * 0.5 + 1.0 * 1.0) ** 2)
    r = certified_bound(torch.stack(h), a, b, lip, y)
    assert float(r[0]) == pytest.approx(numer / denom, rel=1e-6)
    assert float(certified_bound(torch.stack(h), a, b, lip, torch.tensor([2]))[0]) < 0
    # Step 2 optimises only the integration weights, with SGD at 0.03 lr.
    method = _method("crmt", data)
    stages = method.stages(TrainConfig(epochs=9))
    assert [s.epochs for s in stages] == [9, 2]
    groups = method.param_groups(stages[1])
    assert list(groups) == ["integration"] and groups["integration"][0] is method.fusion.scale
    assert method.group_options()["integration"]["lr_scale"] == 0.03
    lip_est = method.estimate_lipschitz(data.train, 40)
    assert lip_est.shape == (2, 3) and bool((lip_est > 0).all())
    radius = method.certified_radius(data.test.batch(torch.arange(10)))
    assert radius.shape == (10,) and bool(torch.isfinite(radius).all())
