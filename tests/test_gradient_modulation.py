"""Modality-imbalance baselines, part A: one test of each method's defining mechanism (OGM-GE
coefficients / gradient scaling / GE noise, OPM drop probabilities and dropping, AGM Shapley
responses and gradient scaling, PMR prototypes and losses, MMPareto's Pareto combination, MLA's
alternation / OWM / entropy fusion, ReconBoost's schedule and reconcilement loss, Greedy's
conditional learning speed and re-balancing), plus the public contract for each."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import StepContext
from equimodal.engine.optim import build_optimizer
from equimodal.losses.modulation import (
    agm_coefficients,
    discrepancy_ratios,
    entropy_fusion_weights,
    flat_dot,
    min_norm_weights,
    ogm_coefficients,
    opm_drop_probabilities,
    owm_update,
    scale_grad,
    shapley_responses,
)
from equimodal.losses.prototypes import prototype_cross_entropy, prototype_entropy
from equimodal.methods.check import check_method
from equimodal.methods.mmpareto import combine_pair
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch

MODEL = ModelConfig(hidden=16, layers=1)
METHODS = ["ogm_ge", "opm", "agm", "pmr", "mmpareto", "mla", "reconboost", "greedy"]




@pytest.fixture(scope="module")
def data() -> MultimodalData:
    """Two imbalanced vector modalities, 3 classes."""
    d: MultimodalData = load_dataset(
        "synthetic", n_classes=3, dim=8, latent=4, noise=0.5, strengths=[1.5, 0.5],
        n_train=96, n_valid=32, n_test=32, seed=0)
    return d


def _method(name: str, data: MultimodalData, model: ModelConfig = MODEL, **cfg: Any) -> Any:
    torch.manual_seed(0)
    return create_method(name, data.info, model, **cfg)


def _ctx(method: Any, data: MultimodalData, epoch: int = 0, stage: int = 0,
         lr: float = 1e-2) -> StepContext:
    """A step context with the method's optimisers for one of its stages."""
    train = TrainConfig(epochs=30, batch_size=32, lr=lr, device="cpu", progress=False)
    ctx = StepContext(train, torch.device("cpu"), data.train, torch.Generator().manual_seed(0))
    st = method.stages(train)[stage]
    groups = method.param_groups(st)
    active = list(st.groups) if st.groups is not None else list(groups)
    ctx.optimizers = {g: build_optimizer(groups[g], train) for g in active}
    ctx.group_params = {g: groups[g] for g in active}
    ctx.stage = st
    ctx.epoch = epoch
    return ctx


def _batch(data: MultimodalData, size: int = 32) -> Batch:
    return data.train.batch(torch.arange(size))


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in module.parameters()]


# ----- OGM-GE ---------------------------------------------------------------------------------


def test_ogm_coefficient_and_ratio_rules() -> None:
    scores = torch.tensor([0.6, 0.2])
    rho = discrepancy_ratios(scores)
    assert torch.allclose(rho, torch.tensor([3.0, 1.0]))
    k = ogm_coefficients(rho, alpha=0.5)
    assert float(k[0]) == pytest.approx(1 - math.tanh(0.5 * 3.0))
    assert float(k[1]) == 1.0
    assert float(ogm_coefficients(rho, 0.5, minus_one=True)[0]) == pytest.approx(
        1 - math.tanh(0.5 * 2.0))
    # Three or more modalities: every score against the minimum.
    rho3 = discrepancy_ratios(torch.tensor([0.4, 0.1, 0.2]))
    assert torch.allclose(rho3, torch.tensor([4.0, 1.0, 2.0]))


