"""Tests that kill mutmut survivors in ``losses/energy.py`` and ``losses/distill.py``
(issue 18; docs/mutation.md). Each test checks a closed form or a direction on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Laplace

from equimodal.losses.calibration import cml_rank_penalty, max_confidence, removal_masks
from equimodal.losses.consistency import js_divergence, predictive_entropy
from equimodal.losses.distill import (
    FAMILIES,
    categorical_kl,
    categorical_variance,
    fit_temperature,
    regression_entropy,
    regression_scale_nll,
    regression_variance,
    trust_weights,
    weighted_distillation,
)
from equimodal.losses.energy import (
    categorical_entropy,
    energy_gap_loss,
    energy_gradient_penalty,
    masked_mean,
    modality_energy,
    squared_norm,
)
from equimodal.losses.modulation import agm_coefficients, agm_ratios, opm_drop_probabilities
from equimodal.losses.robust import certified_bound, own_normalize
from equimodal.losses.supcon import regression_bins, supcon_loss
from equimodal.losses.task import task_loss

# ----- energy.py --------------------------------------------------------------------------------


def test_squared_norm_flattens_trailing_dims_and_reduces_by_sum_or_mean() -> None:
    z = torch.arange(24.0).reshape(2, 3, 4)
    flat = z.reshape(2, 12)
    assert torch.equal(squared_norm(z), (flat**2).sum(1))  # default is the paper's sum
    assert torch.allclose(squared_norm(z, "mean"), (flat**2).sum(1) / 12)
    with pytest.raises(ValueError, match="reduction"):
        squared_norm(z, "max")


def test_categorical_entropy_matches_torch_at_a_temperature() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    want = Categorical(logits=logits / 2.5).entropy()
    assert torch.allclose(categorical_entropy(logits, temperature=2.5), want)
    assert torch.allclose(categorical_entropy(logits), Categorical(logits=logits).entropy())
    assert bool((categorical_entropy(logits) > 0).all())


def test_modality_energy_defaults_and_single_terms() -> None:
    z = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # ||z||^2 = 5, 9
    loss = torch.tensor([0.5, 2.0])
    unc = torch.tensor([0.25, 4.0])
    assert torch.allclose(modality_energy(z, loss, unc), torch.tensor([5.75, 15.0]))
    assert torch.allclose(modality_energy(z, None, None), torch.tensor([5.0, 9.0]))
    assert torch.allclose(modality_energy(None, loss, None, beta=3.0), 3.0 * loss)
    assert torch.allclose(modality_energy(None, None, unc, gamma=0.5), 0.5 * unc)
    assert torch.allclose(modality_energy(None, loss, unc, beta=2.0, gamma=3.0), 2 * loss + 3 * unc)
    with pytest.raises(ValueError, match="^modality_energy needs at least one term$"):
        modality_energy(None, None, None)


def test_masked_mean_over_mask_and_zero_for_an_empty_mask() -> None:
    x = torch.tensor([1.0, 2.0, 6.0])
    assert float(masked_mean(x)) == pytest.approx(3.0)
    assert float(masked_mean(x, torch.tensor([True, False, True]))) == pytest.approx(3.5)
    assert float(masked_mean(x, torch.tensor([False, False, True]))) == pytest.approx(6.0)
    assert float(masked_mean(x, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_energy_gap_two_and_one_modalities() -> None:
    assert float(energy_gap_loss(torch.tensor([1.0, 4.0]))) == pytest.approx(9.0)
    assert float(energy_gap_loss(torch.tensor([3.0, 1.0, 1.0]))) == pytest.approx(8.0)
    assert float(energy_gap_loss(torch.tensor([3.0]))) == 0.0
    with pytest.raises(ValueError, match=r"\[M\]"):
        energy_gap_loss(torch.ones(2, 2))


def test_gradient_penalty_tensor_input_defaults_to_a_differentiable_result() -> None:
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    e = (z**2).sum(1) * 1.5  # de/dz = 3 z, ||.||^2 = 9 ||z||^2
    (g,) = energy_gradient_penalty(e, z)
    assert torch.allclose(g, 9.0 * (z.detach() ** 2).sum(1))
    assert g.requires_grad  # create_graph defaults to True (Eq. 40's double backprop)
    (dg,) = torch.autograd.grad(g.sum(), z)
    assert torch.allclose(dg, 18.0 * z.detach())


def test_gradient_penalty_per_modality_flattens_and_gives_zero_for_unused() -> None:
    z1 = torch.arange(24.0).reshape(2, 3, 4).requires_grad_(True)
    z2 = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    z3 = torch.ones(2, 4, requires_grad=True)
    e1 = (z1**2).reshape(2, -1).sum(1)  # grad 2 z1
    e2 = (z2**3).sum(1)  # grad 3 z2^2
    e3 = torch.zeros(2, requires_grad=True)  # does not depend on z3
    g1, g2, g3 = energy_gradient_penalty([e1, e2, e3], [z1, z2, z3], create_graph=False)
    assert torch.allclose(g1, 4.0 * (z1.detach().reshape(2, -1) ** 2).sum(1))
    assert torch.allclose(g2, 9.0 * (z2.detach() ** 4).sum(1))
    assert torch.equal(g3, torch.zeros(2))
    assert not g1.requires_grad
    with pytest.raises(ValueError, match="energies for"):
        energy_gradient_penalty([e1, e2], [z1])


def test_entropy_is_log_c_at_uniform() -> None:
    assert torch.allclose(categorical_entropy(torch.zeros(1, 4)), torch.tensor([math.log(4.0)]))


# ----- distill.py -------------------------------------------------------------------------------


def test_categorical_variance_at_a_temperature() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits / 3.0, -1)
    assert torch.allclose(categorical_variance(logits, 3.0), (p * (1 - p)).sum(-1))
    assert torch.allclose(categorical_variance(logits)[1], torch.tensor(2.0 / 3.0))


def test_regression_helpers_default_to_laplace_and_reject_unknown_families() -> None:
    log_s = torch.tensor([0.0, math.log(2.0)])
    lap = Laplace(torch.zeros(2), log_s.exp())
    assert torch.allclose(regression_variance(log_s), lap.variance)
    assert torch.allclose(regression_entropy(log_s), lap.entropy())
    mean, y = torch.tensor([0.5, -1.0]), torch.tensor([1.5, 1.0])
    assert torch.allclose(regression_scale_nll(mean, log_s, y), -lap.log_prob(y - mean))
    for fn in (regression_variance, regression_entropy):
        with pytest.raises(ValueError, match="family"):
            fn(log_s, "cauchy")
    with pytest.raises(ValueError, match="family"):
        regression_scale_nll(mean, log_s, y, "cauchy")


def test_scale_nll_does_not_train_the_mean() -> None:
    mean = torch.tensor([0.5, -1.0], requires_grad=True)
    log_s = torch.tensor([0.1, -0.2], requires_grad=True)
    y = torch.tensor([1.5, 1.0])
    for family in FAMILIES:
        regression_scale_nll(mean, log_s, y, family).sum().backward()
        assert mean.grad is None
        assert log_s.grad is not None and bool((log_s.grad != 0).all())
        log_s.grad = None


def test_fit_temperature_grid_ends_and_spacing() -> None:
    y = torch.tensor([0, 1])
    right = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert fit_temperature(right, y) == pytest.approx(0.02)
    # Always wrong: the flattest softmax (largest temperature) is best.
    assert fit_temperature(-right, y) == pytest.approx(50.0)
    # An interior optimum lands on the 121-point log grid between 0.02 and 50.
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    t = torch.tensor([0, 1, 1])
    s = fit_temperature(z, t)
    grid = torch.logspace(math.log10(0.02), math.log10(50.0), 121)
    nll = torch.stack([torch.nn.functional.cross_entropy(z / g, t) for g in grid])
    assert s == pytest.approx(float(grid[int(nll.argmin())]), rel=1e-6)
    assert 0.02 < s < 50.0


def test_categorical_kl_at_a_temperature() -> None:
    p, q = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    ps, qs = (p / 2.0).softmax(-1), (q / 2.0).softmax(-1)
    want = (ps * (ps.log() - qs.log())).sum(-1)
    assert torch.allclose(categorical_kl(p, q, 2.0), want)
    assert float(categorical_kl(p, p)[0]) == pytest.approx(0.0, abs=1e-7)


def test_trust_weights_default_offset_floor_and_absent_rows() -> None:
    sigma = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.2, 0.3]])
    spread = torch.tensor([[1.0, 3.0], [0.0, 1.0], [1.0, 1.0]])
    # Default offset 0, floor 1e-6: rho = 1 / max(log(1 + spread), 1e-6).
    rho = 1.0 / torch.log1p(spread).clamp_min(1e-6)
    raw = torch.exp(-sigma) * rho
    assert torch.allclose(trust_weights(sigma, spread), raw / raw.sum(1, keepdim=True))
    # A zero spread is floored at 1e-6, not at a larger value: its weight is ~1.
    assert float(trust_weights(sigma, spread)[1, 0]) > 0.999
    present = torch.tensor([[True, True], [False, True], [False, False]])
    w = trust_weights(sigma, spread, present)
    assert torch.allclose(w[0], raw[0] / raw[0].sum())
    assert torch.equal(w[1], torch.tensor([0.0, 1.0]))
    assert torch.equal(w[2], torch.zeros(2))
    # Negative spreads count as zero.
    raw_off = torch.exp(-sigma) / (torch.log1p(spread) + 0.1)
    off = trust_weights(sigma, spread, offset=0.1)
    assert torch.allclose(off, raw_off / raw_off.sum(1, keepdim=True))
    floored = trust_weights(sigma, -spread.abs() - 1.0)
    assert torch.allclose(floored, torch.softmax(-sigma, 1))


def test_weighted_distillation_closed_form_with_constant_weights() -> None:
    div = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]], requires_grad=True)
    loss = weighted_distillation(div, w)
    assert float(loss.detach()) == pytest.approx(((0.25 + 1.5) + (1.5 + 2.5)) / 2)
    loss.backward()
    assert w.grad is None
    assert div.grad is not None and torch.allclose(div.grad, w.detach() / 2)


# ----- consistency.py, supcon.py, task.py -------------------------------------------------------


def test_js_divergence_closed_form_reductions_mask_and_empty_rows() -> None:
    p = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [5.0, -5.0, 0.0], [1.0, 3.0, 0.0]])
    ps, qs = p.softmax(-1), q.softmax(-1)
    h = 0.5 * (ps + qs)
    want = 0.5 * (ps * (ps / h).log()).sum(-1) + 0.5 * (qs * (qs / h).log()).sum(-1)
    assert torch.allclose(js_divergence(p, q, reduction="none"), want, atol=1e-6)
    assert float(js_divergence(p, q)) == pytest.approx(float(want.mean()), rel=1e-5)
    assert float(js_divergence(p, q, reduction="sum")) == pytest.approx(float(want.sum()), rel=1e-5)
    mask = torch.tensor([True, False, True])
    assert float(js_divergence(p, q, mask)) == pytest.approx(float(want[mask].mean()), rel=1e-5)
    pg = p.clone().requires_grad_(True)
    empty = js_divergence(pg, q, torch.zeros(3, dtype=torch.bool))
    assert float(empty.detach()) == 0.0
    empty.backward()
    assert pg.grad is not None and torch.equal(pg.grad, torch.zeros_like(p))
    with pytest.raises(ValueError, match="reduction must be"):
        js_divergence(p, q, reduction="max")


def test_predictive_entropy_closed_form() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(predictive_entropy(logits), Categorical(logits=logits).entropy())


def test_regression_bins_defaults_and_range() -> None:
    t = torch.tensor([-5.0, -3.0, -0.4, 0.0, 0.6, 2.6, 3.0, 9.0])
    assert regression_bins(t).tolist() == [0, 0, 3, 3, 4, 6, 6, 6]
    assert regression_bins(torch.tensor([0.0, 0.49, 1.0]), 3, 0.0, 1.0).tolist() == [0, 1, 2]
    assert regression_bins(torch.tensor([-1.0, 0.5]), 2, -1.0, 1.0).tolist() == [0, 1]
    with pytest.raises(ValueError, match="n_bins"):
        regression_bins(t, 1)


def _supcon_reference(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    b, terms = z.shape[0], []
    for i in range(b):
        others = [a for a in range(b) if a != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in others]), 0)
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            terms.append(-torch.stack([z[i] @ z[p] / tau - denom for p in pos]).mean())
    return torch.stack(terms).mean()


def test_supcon_loss_against_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # sample 5 has no positive
    zn = torch.nn.functional.normalize(f, dim=-1)
    assert float(supcon_loss(f, labels)) == pytest.approx(
        float(_supcon_reference(zn, labels, 0.1)), rel=1e-5)
    assert float(supcon_loss(f, labels, 0.5, normalize=False)) == pytest.approx(
        float(_supcon_reference(f, labels, 0.5)), rel=1e-5)
    fg = f.clone().requires_grad_(True)
    none = supcon_loss(fg, torch.arange(6))
    assert float(none.detach()) == 0.0
    none.backward()
    assert fg.grad is not None and torch.equal(fg.grad, torch.zeros_like(f))


def test_task_loss_kinds_and_reductions() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(task_loss(logits, y, "classification", reduction="none"), ce)
    assert float(task_loss(logits, y, "classification")) == pytest.approx(float(ce.mean()))
    pred = torch.tensor([[0.5], [2.0], [-1.0]])
    t = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(task_loss(pred, t, "regression")) == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    mse = task_loss(pred, t, "regression", "mse", "none")
    assert mse.dtype == torch.float32 and mse.tolist() == [0.25, 1.0, 4.0]
    assert float(task_loss(pred, t, "regression", reduction="sum")) == pytest.approx(3.5)
    ml = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    multi = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    per = torch.nn.functional.binary_cross_entropy_with_logits(ml, multi.float(), reduction="none")
    got = task_loss(ml, multi, "multilabel", reduction="none")
    assert got.dtype == torch.float32 and torch.allclose(got, per.mean(1))
    assert float(task_loss(ml, multi, "multilabel")) == pytest.approx(float(per.mean()))
    assert float(task_loss(ml, multi, "multilabel", reduction="sum")) == pytest.approx(
        float(per.sum()))


# ----- calibration.py, robust.py, modulation.py (baseline losses) -------------------------------


def test_max_confidence_is_the_row_softmax_maximum() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    conf, pred = max_confidence(logits)
    assert pred.tolist() == [0, 1]
    assert torch.allclose(conf, logits.softmax(1).max(1).values)


def test_cml_penalty_both_wrong_term_and_reductions() -> None:
    y = torch.tensor([0, 0, 0])
    wrong = torch.tensor([1, 1, 1])
    more, less = torch.tensor([0.5, 0.6, 0.2]), torch.tensor([0.7, 0.4, 0.35])
    per = cml_rank_penalty(more, wrong, less, wrong, y, epsilon=0.1, reduction="none")
    assert torch.allclose(per, torch.tensor([0.1, 0.0, 0.05]))
    total = cml_rank_penalty(more, wrong, less, wrong, y, epsilon=0.1, reduction="mean")
    assert float(total) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="reduction must be"):
        cml_rank_penalty(more, wrong, less, wrong, y, reduction="max")


def test_removal_masks_use_the_given_generator_or_the_global_rng() -> None:
    present = {"a": torch.ones(6, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool),
               "c": torch.ones(6, dtype=torch.bool)}
    torch.manual_seed(0)
    first = removal_masks(present, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    second = removal_masks(present, torch.Generator().manual_seed(5))
    for s1, s2 in zip(first, second, strict=True):
        assert all(torch.equal(s1[n], s2[n]) for n in present)
    torch.manual_seed(3)
    g1 = removal_masks(present)
    torch.manual_seed(3)
    g2 = removal_masks(present)
    assert all(torch.equal(g1[1][n], g2[1][n]) for n in present)
    assert [int(sum(s[n] for n in present).min()) for s in g1] == [3, 2, 1]


def test_own_normalize_whitens_with_eps_added_to_small_eigenvalues() -> None:
    w = 0.01 * torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 1.0, 0.0, 0.0]], dtype=torch.float64)
    zc = w - w.mean(1, keepdim=True)
    evals, evecs = torch.linalg.eigh(zc @ zc.t())
    want = evecs @ torch.diag((evals + 1e-6).rsqrt()) @ evecs.t() @ zc
    assert torch.allclose(own_normalize(w), want, rtol=1e-10, atol=1e-12)


def _certified_reference(h: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                         lip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fused = (scale[:, None, :] * h).sum(0) + bias
    other = fused.scatter(1, y[:, None], float("-inf")).argmax(1)
    out = []
    for i in range(h.shape[1]):
        t, j = int(y[i]), int(other[i])
        num = sum(scale[m, t] * h[m, i, t] - scale[m, j] * h[m, i, j] for m in range(h.shape[0]))
        den = torch.sqrt(sum((scale[m, t].abs() * lip[m, t] + scale[m, j].abs() * lip[m, j]) ** 2
                             for m in range(h.shape[0])))
        out.append((num + bias[t] - bias[j]) / den)
    return torch.stack(out)


@pytest.mark.parametrize("lip_scale", [1.0, 0.01])
def test_certified_bound_with_the_fused_runner_up(lip_scale: float) -> None:
    h = torch.tensor([[[2.0, 1.0, 1.0], [0.5, 1.0, 1.0]],
                      [[1.0, 1.0, 1.0], [3.0, 1.0, 2.0]]])  # [M=2, B=2, C=3]
    scale = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 3.0]])
    bias = torch.tensor([0.0, 1.0, -1.0])  # decides sample 0's runner-up (class 1, not 2)
    lip = lip_scale * torch.tensor([[1.0, 2.0, 1.0], [0.5, 1.0, 1.0]])
    y = torch.tensor([0, 0])
    want = _certified_reference(h, scale, bias, lip, y)
    assert torch.allclose(certified_bound(h, scale, bias, lip, y), want)


def test_opm_probabilities_are_clipped_at_one_and_agm_uses_m_over_m_minus_1() -> None:
    q = opm_drop_probabilities(torch.tensor([0.5, 1.5, 50.0]), q_base=0.9, lam=2.0)
    assert q[0] == 0 and float(q[2]) == 1.0
    assert float(q[1]) == 1.0  # 0.9 (1 + 2 tanh 0.5) = 1.73 before clipping
    low = opm_drop_probabilities(torch.tensor([1.5]), q_base=0.3, lam=2.0)
    assert float(low[0]) == pytest.approx(0.3 * (1 + 2 * math.tanh(0.5)), rel=1e-6)
    s = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(agm_ratios(s), torch.exp(1.5 * (2.0 - s)))
    running = torch.tensor([0.0, 5.0])
    c = agm_coefficients(torch.tensor([1.0, 1.0]), running, alpha=1.0)
    assert float(c[0]) == pytest.approx(math.exp(10.0), rel=1e-5)  # capped at the default 10
