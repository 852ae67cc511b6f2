"""Reference mismatches of issue 18: MLA's ``owm_add`` divides element-wise by the H x H
matrix ``alpha + k r`` (BalanceBenchmark ``GSPlugin.before_update``), OGM-GE on an exact tie
takes the reference's ``else`` branch, PMR's ``proto_fraction`` counts batches as
``len(loader) // 10``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equimodal.data.dataset import MultimodalData
from equimodal.methods.mla import owm_update_reference
from equimodal.methods.pmr import proto_batch_count
from test_gradient_modulation import _batch, _ctx, _method


@pytest.fixture(scope="module")
def data() -> MultimodalData:
    from equimodal.registry import load_dataset

    d: MultimodalData = load_dataset(
        "synthetic", n_classes=3, dim=8, latent=4, noise=0.5, strengths=[1.5, 0.5],
        n_train=96, n_valid=32, n_test=32, seed=0)
    return d


def _reference_owm(p: np.ndarray, x: np.ndarray, alpha: float, grad: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The reference code written out with explicit loops (float64)."""
    r = x.mean(0)  # torch.mean(before_batch_input, 0, True)
    h = p.shape[0]
    k = [sum(p[i, j] * r[j] for j in range(h)) for i in range(h)]  # torch.mm(Pl, r^T)
    new = np.empty_like(p)
    for i in range(h):
        for j in range(h):
            new[i, j] = p[i, j] - k[i] * k[j] / (alpha + k[i] * r[j])  # mm(k, r) is H x H
    new = new / math.sqrt(float((new ** 2).sum()))
    return new, grad + grad @ new.T


def test_mla_owm_add_matches_the_reference_formula(data: MultimodalData) -> None:
    method = _method("mla", data, head_projection="owm_add")
    h = method.net.head.in_features
    g = torch.Generator().manual_seed(0)
    p0 = torch.eye(h, dtype=torch.float64) + 0.1 * torch.randn(h, h, generator=g,
                                                               dtype=torch.float64)
    x = torch.rand(12, h, generator=g, dtype=torch.float64)  # post-ReLU-like inputs
    grad0 = torch.randn(method.net.head.weight.shape, generator=g, dtype=torch.float64)
    alpha = 0.1 ** 1.25
    want_p, want_grad = _reference_owm(p0.numpy(), x.numpy(), alpha, grad0.numpy())
    # The pure function against the loop (before normalisation).
    raw = owm_update_reference(p0, x.mean(0), alpha)
    assert np.allclose(raw.numpy() / np.linalg.norm(raw.numpy()), want_p, atol=1e-10)
    # The method's step, after a first turn (the reference skips the very first turn).
    method.double()
    method.projector.copy_(p0)
    method.n_turns.fill_(1)
    method.net.head.weight.grad = grad0.clone()
    method.modify_head_grad(x, alpha)
    assert np.allclose(method.projector.numpy(), want_p, atol=1e-10)
    assert np.allclose(method.net.head.weight.grad.numpy(), want_grad, atol=1e-10)
    # The scalar RLS denominator (the earlier reading) gives a different projector.
    r = x.mean(0, keepdim=True)
    k = p0 @ r.t()
    scalar = p0 - (k @ k.t()) / (alpha + r @ k)
    scalar = scalar / torch.linalg.matrix_norm(scalar)
    assert not np.allclose(scalar.numpy(), want_p, atol=1e-4)


def test_mla_owm_add_skips_the_first_turn(data: MultimodalData) -> None:
    method = _method("mla", data, head_projection="owm_add")
    grad = torch.randn(method.net.head.weight.shape)
    method.net.head.weight.grad = grad.clone()
    method.modify_head_grad(torch.rand(5, method.net.head.in_features), 0.1)
    assert torch.equal(method.net.head.weight.grad, grad)
    assert torch.equal(method.projector, torch.eye(method.projector.shape[0]))
    assert int(method.n_turns) == 1


def _scores_tied(method: object, data: MultimodalData, tie: bool) -> torch.Tensor:
    batch = _batch(data)
    out = method(batch)  # type: ignore[operator]
    names = list(out.unimodal_logits)
    base = torch.randn(batch.size, data.info.num_outputs, generator=torch.Generator()
                       .manual_seed(1))
    out.unimodal_logits[names[0]] = base.clone()
    out.unimodal_logits[names[1]] = base.clone() if tie else 3 * base
    return method.update_coefficients(batch, out)  # type: ignore[attr-defined]