def test_ogm_scales_exactly_the_dominant_encoder_gradients(data: MultimodalData) -> None:
    method = _method("ogm_ge", data, alpha=0.3, ge=False)
    batch = _batch(data)
    ctx = _ctx(method, data)
    out = method(batch)
    F.cross_entropy(out.logits, batch.target).backward()
    names = method.names
    plain = {n: _grads(method.net.encoders[n]) for n in names}
    fusion = _grads(method.net.fusion)
    method.on_after_backward(batch, out, ctx)
    # Hand computation of Eq. 8-10 from the split-fusion logits.
    s = torch.stack([torch.softmax(out.unimodal_logits[n], 1).gather(
        1, batch.target.view(-1, 1)).mean() for n in names]).detach()
    dom = int(s.argmax())
    k = 1 - math.tanh(0.3 * float(s[dom] / s.min()))
    assert float(method.coeffs[dom]) == pytest.approx(k, rel=1e-5)
    assert float(method.coeffs[1 - dom]) == 1.0
    for i, n in enumerate(names):
        factor = k if i == dom else 1.0
        for g0, g1 in zip(plain[n], _grads(method.net.encoders[n]), strict=True):
            assert torch.allclose(g1, g0 * factor, atol=1e-7)
    for g0, g1 in zip(fusion, _grads(method.net.fusion), strict=True):
        assert torch.equal(g0, g1)  # the fusion layer is never modulated
    # Outside the modulation window nothing changes.
    method.zero_grad()
    out = method(batch)
    F.cross_entropy(out.logits, batch.target).backward()
    before = _grads(method.net.encoders[names[dom]])
    method.on_after_backward(batch, out, _ctx(method, data, epoch=51))
    for g0, g1 in zip(before, _grads(method.net.encoders[names[dom]]), strict=True):
        assert torch.equal(g0, g1)


def test_ge_noise_has_the_gradient_std(data: MultimodalData) -> None:
    method = _method("ogm_ge", data, ModelConfig(hidden=64, layers=1), alpha=0.3)
    batch = _batch(data)
    out = method(batch)
    F.cross_entropy(out.logits, batch.target).backward()
    weak = method.names[1]
    w = method.net.encoders[weak].net[0].weight  # 64 x 8 = 512 entries
    g0 = w.grad.detach().clone()
    torch.manual_seed(1)
    method.on_after_backward(batch, out, _ctx(method, data))
    k = float(method.coeffs[1])
    noise = w.grad - k * g0
    assert float(noise.std()) == pytest.approx(float(g0.std()) + 1e-8, rel=0.12)
    assert abs(float(noise.mean())) < 0.15 * float(g0.std())


# ----- OPM / OGM (TPAMI) --------------------------------------------------------------------


def test_opm_drop_probabilities_and_dropping(data: MultimodalData) -> None:
    rho = torch.tensor([2.5, 1.0])
    q = opm_drop_probabilities(rho, q_base=0.5, lam=0.5)
    assert float(q[0]) == pytest.approx(0.5 * (1 + 0.5 * math.tanh(1.5)))
    assert float(q[1]) == 0.0
    method = _method("opm", data)
    feats = {"m0": torch.ones(4000, 6), "m1": torch.ones(4000, 10)}
    method.names = ["m0", "m1"]
    kept, flag = method.drop_features(feats, torch.tensor([0.5, 0.0]))
    theta = 6 * 0.5 / 16
    dropped = (kept["m0"][:, 0] == 0).float().mean()
    assert float(dropped) == pytest.approx(0.5, abs=0.03)
    assert torch.allclose(kept["m0"][kept["m0"][:, 0] > 0], torch.tensor(1 / (1 - theta)))
    assert torch.allclose(kept["m1"], torch.full_like(kept["m1"], 1 / (1 - theta)))
    assert bool(flag.all())
    # q = 1 drops every sample's features of that modality.
    kept, _ = method.drop_features(feats, torch.tensor([1.0, 0.0]))
    assert float(kept["m0"].abs().sum()) == 0.0


def test_opm_step_trains_on_dropped_features_and_ogm_variant(data: MultimodalData) -> None:
    method = _method("opm", data, p_exe=1.0, warmup_epochs=0)
    batch = _batch(data)
    ctx = _ctx(method, data)
    logs = method.training_step(batch, ctx)
    assert float(logs["dropped"]) == 1.0
    dom = int(method.ratios.argmax())
    assert float(method.drop_probs[dom]) > 0.5 and float(method.drop_probs[1 - dom]) == 0.0
    # Warm-up (6 epochs by default): no modulation.
    warm = _method("opm", data, p_exe=1.0)
    logs = warm.training_step(batch, _ctx(warm, data, epoch=5))
    assert float(logs["dropped"]) == 0.0
    ogm = _method("opm", data, variant="ogm", warmup_epochs=0, ge=False, alpha=0.5)
    out = ogm(batch)
    F.cross_entropy(out.logits, batch.target).backward()
    ogm.on_after_backward(batch, out, _ctx(ogm, data))
    dom = int(ogm.ratios.argmax())
    assert float(ogm.coeffs[dom]) == pytest.approx(
        1 - math.tanh(0.5 * float(ogm.ratios[dom])), rel=1e-6)


