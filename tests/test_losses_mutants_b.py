"""Tests that kill mutmut survivors in ``losses/mi.py``, ``losses/graphs.py`` and
``losses/disentangle.py`` (issue 18; docs/mutation.md): closed forms on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Normal

from equimodal.losses.cmi import (
    assign_clusters,
    conditional_nce_objective,
    kmeans_plusplus,
    nce_mi_estimate,
    nce_mi_lower_bound,
    protective_margin,
    quantize_similarity,
)
from equimodal.losses.disentangle import cosine_similarity_matrix, similarity_surrogate
from equimodal.losses.graphs import (
    closed_form_weights,
    diffusion_coefficients,
    diffusion_matrix,
    exact_weights,
    graph_alignment_loss,
    knn,
    lambda_bounds,
    masked_softmax,
    semantic_graph,
    semantic_graph_from_dists,
)
from equimodal.losses.mi import (
    club_nll,
    club_upper_bound,
    club_upper_bound_pairwise,
    gaussian_log_likelihood,
    gaussian_mutual_information,
)
from equimodal.losses.modulation import (
    entropy_fusion_weights,
    min_norm_weights,
    true_class_score,
)
from equimodal.losses.prototypes import class_means, prototype_entropy, prototype_logits

# ----- mi.py ------------------------------------------------------------------------------------


def _club_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 3, generator=g)
    mu = torch.randn(5, 3, generator=g)
    logvar = 0.5 * torch.randn(5, 3, generator=g)
    return y, mu, logvar


def test_gaussian_log_likelihood_is_the_diagonal_normal_density() -> None:
    y, mu, logvar = _club_inputs()
    want = Normal(mu, (0.5 * logvar).exp()).log_prob(y).sum(-1)
    assert torch.allclose(gaussian_log_likelihood(y, mu, logvar), want, atol=1e-5)


def test_club_nll_masked_rows_and_empty_mask() -> None:
    y, mu, logvar = _club_inputs()
    ll = Normal(mu, (0.5 * logvar).exp()).log_prob(y).sum(-1)
    mask = torch.tensor([True, False, True, True, False])
    assert float(club_nll(y, mu, logvar, mask)) == pytest.approx(float(-ll[mask].mean()), rel=1e-5)
    mu_g = mu.clone().requires_grad_(True)
    empty = club_nll(y, mu_g, logvar, torch.zeros(5, dtype=torch.bool))
    assert float(empty.detach()) == 0.0
    empty.backward()
    assert mu_g.grad is not None and torch.equal(mu_g.grad, torch.zeros_like(mu))


def test_club_pairwise_against_an_explicit_double_loop() -> None:
    y, mu, logvar = _club_inputs()
    n = y.shape[0]
    total = 0.0
    for i in range(n):
        q = Normal(mu[i], (0.5 * logvar[i]).exp())
        for j in range(n):
            total += float(q.log_prob(y[i]).sum() - q.log_prob(y[j]).sum())
    want = total / n**2
    assert float(club_upper_bound_pairwise(y, mu, logvar)) == pytest.approx(want, rel=1e-4)
    assert float(club_upper_bound(y, mu, logvar)) == pytest.approx(want, rel=1e-4)


def test_club_two_rows_is_not_degenerate_and_one_row_is_zero() -> None:
    y, mu, logvar = _club_inputs()
    two = club_upper_bound(y[:2], mu[:2], logvar[:2])
    assert float(two) == pytest.approx(float(club_upper_bound_pairwise(y[:2], mu[:2], logvar[:2])),
                                       rel=1e-5)
    assert abs(float(two)) > 1e-3
    mask = torch.tensor([False, True, False, False, False])
    y_g = y.clone().requires_grad_(True)
    one = club_upper_bound(y_g, mu, logvar, mask)
    assert float(one.detach()) == 0.0
    one.backward()
    assert y_g.grad is not None and torch.equal(y_g.grad, torch.zeros_like(y))


def test_gaussian_mutual_information_closed_form() -> None:
    assert gaussian_mutual_information(0.6, 3) == pytest.approx(-1.5 * math.log(0.64))
    assert gaussian_mutual_information(0.0, 4) == 0.0


# ----- cmi.py -----------------------------------------------------------------------------------


def test_nce_lower_bound_adds_log_prior_ratio_and_honours_the_negative_mask() -> None:
    pos = torch.tensor([0.5, -1.0])
    neg = torch.tensor([[0.0, 1.0], [8.0, 9.0]])
    mask = torch.tensor([True, False])
    obj = conditional_nce_objective(pos, neg, 5.0, mask)
    want = F.logsigmoid(pos).mean() + 5.0 * F.logsigmoid(-neg[0]).mean()
    assert float(obj) == pytest.approx(float(want), rel=1e-6)
    bound = nce_mi_lower_bound(pos, neg, 5.0, mask)
    assert float(bound) == pytest.approx(float(want) + math.log(5.0), rel=1e-6)


def test_protective_margin_mi_estimate_and_objective_checks() -> None:
    assert protective_margin(5) == pytest.approx(math.log(1 / 5))
    assert protective_margin(1) == 0.0
    assert protective_margin(4, 2) == pytest.approx(math.log(0.5))
    for bad in ((0, 1), (3, 0)):
        with pytest.raises(ValueError, match="N0 and N1 must be >= 1"):
            protective_margin(*bad)
    pos = torch.tensor([0.5, -1.0])
    want = float(F.logsigmoid(pos).mean()) + math.log(5.0)
    assert float(nce_mi_estimate(pos, math.log(1 / 5))) == pytest.approx(want)
    with pytest.raises(ValueError, match=r"neg_logits must be \[N, K\] with N = 2"):
        conditional_nce_objective(pos, torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="got"):
        conditional_nce_objective(pos, torch.zeros(2), 1.0)
    empty = conditional_nce_objective(torch.zeros(0), torch.zeros(0, 3), 2.0)
    assert float(empty) == 0.0
    no_rows = torch.zeros(2, dtype=torch.bool)
    none_valid = conditional_nce_objective(pos, torch.zeros(2, 3), 2.0, no_rows)
    assert float(none_valid) == pytest.approx(float(F.logsigmoid(pos).mean()))


def _kmeanspp_reference(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=g))
    cents = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:
            idx = int(torch.randint(n, (1,), generator=g))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=g))
        cents.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(cents)


@pytest.mark.parametrize("scale", [0.05, 3.0])
def test_kmeans_plusplus_follows_the_d2_seeding_with_its_generator(scale: float) -> None:
    x = scale * torch.randn(7, 3, generator=torch.Generator().manual_seed(2))
    for seed in range(4):
        got = kmeans_plusplus(x, 4, torch.Generator().manual_seed(seed))
        assert torch.equal(got, _kmeanspp_reference(x, 4, seed))


def test_kmeans_plusplus_draws_uniformly_once_every_point_is_a_centroid() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    torch.manual_seed(123)  # the global stream differs from the passed generator's
    for seed in range(3):
        got = kmeans_plusplus(x, 7, torch.Generator().manual_seed(seed))
        assert torch.equal(got, _kmeanspp_reference(x, 7, seed))
    same = kmeans_plusplus(torch.ones(3, 2), 3, torch.Generator().manual_seed(0))
    assert torch.equal(same, torch.ones(3, 2))
    single = kmeans_plusplus(torch.tensor([[1.0, 2.0, 3.0]]), 2)
    assert torch.equal(single, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    with pytest.raises(ValueError, match="^kmeans needs at least one point$"):
        kmeans_plusplus(torch.zeros(0, 2), 2)


def test_quantize_similarity_levels_reference_and_degenerate_cases() -> None:
    v = torch.arange(9.0)
    assert quantize_similarity(v).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # default 3 levels
    two = quantize_similarity(v, 2)
    assert two.dtype == torch.long and two.tolist() == [0] * 5 + [1] * 4
    one = quantize_similarity(v, 1)
    assert one.dtype == torch.long and torch.equal(one, torch.zeros(9, dtype=torch.long))
    ref = torch.tensor([10.0, 20.0, 30.0, 40.0])
    assert quantize_similarity(torch.tensor([5.0, 25.0, 45.0]), 2, ref).tolist() == [0, 0, 1]
    empty = quantize_similarity(torch.tensor([1.0, 2.0]), 3, torch.empty(0))
    assert empty.dtype == torch.long and empty.tolist() == [0, 0]
    with pytest.raises(ValueError, match="levels"):
        quantize_similarity(v, 0)


# ----- graphs.py --------------------------------------------------------------------------------


def test_lambda_bounds_closed_form_with_and_without_a_mask() -> None:
    f = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0]], dtype=torch.float64)
    lo, hi = lambda_bounds(f)  # k = 3: 2kS/(k^2-1) = 6S/8, 2S/(k-1) = S
    assert torch.allclose(lo, torch.tensor([4.5, 4.5], dtype=torch.float64))
    assert torch.allclose(hi, torch.tensor([6.0, 6.0], dtype=torch.float64))
    valid = torch.tensor([[True, True, False], [True, True, True]])
    lo, hi = lambda_bounds(f, valid)  # row 0: k = 2, S = 3 -> 4S/3 = 4, 2S = 6
    assert torch.allclose(lo, torch.tensor([4.0, 4.5], dtype=torch.float64))
    assert torch.allclose(hi, torch.tensor([6.0, 6.0], dtype=torch.float64))


def _common_multiplier(g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``g_j^2 = 1 - 2 f_j / lambda``, so ``(1 - g_j^2) / f_j = 2 / lambda`` for all j."""
    return (1.0 - g**2) / f