@pytest.mark.parametrize("alpha", [0.8, 0.3])
def test_ogm_tie_follows_the_reference_else_branch(data: MultimodalData, alpha: float) -> None:
    """Equal scores: ratio_v = 1 is not > 1, so the reference modulates its audio (the first
    modality) with 1 - tanh(alpha * relu(1)); the other keeps 1."""
    method = _method("ogm_ge", data, alpha=alpha)
    coeffs = _scores_tied(method, data, tie=True)
    assert float(method.ratios[0]) == pytest.approx(1.0)
    assert float(coeffs[0]) == pytest.approx(1 - math.tanh(alpha))
    assert float(coeffs[1]) == 1.0
    assert torch.equal(method.coeffs, coeffs)
    literal = _method("ogm_ge", data, alpha=alpha, reference_tie=False)
    assert torch.equal(_scores_tied(literal, data, tie=True), torch.ones(2))
    # rho - 1 option: relu(0) = 0, so the tie leaves every coefficient at 1.
    minus = _method("ogm_ge", data, alpha=alpha, ratio_minus_one=True)
    assert torch.equal(_scores_tied(minus, data, tie=True), torch.ones(2))


def test_ogm_no_tie_is_unchanged(data: MultimodalData) -> None:
    method = _method("ogm_ge", data, alpha=0.8)
    coeffs = _scores_tied(method, data, tie=False)
    dom = int(method.ratios.argmax())
    assert float(method.ratios[dom]) > 1.0
    assert float(coeffs[dom]) == pytest.approx(1 - math.tanh(0.8 * float(method.ratios[dom])))
    assert float(coeffs[1 - dom]) == 1.0


@pytest.mark.parametrize(("n", "bs", "frac", "want"), [
    (1000, 64, 0.1, 1),   # ceil(1000/64) = 16 batches -> 16 // 10 = 1
    (2000, 64, 0.1, 3),   # 32 -> 3 (the earlier ceil rule took 4)
    (640, 64, 0.1, 1),    # 10 -> 1
    (500, 64, 0.1, 1),    # 8 -> 0 -> at least one
    (2000, 64, 1.0, 32),  # the whole split
    (6698, 64, 0.1, 10),  # CREMA-D train split: 105 batches -> 10
])
def test_pmr_proto_batches_are_len_loader_floor_div_10(n: int, bs: int, frac: float,
                                                       want: int) -> None:
    assert proto_batch_count(n, bs, frac) == want


def test_pmr_epoch_start_uses_that_many_batches(data: MultimodalData) -> None:
    method = _method("pmr", data, proto_fraction=0.5)
    ctx = _ctx(method, data)  # 96 samples, batch 32: 3 batches -> floor(1.5) = 1
    seen: list[int] = []
    method.compute_prototypes = lambda batches: seen.append(len(batches))
    method.on_epoch_start(ctx)
    assert seen == [1]


def test_pmr_valid_source_takes_prototypes_from_the_validation_split(
        data: MultimodalData) -> None:
    """``proto_source="valid"`` (the reference's CG-MNIST script: held-out prototypes) uses
    the validation split's class means, and names the missing split when there is none."""
    method = _method("pmr", data, proto_source="valid", proto_fraction=1.0)
    ctx = _ctx(method, data)
    with pytest.raises(ValueError, match="proto_source='valid' needs a validation split"):
        method.on_epoch_start(ctx)
    ctx.valid_split = data.valid
    method.on_epoch_start(ctx)
    with torch.no_grad():
        method.eval()
        feats = method.net.encode(data.valid.batch(torch.arange(len(data.valid))))
        method.train()
    y = data.valid.target
    for i, n in enumerate(method.names):
        means = torch.stack([feats[n][y == k].mean(0) for k in range(int(y.max()) + 1)])
        assert torch.allclose(method.prototypes(i), means, atol=1e-5)
    # The training split's means are different: the source really changed.
    train_means = torch.stack([
        method.net.encode(data.train.batch(torch.arange(len(data.train))))[method.names[0]][
            data.train.target == k].mean(0) for k in range(int(y.max()) + 1)])
    assert not torch.allclose(method.prototypes(0), train_means.detach(), atol=1e-3)
    with pytest.raises(ValueError, match="proto_source"):
        _method("pmr", data, proto_source="test")