# ----- AGM ------------------------------------------------------------------------------------


def test_shapley_responses_on_toy_games() -> None:
    a, b, c = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([5.0])
    # Two players, v(empty) = 0: phi_a = (v(ab) - v(b) + v(a)) / 2.
    v = {frozenset({0}): a, frozenset({1}): b, frozenset({0, 1}): a + b + c}
    phi = shapley_responses(v, 2)
    assert torch.allclose(phi[0], (v[frozenset({0, 1})] - b + a) / 2)
    assert torch.allclose(phi[0] + phi[1], v[frozenset({0, 1})])  # efficiency
    # Three players: additive parts go to their owner, a pairwise synergy is split in two.
    x = [1.0, -2.0, 4.0]
    v3 = {frozenset(s): torch.tensor([sum(x[i] for i in s) + (3.0 if {0, 1} <= set(s) else 0.0)])
          for r in (1, 2, 3) for s in itertools.combinations(range(3), r)}
    phi3 = shapley_responses(v3, 3)
    assert [round(float(p), 6) for p in phi3] == [2.5, -0.5, 4.0]


def test_agm_coefficients_and_gradient_scaling(data: MultimodalData) -> None:
    s, run = torch.tensor([0.5, 1.5]), torch.tensor([0.6, 1.2])
    c = agm_coefficients(s, run, alpha=1.0)
    assert float(c[0]) == pytest.approx(math.exp(math.exp(0.6) - math.e))
    assert float(c[1]) == pytest.approx(math.exp(math.exp(-0.6) - math.exp(-1.0)))
    # On an additive (sum) fusion, scaling phi_m's gradient scales encoder m's by c_m.
    method = _method("agm", data, ModelConfig(hidden=16, layers=1, fusion="sum"))
    batch = _batch(data)
    feats = method.net.encode(batch)
    phi = method.shapley(batch, feats)
    fused = method.net.fuse(batch, feats).logits
    assert torch.allclose(phi[0] + phi[1], fused, atol=1e-5)
    F.cross_entropy(phi[0] + phi[1], batch.target).backward()
    plain = {n: _grads(method.net.encoders[n]) for n in method.names}
    method.zero_grad()
    feats = method.net.encode(batch)
    phi = method.shapley(batch, feats)
    coeffs = [0.3, 2.0]
    F.cross_entropy(scale_grad(phi[0], coeffs[0]) + scale_grad(phi[1], coeffs[1]),
                    batch.target).backward()
    for n, k in zip(method.names, coeffs, strict=True):
        for g0, g1 in zip(plain[n], _grads(method.net.encoders[n]), strict=True):
            assert torch.allclose(g1, k * g0, atol=1e-6)
    # The running average is the cumulative mean of the batch scores.
    method.update_coefficients(torch.tensor([1.0, 2.0]), True)
    method.update_coefficients(torch.tensor([3.0, 0.0]), True)
    assert torch.allclose(method.running_scores, torch.tensor([2.0, 1.0]))


# ----- PMR ------------------------------------------------------------------------------------