@pytest.mark.parametrize("row", [[1.0, 1.0], [1.0, 1.5], [0.3, 0.2]])
def test_exact_weights_with_two_neighbours_solve_eq5(row: list[float]) -> None:
    f = torch.tensor([row], dtype=torch.float64)
    g = exact_weights(f)
    assert float(g.sum()) == pytest.approx(1.0)
    c = _common_multiplier(g[0], f[0])
    assert float(c[0]) == pytest.approx(float(c[1]), rel=1e-6)


def test_exact_weights_ignore_masked_entries() -> None:
    f = torch.tensor([[1.0, 1.5, 0.2, 2.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False, True]])
    g = exact_weights(f, valid)
    want = exact_weights(f[:, [0, 1, 3]])
    assert float(g[0, 2]) == 0.0
    assert torch.allclose(g[0, [0, 1, 3]], want[0], atol=1e-9)


def test_diffusion_matrix_keeps_float64() -> None:
    att = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    coeffs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    op = diffusion_matrix(att, coeffs)
    assert op.dtype == torch.float64
    assert torch.allclose(op, torch.full((2, 2), 0.5, dtype=torch.float64))


def test_knn_defaults_to_all_candidates_and_k_zero_keeps_none() -> None:
    d = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 1.5]])
    idx, dist, kept = knn(d, 2)
    assert idx.tolist() == [[1, 2], [0, 2]]
    assert dist.tolist() == [[1.0, 2.0], [0.5, 1.5]] and bool(kept.all())
    idx0, _, kept0 = knn(d, 0)
    assert idx0.shape == (2, 0) and kept0.shape == (2, 0)
    assert torch.equal(semantic_graph(torch.randn(4, 2), 0), torch.zeros(4, 4))


