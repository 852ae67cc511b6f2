"""InfoBridge health: the normalised critic (the default reading) cannot be pleased by
scaling features, the margin sits on both positives and negatives (closed form), the
context T reaches the critic on every pair. (Eq. 10's sign is pinned by
``test_infobridge_wiring.py::test_alternating_steps_follow_algorithm1_and_eq10``.)"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from equimodal.data.dataset import MultimodalData
from equimodal.engine import seed_everything
from equimodal.registry import create_method, load_dataset
from test_infobridge import _batch, _ctx
from test_infobridge_wiring import MODEL, SMALL  # the same small task as the wiring tests


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _method(data: MultimodalData, **cfg: Any) -> Any:
    seed_everything(0)
    method = create_method("infobridge", data.info, MODEL, **cfg)
    method.train()
    return method


def _filled(data: MultimodalData, **cfg: Any) -> Any:
    method = _method(data, **cfg)
    method.training_step(_batch(data, 0, 32), _ctx(method, data))  # a non-empty buffer
    return method


@pytest.mark.parametrize("normalize", [True, False])
def test_default_critic_gives_no_radial_gradient(data: MultimodalData, normalize: bool) -> None:
    """Default (normalised critic): d L_NCE / d z is orthogonal to z for every sample, so
    the encoders gain nothing by growing feature norms; the literal critic does reward it."""
    method = _filled(data, normalize=normalize)
    batch = _batch(data, 32, 32)
    out = method(batch)
    feats = {n: f.detach().requires_grad_(True) for n, f in out.features.items()}
    with torch.no_grad():
        plans = method._plan(batch, out)
    nce, _ = method.nce_objective(plans, feats, detach=False)
    grads = torch.autograd.grad(nce, list(feats.values()))
    radial = torch.stack([(g * f.detach()).sum(1).abs().max() for g, f in zip(grads, feats.values(),
                                                                     strict=True)])
    scale = max(float(g.abs().max()) for g in grads)
    if normalize:
        assert float(radial.max()) < 1e-5 * max(scale, 1e-3)
    else:
        assert float(radial.max()) > 1e-3 * scale
    assert method.cfg.normalize is normalize


def test_margin_applies_to_positives_and_negatives(data: MultimodalData) -> None:
    """With a critic whose logit is 0 everywhere, h = sigmoid(gamma) for positives AND
    negatives: L_NCE = log(1/6) + 5 log(5/6) (gamma = -log 5, weight N0/N1 = 5)."""
    method = _filled(data)
    crit = method.critic("a", "b")
    with torch.no_grad():
        last = crit.net[-1]
        last.weight.zero_()
        last.bias.zero_()
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        out = method(batch)
        plan = method._plan(batch, out)[0]
        obj, mi = method._pair_terms(plan, out.features, detach=True)
    assert bool(plan.ok_b.all()) and plan.ok_a is not None and bool(plan.ok_a.all())
    assert float(obj) == pytest.approx(math.log(1 / 6) + 5 * math.log(5 / 6), abs=1e-5)
    assert float(mi) == pytest.approx(math.log(1 / 6) + math.log(5), abs=1e-5)


def test_context_reaches_the_critic_for_positives_and_negatives(data: MultimodalData) -> None:
    """Every critic call gets the anchors' contexts T (positives [n], negatives [n, N0]),
    and the objective changes when T changes (the embedding e(T) is used)."""
    method = _filled(data)
    crit = method.critic("a", "b")
    seen: list[torch.Tensor] = []
    handle = crit.register_forward_pre_hook(lambda mod, args: seen.append(args[2].clone()))
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        out = method(batch)
        plan = method._plan(batch, out)[0]
        obj, _ = method._pair_terms(plan, out.features, detach=True)
    handle.remove()
    assert len(seen) == 3  # positives, b-side negatives, a-side negatives
    assert torch.equal(seen[0], plan.t)
    for t in seen[1:]:
        assert torch.equal(t, plan.t[:, None].expand(-1, method.cfg.n_negatives))
    assert plan.t.unique().numel() > 1  # label context: several classes in the batch
    with torch.no_grad():
        crit.context.weight.add_(torch.randn_like(crit.context.weight))
        moved, _ = method._pair_terms(plan, out.features, detach=True)
    assert abs(float(moved) - float(obj)) > 1e-4