def test_pmr_prototypes_are_class_means_and_losses_match(data: MultimodalData) -> None:
    method = _method("pmr", data, momentum=0.2, alpha=1.0, mu=0.01)
    batches = [data.train.batch(torch.arange(i, i + 32)) for i in (0, 32, 64)]
    method.compute_prototypes(batches)
    with torch.no_grad():
        method.eval()
        feats = method.net.encode(data.train.batch(torch.arange(96)))
        method.train()
    y = data.train.target[:96]
    for i, n in enumerate(method.names):
        for k in range(3):
            assert torch.allclose(method.prototypes(i)[k], feats[n][y == k].mean(0), atol=1e-5)
    old = method.prototypes(0).clone()
    with torch.no_grad():
        for p in method.net.encoders[method.names[0]].parameters():
            p.mul_(1.1)
    method.compute_prototypes(batches)
    with torch.no_grad():
        method.eval()
        new = method.net.encode(data.train.batch(torch.arange(96)))[method.names[0]]
        method.train()
    means = torch.stack([new[y == k].mean(0) for k in range(3)])
    assert torch.allclose(method.prototypes(0), 0.8 * means + 0.2 * old, atol=1e-5)
    # Prototype CE / entropy against a hand computation.
    f = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    d = torch.tensor([[0.0, 2.0], [math.sqrt(2), math.sqrt(2)]])
    ce = (-torch.log_softmax(-d, 1)[torch.arange(2), torch.tensor([0, 1])]).mean()
    assert float(prototype_cross_entropy(f, c, torch.tensor([0, 1]))) == pytest.approx(float(ce))
    p = torch.softmax(-d, 1)
    assert float(prototype_entropy(f, c)) == pytest.approx(float(-(p * p.log()).sum(1).mean()))
    # The total loss: CE + beta * PCE(slow) - w * entropy(dominant).
    batch = _batch(data)
    out = method(batch)
    ctx = _ctx(method, data)
    losses = {k: v.detach() for k, v in method.compute_loss(batch, out, ctx).items()}
    scores = method.imbalance(batch, out.features)
    dom, slow = int(scores.argmax()), int(scores.argmin())
    r = float(scores[dom] / scores[slow])
    beta = min(max(r - 1, 0.0), 1.0)
    pce = prototype_cross_entropy(out.features[method.names[slow]], method.prototypes(slow),
                                  batch.target)
    ent = prototype_entropy(out.features[method.names[dom]], method.prototypes(dom))
    expected = F.cross_entropy(out.logits, batch.target) + beta * pce - 0.01 * beta * ent
    assert float(losses["loss"]) == pytest.approx(float(expected.detach()), rel=1e-5)
    # After the PER epochs the entropy term is gone.
    late = method.compute_loss(batch, out, _ctx(method, data, epoch=10))
    assert "per" not in late


# ----- MMPareto -------------------------------------------------------------------------------


def test_min_norm_combination_is_pareto_under_conflict() -> None:
    g1, g2 = [torch.tensor([1.0, 0.2, -0.5])], [torch.tensor([-2.0, 1.0, 0.3])]
    assert float(flat_dot(g1, g2)) < 0
    d, (w1, w2), cos = combine_pair(g1, g2, gamma=1.0)
    assert cos < 0 and w1 + w2 == pytest.approx(1.0) and 0 < w1 < 1
    # Before magnitude rescaling: the min-norm point, equal inner products with both.
    mgda = [w1 * g1[0] + w2 * g2[0]]
    assert float(flat_dot(mgda, g1)) == pytest.approx(float(flat_dot(mgda, g2)), abs=1e-6)
    assert float(flat_dot(d, g1)) >= 0 and float(flat_dot(d, g2)) >= 0
    # Magnitude: never below the plain sum's norm.
    assert float(d[0].norm()) >= float((g1[0] + g2[0]).norm()) - 1e-6
    # No conflict: equal weights, i.e. gamma * (g1 + g2).
    h1, h2 = [torch.tensor([1.0, 1.0])], [torch.tensor([0.5, 2.0])]
    d, w, _ = combine_pair(h1, h2, gamma=1.5)
    assert w == (0.5, 0.5) and torch.allclose(d[0], 1.5 * (h1[0] + h2[0]))
    assert min_norm_weights([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 0.0])])[0] == 0.999


def test_mmpareto_writes_the_combined_encoder_gradients(data: MultimodalData) -> None:
    method = _method("mmpareto", data)
    batch = _batch(data)
    ctx = _ctx(method, data)
    ctx.step = lambda group=None: None  # type: ignore[method-assign]  # keep the grads
    method.training_step(batch, ctx)
    out = method(batch)
    loss_mm = F.cross_entropy(out.logits, batch.target)
    for n in method.names:
        params = list(method.net.encoders[n].parameters())
        g_mm = list(torch.autograd.grad(loss_mm, params, retain_graph=True))
        g_m = list(torch.autograd.grad(
            F.cross_entropy(out.unimodal_logits[n], batch.target), params, retain_graph=True))
        expected, _, _ = combine_pair(g_mm, g_m, gamma=1.5)
        for p, g in zip(params, expected, strict=True):
            assert torch.allclose(p.grad, g, atol=1e-6)
    # Heads and fusion get the gradient of the summed losses.
    head = method.heads[method.names[0]].weight
    total = loss_mm + sum(F.cross_entropy(out.unimodal_logits[n], batch.target)
                          for n in method.names)
    assert torch.allclose(head.grad, torch.autograd.grad(total, head)[0], atol=1e-6)