# ----- disentangle.py ---------------------------------------------------------------------------


def test_cosine_similarity_matrix_is_pairwise_cosine_of_rows() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [1e-3, 1e-3, 0.0]])
    b = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, -3.0], [-1.0, 0.0, 0.0]])
    want = torch.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)
    got = cosine_similarity_matrix(a, b)
    assert got.shape == (2, 3)
    assert torch.allclose(got, want, atol=1e-6)


def test_closed_form_weights_ignore_masked_entries() -> None:
    f = torch.tensor([[1.0, 1.5, 0.2, 2.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False, True]])
    g = closed_form_weights(f, valid)
    assert float(g[0, 2]) == 0.0
    assert torch.allclose(g[0, [0, 1, 3]], closed_form_weights(f[:, [0, 1, 3]])[0])


def test_graph_alignment_of_a_single_modality_is_zero() -> None:
    g = torch.rand(1, 4, 4)
    assert float(graph_alignment_loss(g)) == 0.0


def test_graph_alignment_with_a_single_common_row() -> None:
    g = torch.zeros(2, 3, 3)
    g[0, 1, 0] = 1.0
    g[1, 1, 2] = 1.0
    present = torch.tensor([[True, True, False], [False, True, True]])
    assert float(graph_alignment_loss(g, present)) == pytest.approx(2.0)  # ||row 1||^2 / 1^2


def test_assign_clusters_is_nearest_centroid() -> None:
    x = torch.tensor([[1.0, 0.0], [1.9, 0.1], [-5.0, 0.0]])
    c = torch.tensor([[0.9, 0.0], [2.0, 0.0], [-4.0, 1.0]])
    assert assign_clusters(x, c).tolist() == [0, 1, 2]


def test_club_single_selected_row_and_single_feature() -> None:
    y, mu, logvar = _club_inputs()
    one = torch.tensor([False, False, True, False, False])
    ll = Normal(mu[2], (0.5 * logvar[2]).exp()).log_prob(y[2]).sum()
    assert float(club_nll(y, mu, logvar, one)) == pytest.approx(float(-ll), rel=1e-5)
    d1 = club_upper_bound(y[:, :1], mu[:, :1], logvar[:, :1])
    assert float(d1) == pytest.approx(
        float(club_upper_bound_pairwise(y[:, :1], mu[:, :1], logvar[:, :1])), rel=1e-5)
    assert abs(float(d1)) > 1e-3


def test_similarity_surrogate_rejects_unknown_reductions() -> None:
    with pytest.raises(ValueError, match="reduction"):
        similarity_surrogate(torch.ones(2, 3, 4), reduction="max")


