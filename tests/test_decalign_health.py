"""DecAlign health: the readings that train (squared-cosine L_dec, cost-scaled Sinkhorn that
converges at its default settings, logged marginal error) and the cross-modal wiring."""

from __future__ import annotations

import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.losses.ot import (
    multimarginal_cost,
    multimarginal_sinkhorn,
    pairwise_prototype_costs,
    scaled_epsilon,
)
from equimodal.methods.decalign import DecAlignConfig, decoupling_loss
from equimodal.registry import create_method, load_dataset

MODEL = ModelConfig(hidden=16, layers=1, heads=2)


def _data(m: int = 2, seq_len: int = 5) -> MultimodalData:
    data: MultimodalData = load_dataset(
        "synthetic", modalities=[f"m{i}" for i in range(m)], strengths=[1.5] + [0.8] * (m - 1),
        task="classification", n_classes=3, dim=6, latent=4, noise=0.5, seq_len=seq_len,
        n_train=48, n_valid=16, n_test=16, seed=3,
    )
    return data


def _prototypes(m: int, k: int, d: int, scale: float, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(m, k, d, generator=g) * scale
    var = torch.rand(m, k, d, generator=g) + 0.1
    nus = torch.softmax(torch.randn(m, k, generator=g), 1)
    return means, var, nus


@pytest.mark.parametrize(("d", "m", "scale"), [(16, 2, 2.0), (64, 2, 1.0), (16, 3, 2.0),
                                               (64, 3, 1.5)])
def test_default_sinkhorn_converges_at_realistic_cost_scales(d: int, m: int,
                                                             scale: float) -> None:
    """Costs of 1e2-1e3 (summed Bures, d = 16 / 64): the DecAlign defaults reach a marginal
    error < 1e-3 (and the same call at the reference's absolute eps 0.1 / 50 sweeps does not,
    which is why the default is cost-scaled)."""
    data = _data(m)
    method = create_method("decalign", data.info, MODEL, n_prototypes=7)
    means, var, nus = _prototypes(m, 7, d, scale, seed=d + m)
    cost = multimarginal_cost(pairwise_prototype_costs(means, var))
    assert float(cost.mean()) > 80.0  # realistic scale, not a toy one
    eps, res = method.solve_ot(cost, nus)
    assert eps == pytest.approx(0.05 * float(cost.mean()))
    assert float(res.marginal_error) < 1e-3
    literal = multimarginal_sinkhorn(cost, nus, 0.1, 50)
    assert float(literal.marginal_error) > 1e-2
    logs = method.on_epoch_end(None)  # type: ignore[arg-type]
    assert logs["ot_marginal_error"] == pytest.approx(float(res.marginal_error))
    assert method.on_epoch_end(None) == {}  # type: ignore[arg-type]  # reset per epoch


def test_default_iteration_count_alone_converges() -> None:
    """The sweep count the defaults use, not a generous 3,000: the defaults stop on the
    tolerance well before the cap and satisfy Eq. 8 on every axis."""
    cfg = DecAlignConfig()
    means, var, nus = _prototypes(3, 6, 16, 2.0, seed=0)
    cost = multimarginal_cost(pairwise_prototype_costs(means, var))
    eps = scaled_epsilon(cost, cfg.ot_epsilon, cfg.ot_epsilon_relative)
    res = multimarginal_sinkhorn(cost, nus, eps, 50, cfg.sinkhorn_tol)
    for axis in range(3):
        other = [a for a in range(3) if a != axis]
        assert torch.allclose(res.plan.sum(other), nus[axis], atol=1e-4)
    assert float(res.plan.sum()) == pytest.approx(1.0, abs=1e-4)
    # Scaling every cost by 10 leaves the plan unchanged under the relative epsilon.
    eps10 = scaled_epsilon(10 * cost, cfg.ot_epsilon, cfg.ot_epsilon_relative)
    res10 = multimarginal_sinkhorn(10 * cost, nus, eps10, 50, cfg.sinkhorn_tol)
    assert torch.allclose(res10.plan, res.plan, atol=1e-5)
    assert scaled_epsilon(cost, 0.1, relative=False) == 0.1
    with pytest.raises(ValueError):
        scaled_epsilon(cost, 0.0)


def test_sinkhorn_tolerance_stops_early_and_zero_tol_runs_all() -> None:
    means, var, nus = _prototypes(2, 5, 8, 1.0, seed=1)
    cost = multimarginal_cost(pairwise_prototype_costs(means, var))
    eps = scaled_epsilon(cost, 0.05)
    loose = multimarginal_sinkhorn(cost, nus, eps, 500, tol=1e-2)
    tight = multimarginal_sinkhorn(cost, nus, eps, 500, tol=1e-9)
    assert float(tight.marginal_error) < 1e-6
    assert float(loose.marginal_error) < 1e-2
    assert float(loose.marginal_error) > float(tight.marginal_error)


def test_signed_cosine_is_minimised_by_anti_alignment_squared_is_not() -> None:
    """Eq. 1 as printed rewards common = -unique (its minimum, -M); the default squared
    cosine gives that configuration its maximum, +M, and orthogonal parts 0."""
    g = torch.Generator().manual_seed(0)
    uni = torch.randn(2, 4, 3, 5, generator=g)
    mask, present = torch.ones(2, 4, 3, dtype=torch.bool), torch.ones(2, 4)
    sim = DecAlignConfig().dec_similarity
    assert float(decoupling_loss(uni, -uni, mask, present, "cosine")) == pytest.approx(-2.0)
    assert float(decoupling_loss(uni, -uni, mask, present, sim)) == pytest.approx(2.0)
    ortho, other = torch.zeros(2, 4, 3, 10), torch.zeros(2, 4, 3, 10)
    ortho[..., :5], other[..., 5:] = uni, uni
    assert float(decoupling_loss(ortho, other, mask, present, sim)) == pytest.approx(0.0)
    # Gradient descent on the default from a random start approaches orthogonality, not -1.
    com = torch.randn(2, 4, 3, 5, generator=g).requires_grad_(True)
    opt = torch.optim.SGD([com], lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        loss = decoupling_loss(uni, com, mask, present, sim)
        loss.backward()
        opt.step()
    cos = decoupling_loss(uni, com.detach(), mask, present, "cosine")
    assert float(loss.detach()) < 0.05 and abs(float(cos)) < 0.3


def test_cross_modal_transformer_attends_to_the_other_modalities_only() -> None:
    """Query = own unique features, keys/values = the OTHER modalities' (Sec. 3.2): changing
    modality 0's input leaves the keys of its own transformer unchanged and changes those of
    every other modality's transformer."""
    data = _data(3)
    torch.manual_seed(0)
    method = create_method("decalign", data.info, MODEL)
    method.eval()
    net = method.model
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def fn(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[name] = args[1].detach().clone()
        return fn

    for n in net.names:
        net.cross[n].register_forward_pre_hook(hook(n))
    batch = data.train.batch(torch.arange(8))
    method(batch)
    before = dict(seen)
    first = net.names[0]
    inputs = dict(batch.inputs)
    inputs[first] = inputs[first] + 3.0 * torch.randn_like(inputs[first])
    method(batch.__class__(**{**batch.__dict__, "inputs": inputs}))
    t = before[first].shape[1] // (len(net.names) - 1)
    assert before[first].shape[1] == (len(net.names) - 1) * t
    assert torch.equal(seen[first], before[first])
    for n in net.names[1:]:
        assert not torch.allclose(seen[n], before[n])