# ----- MLA ------------------------------------------------------------------------------------


def test_mla_alternates_with_owm_and_fuses_by_entropy(data: MultimodalData) -> None:
    method = _method("mla", data)
    batch = _batch(data)
    ctx = _ctx(method, data)
    method.training_step(batch, ctx)
    assert ctx.steps_taken == len(method.names)  # one optimiser step per modality turn
    # OWM: the second turn's head gradient is projected by P updated with the first turn.
    method2 = _method("mla", data)
    h0 = method2.net.encode_one(batch, method2.names[0]).detach()
    method2.modify_head_grad(h0, alpha=0.1)  # first turn: only records its mean input
    assert torch.equal(method2.projector, torch.eye(16))
    logits = method2.net.head(method2.net.encode_one(batch, method2.names[1]))
    F.cross_entropy(logits, batch.target).backward()
    g = method2.net.head.weight.grad.clone()
    method2.modify_head_grad(torch.zeros(1, 16), alpha=0.1)
    P = owm_update(torch.eye(16), h0.mean(0), 0.1)
    assert torch.allclose(method2.projector, P, atol=1e-6)
    assert torch.allclose(method2.net.head.weight.grad, g @ P, atol=1e-6)
    r = h0.mean(0)
    # The projected update barely moves the head along the first modality's input.
    assert float((g @ P @ r).norm()) < 0.05 * float((g @ r).norm())
    # Test-time fusion: w_m = softmax(-entropy_m) per sample.
    out = method(batch)
    uni = [out.unimodal_logits[n] for n in method.names]
    ent = torch.stack([-(torch.softmax(u, 1) * torch.log_softmax(u, 1)).sum(1) for u in uni], 1)
    w = torch.softmax(-ent, 1)
    assert torch.allclose(out.logits, w[:, :1] * uni[0] + w[:, 1:] * uni[1], atol=1e-5)
    mask = [torch.tensor([True, False]), torch.tensor([True, True])]
    w2 = entropy_fusion_weights([uni[0][:2].detach(), uni[1][:2].detach()], mask)
    assert float(w2[1, 0]) == 0.0 and float(w2[1, 1]) == 1.0


# ----- ReconBoost -----------------------------------------------------------------------------