def test_semantic_graph_from_dists_defaults_single_neighbour_and_short_rows() -> None:
    d = torch.tensor([[0.0, 1.0, 4.0, 2.0], [1.0, 0.0, 3.0, 5.0], [4.0, 3.0, 0.0, 1.0]])
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[:, :3] &= ~torch.eye(3, dtype=torch.bool)
    g = semantic_graph_from_dists(d, 2, valid)  # default: Theorem 1's lower bound
    idx, f, kept = knn(d, 2, valid)
    want = torch.zeros(3, 4).scatter(1, idx, closed_form_weights(f, kept))
    assert torch.allclose(g, want)
    one = semantic_graph_from_dists(d, 1, valid)
    assert one.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    short = valid.clone()
    short[0] = torch.tensor([False, True, False, False])  # row 0: one candidate for k = 3
    for lam in ("lower_bound", "exact"):
        gs = semantic_graph_from_dists(d, 3, short, lam)
        assert gs[0].tolist() == [0.0, 1.0, 0.0, 0.0]
        assert torch.allclose(gs.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="lam must be one of"):
        semantic_graph_from_dists(d, 2, valid, "upper")


def test_masked_softmax_literal_form_rows_without_edges_and_mode_check() -> None:
    scores = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    lit = masked_softmax(scores, mask, "literal")
    want = torch.softmax(mask.float() * torch.softmax(scores, dim=1), dim=1)
    assert torch.allclose(lit, want)
    att = masked_softmax(scores, mask)
    assert torch.equal(att[1], torch.zeros(3))
    assert torch.allclose(att[0], torch.softmax(torch.tensor([1.0, 0.0]), 0)[[0, 0, 1]]
                          * torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="mode must be"):
        masked_softmax(scores, mask, "dense")


def test_diffusion_coefficients_reject_xi_outside_the_open_unit_interval() -> None:
    for xi in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="xi must be in"):
            diffusion_coefficients(xi, 3)
    with pytest.raises(ValueError, match="steps must be"):
        diffusion_coefficients(0.5, -1)


# ----- prototypes.py, modulation.py -------------------------------------------------------------


def test_class_means_singletons_absent_last_class_and_previous() -> None:
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    means, counts = class_means(f, y, 4)
    assert counts.tolist() == [2.0, 1.0, 0.0, 0.0]
    assert means.tolist() == [[2.0, 3.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    prev = torch.full((4, 2), 7.0)
    kept, _ = class_means(f, y, 4, prev)
    assert kept.tolist() == [[2.0, 3.0], [10.0, 0.0], [7.0, 7.0], [7.0, 7.0]]


def test_prototype_logits_and_entropy_closed_form() -> None:
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    protos = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    logits = prototype_logits(f, protos)
    want = -torch.cdist(f, protos)
    assert torch.allclose(logits, want) and float(logits[1, 0]) == pytest.approx(-5.0)
    ent = Categorical(logits=want).entropy().mean()
    assert float(prototype_entropy(f, protos)) == pytest.approx(float(ent), rel=1e-5)


def test_true_class_score_with_a_mask_and_an_empty_mask() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    p = logits.softmax(1)[torch.arange(3), y]
    mask = torch.tensor([True, False, True])
    assert float(true_class_score(logits, y, mask)) == pytest.approx(float(p[mask].mean()))
    assert float(true_class_score(logits, y, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_min_norm_weights_end_points_and_small_interior() -> None:
    a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 0.0])]
    assert min_norm_weights(b, a) == pytest.approx((0.001, 0.999))  # v12 >= v22
    assert min_norm_weights(a, b) == pytest.approx((0.999, 0.001))  # v12 >= v11
    s1, s2 = [torch.tensor([1e-3, 0.0])], [torch.tensor([0.0, 2e-3])]
    w, _ = min_norm_weights(s1, s2)  # argmin ||w g1 + (1 - w) g2||: w = v22 / (v11 + v22)
    assert w == pytest.approx(0.8, rel=1e-5)


def test_min_norm_weights_ties_take_the_reference_end_points() -> None:
    one, diag = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]
    assert min_norm_weights(one, diag) == pytest.approx((0.999, 0.001))  # v12 == v11
    assert min_norm_weights(diag, one) == pytest.approx((0.001, 0.999))  # v12 == v22


def test_entropy_fusion_weights_uniform_for_a_sample_without_modalities() -> None:
    logits = [torch.tensor([[3.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])]
    present = [torch.tensor([True, False]), torch.tensor([True, False])]
    w = entropy_fusion_weights(logits, present)
    assert torch.equal(w[1], torch.tensor([0.5, 0.5]))
    e = torch.stack([Categorical(logits=lg[0]).entropy() for lg in logits])
    assert torch.allclose(w[0], torch.softmax(e.max() - e, 0))
