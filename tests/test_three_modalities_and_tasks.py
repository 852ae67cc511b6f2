"""Imbalance baselines (issue 8) beyond the default two-modality classification setting.

Every baseline claims ``min_modalities=2`` with no upper bound, so each one runs the public
contract on three modalities; the baselines that claim regression / multi-label tasks run it
on those tasks. The defining mechanisms whose three-modality rule differs from the
two-modality one (OGM-GE's ratio against the weakest score, PMR's per-modality rebalancing
weights, AGM's ``M/(M-1)`` ratio and Shapley split, Greedy's choice of the branch to
re-balance, MMPareto's per-encoder combination) are checked against hand computations.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.losses.modulation import agm_ratios, scale_grad
from equimodal.losses.prototypes import prototype_cross_entropy, prototype_entropy
from equimodal.methods.check import check_method
from equimodal.methods.mmpareto import combine_pair
from equimodal.registry import METHODS, load_dataset
from test_gradient_modulation import _ctx, _grads, _method  # one helper for both files

BASELINES = ["ogm_ge", "agm", "pmr", "mmpareto", "mla", "reconboost", "relearning",
             "gblending", "cml", "lfm", "inforeg", "greedy", "opm", "valuation", "crmt"]
MODEL = ModelConfig(hidden=16, layers=1)




@pytest.fixture(scope="module")
def data3() -> MultimodalData:
    """Three vector modalities of decreasing strength, 3 classes."""
    d: MultimodalData = load_dataset(
        "synthetic", modalities=["m0", "m1", "m2"], strengths=[1.5, 0.8, 0.3], n_classes=3,
        dim=8, latent=4, noise=0.5, n_train=96, n_valid=32, n_test=32, seed=0)
    return d



# ----- contract beyond the default setting ----------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_contract_three_modalities(name: str) -> None:
    assert METHODS.get(name).capabilities.max_modalities is None
    report = check_method(name, epochs=4, n_modalities=3)
    assert report.score > report.chance + 0.15


@pytest.mark.parametrize("name", [n for n in BASELINES
                                  if len(METHODS.get(n).capabilities.tasks) > 1])
@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_contract_other_tasks(name: str, task: str) -> None:
    assert task in METHODS.get(name).capabilities.tasks
    report = check_method(name, task=task, epochs=4)
    assert report.score > report.chance


# ----- three-modality mechanisms ---------------------------------------------------------------


def test_ogm_ge_three_modalities_modulates_all_but_the_weakest(data3: MultimodalData) -> None:
    """Each encoder m is scaled by 1 - tanh(alpha * s_m / min_k s_k), the weakest by 1."""
    method = _method("ogm_ge", data3, alpha=0.3, ge=False)
    batch = data3.train.batch(torch.arange(32))
    out = method(batch)
    F.cross_entropy(out.logits, batch.target).backward()
    plain = {n: _grads(method.net.encoders[n]) for n in method.names}
    method.on_after_backward(batch, out, _ctx(method, data3))
    s = torch.stack([torch.softmax(out.unimodal_logits[n], 1).gather(
        1, batch.target.view(-1, 1)).mean() for n in method.names]).detach()
    weakest = int(s.argmin())
    for i, n in enumerate(method.names):
        k = 1.0 if i == weakest else 1 - math.tanh(0.3 * float(s[i] / s.min()))
        assert float(method.coeffs[i]) == pytest.approx(k, rel=1e-5)
        for g0, g1 in zip(plain[n], _grads(method.net.encoders[n]), strict=True):
            assert torch.allclose(g1, g0 * k, atol=1e-7)
    assert sum(float(c) < 1.0 for c in method.coeffs) == 2  # two modalities are ahead


def test_pmr_three_modalities_weights_every_lagging_modality(data3: MultimodalData) -> None:
    method = _method("pmr", data3, alpha=1.0, mu=0.01)
    method.compute_prototypes([data3.train.batch(torch.arange(i, i + 32)) for i in (0, 32, 64)])
    batch = data3.train.batch(torch.arange(32))
    out = method(batch)
    loss = method.compute_loss(batch, out, _ctx(method, data3))["loss"].detach()
    scores = method.imbalance(batch, out.features)
    best, dom = float(scores.max()), int(scores.argmax())
    expected = F.cross_entropy(out.logits, batch.target)
    n_weighted = 0
    for i, n in enumerate(method.names):
        beta = min(max(best / float(scores[i]) - 1.0, 0.0), 1.0)
        n_weighted += beta > 0
        expected = expected + beta * prototype_cross_entropy(
            out.features[n], method.prototypes(i), batch.target)
    per = 0.01 * min(max(best / float(scores.min()) - 1.0, 0.0), 1.0)
    expected = expected - per * prototype_entropy(out.features[method.names[dom]],
                                                  method.prototypes(dom))
    assert n_weighted == 2  # both modalities behind the best one get their PCE term
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_agm_three_modalities_ratios_and_shapley_gradients(data3: MultimodalData) -> None:
    s = torch.tensor([0.4, 1.0, 1.6])
    # r_m = exp(M/(M-1) (mean s - s_m)) with M = 3.
    assert torch.allclose(agm_ratios(s), torch.exp(1.5 * (1.0 - s)))
    method = _method("agm", data3, ModelConfig(hidden=16, layers=1, fusion="sum"))
    batch = data3.train.batch(torch.arange(32))
    feats = method.net.encode(batch)
    phi = method.shapley(batch, feats)
    assert len(phi) == 3
    assert torch.allclose(torch.stack(phi).sum(0), method.net.fuse(batch, feats).logits, atol=1e-5)
    F.cross_entropy(torch.stack(phi).sum(0), batch.target).backward()
    plain = {n: _grads(method.net.encoders[n]) for n in method.names}
    method.zero_grad()
    feats = method.net.encode(batch)
    phi = method.shapley(batch, feats)
    coeffs = [0.5, 1.0, 3.0]
    scaled = torch.stack([scale_grad(p, c) for p, c in zip(phi, coeffs, strict=True)]).sum(0)
    F.cross_entropy(scaled, batch.target).backward()
    for n, c in zip(method.names, coeffs, strict=True):  # additive fusion: exact scaling
        for g0, g1 in zip(plain[n], _grads(method.net.encoders[n]), strict=True):
            assert torch.allclose(g1, c * g0, atol=1e-6)


def test_greedy_three_modalities_rebalances_the_largest_bdr(data3: MultimodalData) -> None:
    method = _method("greedy", data3, threshold=0.1, start_epoch=0)
    ctx = _ctx(method, data3, epoch=0)
    method.accumulate_speed = lambda: None  # keep the hand-set speeds
    # BDR = log10(bypass / main) = [0, 1, 0.5]: modality 1 leans most on the others.
    method.speed.copy_(torch.tensor([[1.0, 1.0], [1.0, 10.0], [1.0, 10 ** 0.5]],
                                    dtype=torch.float64))
    method.update_controller(ctx)
    assert bool(method.curation) and int(method.caring) == 1
    # A spread below the threshold triggers nothing.
    method.curation.fill_(False)
    method.speed.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.1], [1.0, 1.05]], dtype=torch.float64))
    method.update_controller(ctx)
    assert not bool(method.curation)
    # The re-balancing step cuts exactly branch 1's cross-modal input.
    batch = data3.train.batch(torch.arange(32))
    F.cross_entropy(method.net(batch, caring=1).logits, batch.target).backward()
    excite = method.net.mmtm.excite
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in excite[1].parameters())
    for k in (0, 2):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in excite[k].parameters())


def test_mmpareto_three_modalities_combines_each_encoder(data3: MultimodalData) -> None:
    method = _method("mmpareto", data3)
    batch = data3.train.batch(torch.arange(32))
    ctx = _ctx(method, data3)
    ctx.step = lambda group=None: None  # type: ignore[method-assign]  # keep the grads
    method.training_step(batch, ctx)
    out = method(batch)
    loss_mm = F.cross_entropy(out.logits, batch.target)
    assert set(method.last_weights) == set(method.names)
    for n in method.names:
        params = list(method.net.encoders[n].parameters())
        g_mm = list(torch.autograd.grad(loss_mm, params, retain_graph=True))
        g_m = list(torch.autograd.grad(
            F.cross_entropy(out.unimodal_logits[n], batch.target), params, retain_graph=True))
        expected, _, _ = combine_pair(g_mm, g_m, gamma=1.5)
        for p, g in zip(params, expected, strict=True):
            assert torch.allclose(p.grad, g, atol=1e-6)