def test_reconboost_schedule_and_reconcilement_loss(data: MultimodalData) -> None:
    method = _method("reconboost", data, memory_weight=0.0)
    stages = method.stages(TrainConfig(epochs=30))
    assert [(s.name, s.epochs) for s in stages] == [
        ("boost0_m0", 4), ("rectify0", 4), ("boost1_m1", 4), ("rectify1", 4),
        ("boost2_m0", 4), ("rectify2", 4), ("boost3_m1", 4), ("rectify3", 2)]
    assert [s.select_best for s in stages] == [False] * 7 + [True]
    ctx = _ctx(method, data, stage=2)  # boosting modality 1 with modality 0 in the ensemble
    method.added[0] = True
    method.on_stage_start(ctx.stage, ctx)
    batch = _batch(data)
    n0, n1 = method.names
    losses = method.boost_loss(batch, 1)
    with torch.no_grad():
        p_join = torch.softmax(method.net.boost_rate * method.net.learner(batch, n0), 1)
    p_join_y = p_join.gather(1, batch.target.view(-1, 1)).squeeze(1)
    logp = torch.log_softmax(method.net.learner(batch, n1), 1).gather(
        1, batch.target.view(-1, 1)).squeeze(1)
    expected = (-(5.0 - 1.0 * p_join_y) * logp / 3).mean()
    assert float(losses["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # Only the boosted learner (encoder 1 + shared head) is trained in its stage.
    method.training_step(batch, ctx)
    assert all(p.grad is None for p in method.net.encoders[n0].parameters())
    assert {id(p) for p in ctx.group_params["learner"]} == {
        id(p) for p in list(method.net.encoders[n1].parameters())
        + list(method.net.heads["shared"].parameters())}


# ----- Greedy ---------------------------------------------------------------------------------


def test_greedy_learning_speed_and_rebalancing(data: MultimodalData) -> None:
    method = _method("greedy", data, window=3, start_epoch=1)
    batch = _batch(data)
    out = method.net(batch)
    F.cross_entropy(out.logits, batch.target).backward()

    def ratio(mods: list[torch.nn.Module]) -> float:
        gn = wn = 0.0
        for p in (p for m in mods for p in m.parameters()):
            assert p.grad is not None
            gn += float(p.grad.pow(2).sum())
            wn += float(p.detach().pow(2).sum())
        return gn / wn

    method.accumulate_speed()
    for i in range(2):
        main = ratio(method.main_modules(i))
        bypass = ratio(method.bypass_modules(i))
        assert float(method.bdr()[i]) == pytest.approx(math.log10(bypass / main), rel=1e-6)
    # Before start_epoch speeds accumulate but no re-balancing starts.
    method.speed.copy_(torch.tensor([[1.0, 10.0], [1.0, 1.0]], dtype=torch.float64))
    method.update_controller(_ctx(method, data, epoch=0))
    assert not bool(method.curation)
    method.speed.copy_(torch.tensor([[1.0, 10.0], [1.0, 1.0]], dtype=torch.float64))
    ctx = _ctx(method, data, epoch=1)
    method.update_controller(ctx)
    assert bool(method.curation) and int(method.caring) == 0  # larger BDR: modality 0
    # A re-balancing step cuts branch 0's cross-modal input: no gradient to its excitation.
    method.zero_grad()
    out = method.net(batch, caring=0)
    F.cross_entropy(out.logits, batch.target).backward()
    exc0, exc1 = method.net.mmtm.excite
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in exc0.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in exc1.parameters())
    for _ in range(3):  # the window ends after Q steps
        assert bool(method.curation)
        method.update_controller(ctx)
    assert not bool(method.curation)
    util = method.conditional_utilization(data.valid)
    assert set(util) == set(method.names) and all(v <= 1.0 for v in util.values())


def test_greedy_trains_on_the_sum_of_branch_losses(data: MultimodalData) -> None:
    """The reference's ``blend_loss``: sum of each branch's CE (``fused``: CE of the mean)."""
    batch = _batch(data)
    for loss, expected in (("branches", None), ("fused", "mean")):
        method = _method("greedy", data, loss=loss)
        ctx = _ctx(method, data)
        with torch.no_grad():
            out = method.net(batch)
            want = (F.cross_entropy(out.logits, batch.target) if expected == "mean" else
                    sum(F.cross_entropy(lg, batch.target) for lg in out.unimodal_logits.values()))
        got = method.training_step(batch, ctx)["loss"]
        assert float(got) == pytest.approx(float(want), rel=1e-5)
    # The two readings differ: the mean's CE is not the sum of the branches'.
    assert float(sum(F.cross_entropy(lg, batch.target) for lg in out.unimodal_logits.values())) \
        != pytest.approx(float(F.cross_entropy(out.logits, batch.target)), rel=1e-2)
    with pytest.raises(ValueError, match="loss"):
        _method("greedy", data, loss="mean")


# ----- the public contract --------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_contract(name: str) -> None:
    report = check_method(name)
    assert report.score > report.chance + 0.15


def test_owm_update_matches_the_rls_step_when_the_denominator_is_below_one() -> None:
    # alpha + r k = 0.1 + 0.01 < 1: a clamp other than a tiny floor would change the step.
    r = torch.full((1, 4), 0.05)
    P = owm_update(torch.eye(4), r, 0.1)
    k = r.t()
    expected = torch.eye(4) - (k @ k.t()) / (0.1 + float(r @ k))
    torch.testing.assert_close(P, expected)
    assert float((P @ r.t()).norm()) < float(r.norm())  # the direction r is damped
