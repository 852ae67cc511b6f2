"""DecAlign's loss pieces against independent references: POT, LP / convex solvers, numpy
double loops, closed forms and scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pytest
import scipy.optimize
import scipy.stats
import torch
from sklearn.mixture import GaussianMixture

from equimodal.losses.gmm import diag_gaussian_log_prob, fit_diag_gmm, spaced_init_means
from equimodal.losses.moments import (
    group_moments,
    mmd2,
    multi_mmd_loss,
    pairwise_mmd2,
    semantic_alignment_loss,
)
from equimodal.losses.ot import (
    bures_w2_diag,
    entropic_ot_objective,
    gaussian_w2,
    max_entropy_bound,
    multimarginal_cost,
    multimarginal_sinkhorn,
    pairwise_prototype_costs,
    plan_marginals,
    transport_cost,
)
from equimodal.losses.supcon import regression_bins, supcon_loss

D = torch.float64


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _simplex(rng: np.random.Generator, k: int) -> np.ndarray:
    p = rng.uniform(0.2, 1.0, k)
    return p / p.sum()


# ----- Gaussian W2 costs -------------------------------------------------------------------
def test_bures_diag_matches_full_formula_and_pot() -> None:
    rng = _rng(1)
    mu1, mu2 = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    v1, v2 = rng.uniform(0.1, 2.0, (3, 4)), rng.uniform(0.1, 2.0, (2, 4))
    got = bures_w2_diag(*(torch.tensor(a) for a in (mu1, v1, mu2, v2))).numpy()
    assert got.shape == (3, 2)
    for a, b in itertools.product(range(3), range(2)):
        ref = ot.gaussian.bures_wasserstein_distance(mu1[a], mu2[b], np.diag(v1[a]),
                                                     np.diag(v2[b])) ** 2
        full = gaussian_w2(torch.tensor(mu1[a]), torch.diag(torch.tensor(v1[a])),
                           torch.tensor(mu2[b]), torch.diag(torch.tensor(v2[b])))
        assert got[a, b] == pytest.approx(ref, rel=1e-9)
        assert float(full) == pytest.approx(ref, rel=1e-7)
    mean = bures_w2_diag(*(torch.tensor(a) for a in (mu1, v1, mu2, v2)), reduction="mean")
    assert np.allclose(mean.numpy(), got / 4)


def test_gaussian_w2_full_covariance_matches_pot() -> None:
    rng = _rng(2)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = a @ a.T + 0.1 * np.eye(3), b @ b.T + 0.1 * np.eye(3)
    m1, m2 = rng.normal(size=3), rng.normal(size=3)
    ref = ot.gaussian.bures_wasserstein_distance(m1, m2, c1, c2) ** 2
    got = gaussian_w2(*(torch.tensor(x) for x in (m1, c1, m2, c2)))
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    assert float(gaussian_w2(*(torch.tensor(x) for x in (m1, c1, m1, c1)))) == pytest.approx(
        0.0, abs=1e-6)


def test_multimarginal_cost_is_sum_of_pairwise_costs() -> None:
    g = torch.Generator().manual_seed(0)
    mu, var = torch.randn(3, 2, 5, generator=g, dtype=D), torch.rand(3, 2, 5, generator=g,
                                                                       dtype=D) + 0.1
    pair = pairwise_prototype_costs(mu, var)
    assert torch.allclose(pair, pair.permute(1, 0, 3, 2))  # C_ij(a, b) = C_ji(b, a)
    assert torch.allclose(pair[0, 0].diagonal(), torch.zeros(2, dtype=D))
    cost = multimarginal_cost(pair)
    for k in itertools.product(range(2), repeat=3):
        ref = sum(
            float(bures_w2_diag(mu[i, k[i]][None], var[i, k[i]][None], mu[j, k[j]][None],
                                var[j, k[j]][None]))
            for i in range(3) for j in range(i + 1, 3)
        )
        assert float(cost[k]) == pytest.approx(ref, rel=1e-12)


# ----- multi-marginal Sinkhorn -------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_sinkhorn_two_marginals_matches_pot(eps: float) -> None:
    rng = _rng(3)
    a, b = _simplex(rng, 4), _simplex(rng, 5)
    c = rng.uniform(0, 1, (4, 5))
    ref = ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", numItermax=5000, stopThr=1e-14)
    res = multimarginal_sinkhorn(torch.tensor(c), [torch.tensor(a), torch.tensor(b)], eps, 2000)
    assert np.allclose(res.plan.numpy(), ref, atol=1e-9)
    assert float(res.marginal_error) < 1e-9


def _mm_lp(cost: np.ndarray, nus: list[np.ndarray]) -> float:
    """Exact multi-marginal OT by linear programming on the flattened K^M plan."""
    shape = cost.shape
    rows, rhs = [], []
    for i, nu in enumerate(nus):
        for k in range(shape[i]):
            sel = np.zeros(shape)
            idx: list[slice | int] = [slice(None)] * len(shape)
            idx[i] = k
            sel[tuple(idx)] = 1.0
            rows.append(sel.ravel())
            rhs.append(nu[k])
    res = scipy.optimize.linprog(cost.ravel(), A_eq=np.array(rows), b_eq=np.array(rhs),
                                 bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


def test_sinkhorn_three_marginals_approaches_lp_optimum() -> None:
    rng = _rng(4)
    k = 3
    nus = [_simplex(rng, k) for _ in range(3)]
    cost = rng.uniform(0, 1, (k, k, k))
    lp = _mm_lp(cost, nus)
    prev_gap = math.inf
    for eps in (0.1, 0.02, 0.005):
        res = multimarginal_sinkhorn(torch.tensor(cost), [torch.tensor(n) for n in nus], eps,
                                     20000, tol=1e-11)
        for got, nu in zip(plan_marginals(res.plan), nus, strict=True):
            assert np.allclose(got.numpy(), nu, atol=1e-8)  # Eq. 8
        val = float(transport_cost(res.plan, torch.tensor(cost)))
        gap = val - lp
        # Entropic plans are feasible, so they cost at least the LP optimum, and at most
        # eps * (max entropy) more (entropic objective sandwich).
        assert -1e-9 <= gap <= eps * max_entropy_bound(cost.shape) + 1e-9
        assert gap <= prev_gap + 1e-12
        prev_gap = gap
    assert prev_gap < 0.01


def test_sinkhorn_four_marginals_brute_force() -> None:
    """M = 4, K = 2 (a 2^4 plan): the cost tensor from Eq. 5 by enumeration, the entropic
    plan within eps * log(K^M) of the LP optimum and with Eq. 8's marginals."""
    g = torch.Generator().manual_seed(5)
    mu, var = torch.randn(4, 2, 3, generator=g, dtype=D), torch.rand(4, 2, 3, generator=g,
                                                                       dtype=D) + 0.1
    pair = pairwise_prototype_costs(mu, var)
    cost = multimarginal_cost(pair)
    for k in itertools.product(range(2), repeat=4):
        ref = sum(float(pair[i, j, k[i], k[j]]) for i in range(4) for j in range(i + 1, 4))
        assert float(cost[k]) == pytest.approx(ref, rel=1e-12)
    rng = _rng(14)
    nus = [_simplex(rng, 2) for _ in range(4)]
    cost = cost / cost.max()  # unit scale, so a small eps converges in few sweeps
    lp = _mm_lp(cost.numpy(), nus)
    eps = 0.02
    res = multimarginal_sinkhorn(cost, [torch.tensor(n) for n in nus], eps, 3000, tol=1e-10)
    for got, nu in zip(plan_marginals(res.plan), nus, strict=True):
        assert np.allclose(got.numpy(), nu, atol=1e-8)
    gap = float(transport_cost(res.plan, cost)) - lp
    assert -1e-9 <= gap <= eps * max_entropy_bound(cost.shape) + 1e-9


def test_sinkhorn_two_marginals_small_eps_matches_emd() -> None:
    rng = _rng(5)
    a, b = _simplex(rng, 5), _simplex(rng, 5)
    c = rng.uniform(0, 1, (5, 5))
    exact = ot.emd2(a, b, c)
    res = multimarginal_sinkhorn(torch.tensor(c), [torch.tensor(a), torch.tensor(b)], 2e-3, 5000)
    assert float(transport_cost(res.plan, torch.tensor(c))) == pytest.approx(exact, abs=2e-3)
    assert _mm_lp(c, [a, b]) == pytest.approx(exact, abs=1e-9)


def test_sinkhorn_three_marginals_solves_the_entropic_dual() -> None:
    """Independent reference: maximise the smooth concave dual with L-BFGS (scipy)."""
    rng = _rng(6)
    k, eps = 3, 0.2
    nus = [_simplex(rng, k) for _ in range(3)]
    cost = rng.uniform(0, 1, (k, k, k))

    def gibbs(f: np.ndarray) -> np.ndarray:
        s = f[0][:, None, None] + f[1][None, :, None] + f[2][None, None, :]
        return np.exp((s - cost) / eps)

    def neg_dual(x: np.ndarray) -> tuple[float, np.ndarray]:
        f = x.reshape(3, k)
        t = gibbs(f)
        val = sum(f[i] @ nus[i] for i in range(3)) - eps * t.sum()
        grad = np.stack([nus[0] - t.sum((1, 2)), nus[1] - t.sum((0, 2)), nus[2] - t.sum((0, 1))])
        return -val, -grad.ravel()

    opt = scipy.optimize.minimize(neg_dual, np.zeros(3 * k), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    ref = gibbs(opt.x.reshape(3, k))
    res = multimarginal_sinkhorn(torch.tensor(cost), torch.tensor(np.stack(nus)), eps, 500)
    assert np.allclose(res.plan.numpy(), ref, atol=1e-6)
    # The reference code's objective <T, C> + eps sum T (log T - 1) at the optimum equals
    # the dual optimum.
    obj = entropic_ot_objective(res.plan, torch.tensor(cost), eps, res.log_plan)
    assert float(obj) == pytest.approx(-neg_dual(opt.x)[0], abs=1e-6)  # strong duality


def test_sinkhorn_is_differentiable_and_stable_for_large_costs() -> None:
    g = torch.Generator().manual_seed(0)
    cost = (torch.rand(3, 3, generator=g, dtype=D) * 500).requires_grad_()
    nus = torch.full((2, 3), 1 / 3, dtype=D)
    res = multimarginal_sinkhorn(cost, nus, 0.1, 50)
    assert torch.isfinite(res.plan).all()
    transport_cost(res.plan, cost).backward()
    assert cost.grad is not None and torch.isfinite(cost.grad).all()
    small = (torch.rand(2, 2, 2, generator=g, dtype=D)).requires_grad_()
    torch.autograd.gradcheck(
        lambda c: transport_cost(multimarginal_sinkhorn(c, torch.full((3, 2), 0.5, dtype=D),
                                                        0.3, 30).plan, c), (small,))


def test_sinkhorn_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        multimarginal_sinkhorn(torch.zeros(2, 2), torch.ones(3, 2), 0.1)
    with pytest.raises(ValueError):
        multimarginal_sinkhorn(torch.zeros(2, 2), torch.ones(2, 2), 0.0)


# ----- MMD ---------------------------------------------------------------------------------
def _mmd_loop(x: np.ndarray, y: np.ndarray, sigma: float, unbiased: bool) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))

    def within(s: np.ndarray) -> float:
        n = len(s)
        tot = sum(k(s[i], s[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
        return tot / (n * (n - 1) if unbiased else n * n)

    cross = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return within(x) + within(y) - 2 * cross


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_matches_double_loop(estimator: str) -> None:
    rng = _rng(7)
    z = rng.normal(size=(3, 9, 4))
    z[1] += 0.7
    sigma = 1.3
    mat = pairwise_mmd2(torch.tensor(z), sigma=sigma, estimator=estimator).numpy()
    for i, j in itertools.combinations(range(3), 2):
        ref = _mmd_loop(z[i], z[j], sigma, estimator == "unbiased")
        assert mat[i, j] == pytest.approx(ref, rel=1e-10)
        assert mat[j, i] == pytest.approx(ref, rel=1e-10)
    # Different sample counts go through the direct path.
    ref = _mmd_loop(z[0, :5], z[1], sigma, estimator == "unbiased")
    got = mmd2(torch.tensor(z[0, :5]), torch.tensor(z[1]), sigma, estimator)
    assert float(got) == pytest.approx(ref, rel=1e-10)
    loss = multi_mmd_loss(torch.tensor(z), sigma=sigma, estimator=estimator)
    pairs = [mat[i, j] for i, j in itertools.combinations(range(3), 2)]
    assert float(loss) == pytest.approx(2 / (3 * 2) * sum(pairs), rel=1e-12)  # Eq. 11


def test_mmd_mask_equals_dropping_samples() -> None:
    rng = _rng(8)
    z = torch.tensor(rng.normal(size=(2, 8, 3)))
    mask = torch.ones(2, 8, dtype=D)
    mask[0, 5:] = 0
    mask[1, :2] = 0
    for est in ("biased", "unbiased"):
        got = pairwise_mmd2(z, mask, 1.0, est)[0, 1]
        ref = mmd2(z[0, :5], z[1, 2:], 1.0, est)
        assert float(got) == pytest.approx(float(ref), rel=1e-10)


def test_mmd_matches_gaussian_closed_form() -> None:
    """For x ~ N(m1, S1), y ~ N(m2, S2): E k(x, y) = det(I + S/s^2)^(-1/2)
    exp(-mu' (S + s^2 I)^(-1) mu / 2) with mu = m1 - m2, S = S1 + S2."""
    rng = _rng(9)
    sigma, d, n = 1.5, 2, 800
    m1, m2 = np.zeros(d), np.array([0.8, -0.4])
    s1, s2 = np.diag([1.0, 0.5]), np.diag([0.6, 1.2])

    def ek(mu: np.ndarray, s: np.ndarray) -> float:
        det = np.linalg.det(np.eye(d) + s / sigma**2)
        quad = mu @ np.linalg.solve(s + sigma**2 * np.eye(d), mu)
        return float(det**-0.5 * math.exp(-0.5 * quad))

    exact = ek(np.zeros(d), 2 * s1) + ek(np.zeros(d), 2 * s2) - 2 * ek(m1 - m2, s1 + s2)
    x = rng.multivariate_normal(m1, s1, n)
    y = rng.multivariate_normal(m2, s2, n)
    got = float(mmd2(torch.tensor(x), torch.tensor(y), sigma, "unbiased"))
    assert got == pytest.approx(exact, abs=0.015)
    same = float(mmd2(torch.tensor(x), torch.tensor(rng.multivariate_normal(m1, s1, n)), sigma,
                      "unbiased"))
    assert abs(same) < 0.01 < exact


# ----- moments / L_sem ---------------------------------------------------------------------
def test_group_moments_match_numpy_and_scipy() -> None:
    rng = _rng(10)
    z = rng.gamma(2.0, size=(2, 50, 3))
    mean, cov, skew = group_moments(torch.tensor(z), eps=0.0)
    for i in range(2):
        assert np.allclose(mean[i].numpy(), z[i].mean(0))
        assert np.allclose(cov[i].numpy(), np.cov(z[i], rowvar=False))
        assert np.allclose(skew[i].numpy(), scipy.stats.skew(z[i], axis=0))


def test_semantic_alignment_loss_matches_loop_and_masks() -> None:
    rng = _rng(11)
    z = rng.normal(size=(3, 30, 4))
    z[2] = z[2] ** 2
    got = float(semantic_alignment_loss(torch.tensor(z)))
    ref = 0.0
    for i, j in itertools.combinations(range(3), 2):
        ref += (
            ((z[i].mean(0) - z[j].mean(0)) ** 2).sum()
            + ((np.cov(z[i], rowvar=False) - np.cov(z[j], rowvar=False)) ** 2).sum()
            + ((scipy.stats.skew(z[i]) - scipy.stats.skew(z[j])) ** 2).sum()
        )
    assert got == pytest.approx(ref / (3 * 2), rel=1e-5)  # Eq. 10's 1 / (M (M - 1))
    # Identical distributions up to sample order: zero loss.
    perm = np.stack([z[0], z[0][::-1]])
    assert float(semantic_alignment_loss(torch.tensor(perm))) == pytest.approx(0.0, abs=1e-12)
    mask = torch.ones(2, 30, dtype=D)
    mask[1, 20:] = 0
    masked = semantic_alignment_loss(torch.tensor(z[:2]), mask)
    dropped_pair = (torch.tensor(z[0]), torch.tensor(z[1, :20]))
    m0, c0, s0 = group_moments(dropped_pair[0][None])
    m1, c1, s1 = group_moments(dropped_pair[1][None])
    ref2 = ((m0 - m1) ** 2).sum() + ((c0 - c1) ** 2).sum() + ((s0 - s1) ** 2).sum()
    assert float(masked) == pytest.approx(float(ref2) / 2, rel=1e-10)


# ----- GMM ---------------------------------------------------------------------------------
def _blobs(seed: int, n: int = 60) -> np.ndarray:
    rng = _rng(seed)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    return np.concatenate([c + rng.normal(scale=[0.5, 1.0], size=(n, 2)) for c in centres])


def test_gmm_single_em_step_matches_numpy() -> None:
    x = _blobs(12, 10)
    init = x[[0, 12, 25]]
    res = fit_diag_gmm(torch.tensor(x), 3, n_iter=1, init_means=torch.tensor(init)[None])
    var0 = np.maximum(x.var(0), 1e-4)
    dens = np.stack([scipy.stats.multivariate_normal(init[k], np.diag(var0)).pdf(x)
                     for k in range(3)], 1) / 3
    r = dens / dens.sum(1, keepdims=True)
    nk = r.sum(0)
    mu = (r.T @ x) / nk[:, None]
    var = np.stack([(r[:, k, None] * (x - mu[k]) ** 2).sum(0) / nk[k] for k in range(3)])
    assert np.allclose(res.means[0].numpy(), mu, atol=1e-6)
    assert np.allclose(res.variances[0].numpy(), var, atol=1e-6)
    assert np.allclose(res.weights[0].numpy(), nk / len(x), atol=1e-9)
    # Final posteriors are Eq. 3 under the returned parameters.
    logp = diag_gaussian_log_prob(torch.tensor(x)[None], res.means, res.variances)
    post = torch.softmax(logp + res.weights.log()[:, None], -1)
    assert torch.allclose(res.resp, post, atol=1e-10)


def test_gmm_matches_sklearn_and_likelihood_increases() -> None:
    x = _blobs(13)
    sk = GaussianMixture(3, covariance_type="diag", reg_covar=1e-9, random_state=0, tol=1e-12,
                         max_iter=2000, means_init=x[[0, 60, 120]]).fit(x)
    res = fit_diag_gmm(torch.tensor(x), 3, n_iter=300)
    order = np.argsort(res.means[0, :, 0].numpy() + 10 * res.means[0, :, 1].numpy())
    sk_order = np.argsort(sk.means_[:, 0] + 10 * sk.means_[:, 1])
    assert np.allclose(res.means[0].numpy()[order], sk.means_[sk_order], atol=1e-4)
    assert np.allclose(res.variances[0].numpy()[order], sk.covariances_[sk_order], atol=1e-4)
    assert float(res.log_likelihood[0]) == pytest.approx(sk.score(x), abs=1e-4)
    lls = [float(fit_diag_gmm(torch.tensor(x), 3, n_iter=t).log_likelihood[0]) for t in range(6)]
    assert all(b >= a - 1e-9 for a, b in zip(lls, lls[1:], strict=False))
    assert lls[-1] > lls[0]


def test_gmm_batched_over_groups_with_masks() -> None:
    a, b = torch.tensor(_blobs(14, 20)), torch.tensor(_blobs(15, 20))
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, 50:] = False
    both = fit_diag_gmm(torch.stack([a, b]), 3, n_iter=4, mask=mask)
    one = fit_diag_gmm(a, 3, n_iter=4)
    dropped = fit_diag_gmm(b[:50], 3, n_iter=4)
    assert torch.allclose(both.means[0], one.means[0], atol=1e-10)
    assert torch.allclose(both.means[1], dropped.means[0], atol=1e-10)
    assert torch.allclose(both.resp[1, :50], dropped.resp[0], atol=1e-10)
    assert torch.all(both.resp[1, 50:] == 0)
    assert torch.allclose(both.resp[0].sum(-1), torch.ones(60, dtype=D))


def test_gmm_is_differentiable_with_variance_floor() -> None:
    x = torch.zeros(8, 3, dtype=D)
    x[4:] = 1.0
    x.requires_grad_()
    res = fit_diag_gmm(x, 2, n_iter=5, var_floor=1e-4)
    assert torch.all(res.variances >= 1e-4)
    (res.means.pow(2).sum() + res.resp.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----- supervised contrastive --------------------------------------------------------------
def test_supcon_matches_double_loop() -> None:
    rng = _rng(16)
    f = rng.normal(size=(7, 5))
    y = np.array([0, 1, 0, 2, 1, 0, 3])  # class 3 has no positive: not an anchor
    tau = 0.1
    z = f / np.linalg.norm(f, axis=1, keepdims=True)
    total, anchors = 0.0, 0
    for i in range(7):
        pos = [p for p in range(7) if p != i and y[p] == y[i]]
        if not pos:
            continue
        den = sum(math.exp(z[i] @ z[a] / tau) for a in range(7) if a != i)
        total += -np.mean([math.log(math.exp(z[i] @ z[p] / tau) / den) for p in pos])
        anchors += 1
    feats = torch.tensor(f, requires_grad=True)
    got = supcon_loss(feats, torch.tensor(y), tau)
    assert float(got.detach()) == pytest.approx(total / anchors, rel=1e-10)
    got.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    assert float(supcon_loss(torch.tensor(f), torch.arange(7))) == 0.0


def test_regression_bins() -> None:
    y = torch.tensor([-3.5, -3.0, -2.6, -0.4, 0.0, 0.6, 2.9, 3.2])
    assert regression_bins(y).tolist() == [0, 0, 0, 3, 3, 4, 6, 6]


# ----- mutation-testing survivors (issue 18): defaults, batching, degenerate sizes ------------
def test_gaussian_w2_is_batched_elementwise() -> None:
    """``[B, d]`` / ``[B, d, d]`` inputs give one distance per item (trace and mean term per
    item, symmetric square roots per item)."""
    g = torch.Generator().manual_seed(5)
    d = 3
    a = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    b = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    cov1 = a @ a.transpose(-1, -2) + 0.1 * torch.eye(d, dtype=torch.float64)
    cov2 = b @ b.transpose(-1, -2) + 0.1 * torch.eye(d, dtype=torch.float64)
    mu1 = torch.randn(2, d, generator=g, dtype=torch.float64)
    mu2 = torch.randn(2, d, generator=g, dtype=torch.float64)
    got = gaussian_w2(mu1, cov1, mu2, cov2)
    assert got.shape == (2,)
    for i in range(2):
        one = gaussian_w2(mu1[i], cov1[i], mu2[i], cov2[i])
        assert float(got[i]) == pytest.approx(float(one), rel=1e-9)
        ref = ot.gaussian.bures_wasserstein_distance(mu1[i].numpy(), mu2[i].numpy(),
                                                     cov1[i].numpy(), cov2[i].numpy()) ** 2
        assert float(got[i]) == pytest.approx(float(ref), rel=1e-6)


def test_mmd_and_sem_defaults_masks_and_degenerate_sizes() -> None:
    """Default bandwidth 1 and biased estimator; M = 1 gives exactly 0, M = 2 gives the
    single pair; the mask is honoured by ``multi_mmd_loss``."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 7, 3, generator=g)
    z[1] += 1.0
    assert float(multi_mmd_loss(z)) == pytest.approx(float(mmd2(z[0], z[1], 1.0, "biased")),
                                                     rel=1e-5)
    assert float(multi_mmd_loss(z)) > 0.05
    assert float(multi_mmd_loss(z[:1] + 5.0)) == 0.0
    assert float(semantic_alignment_loss(z[:1] + 5.0)) == 0.0
    assert float(semantic_alignment_loss(z)) > 0.1
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    z_far = z.clone()
    z_far[1, 4:] = 100.0  # masked out: must not matter
    want = mmd2(z[0], z[1, :4], 1.0, "biased")
    assert float(multi_mmd_loss(z_far, mask)) == pytest.approx(float(want), rel=1e-5)


def test_entropic_objective_with_and_without_log_plan() -> None:
    plan = torch.tensor([[0.2, 0.3], [0.4, 0.1]], dtype=torch.float64)
    cost = torch.tensor([[1.0, 2.0], [0.5, 3.0]], dtype=torch.float64)
    want = float((plan * cost).sum() + 0.3 * (plan * (plan.log() - 1)).sum())
    assert float(entropic_ot_objective(plan, cost, 0.3)) == pytest.approx(want, rel=1e-12)
    got = entropic_ot_objective(plan, cost, 0.3, plan.log())
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_spaced_init_means_picks_evenly_spaced_valid_samples() -> None:
    x = torch.arange(8, dtype=torch.float64).reshape(1, 8, 1)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0]], dtype=torch.float64)  # valid: 0 2 3 5 6
    assert spaced_init_means(x, mask, 1).flatten().tolist() == [0.0]
    assert spaced_init_means(x, mask, 2).flatten().tolist() == [0.0, 6.0]
    assert spaced_init_means(x, mask, 3).flatten().tolist() == [0.0, 3.0, 6.0]


def test_gmm_unbatched_mask_defaults_and_likelihood() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(10, 2, generator=g, dtype=torch.float64) - 1,
                   torch.randn(10, 2, generator=g, dtype=torch.float64) + 1])
    mask = torch.ones(20, dtype=torch.float64)
    mask[[3, 12, 17]] = 0
    keep = mask > 0
    a = fit_diag_gmm(x, 2, mask=mask)
    b = fit_diag_gmm(x[keep], 2)
    assert torch.allclose(a.means, b.means) and torch.allclose(a.variances, b.variances)
    assert torch.allclose(a.resp[0][keep], b.resp[0]) and float(a.resp[0][~keep].abs().sum()) == 0
    # Mean log-likelihood of the valid samples under the returned parameters.
    dens = torch.stack([
        torch.distributions.Normal(a.means[0, c], a.variances[0, c].sqrt()).log_prob(x)
        .sum(-1) + a.weights[0, c].log() for c in range(2)], -1)
    assert float(a.log_likelihood[0]) == pytest.approx(
        float(torch.logsumexp(dens, -1)[keep].mean()), rel=1e-9)
    assert torch.equal(fit_diag_gmm(x, 2).means, fit_diag_gmm(x, 2, n_iter=5).means)
    assert not torch.allclose(fit_diag_gmm(x, 2, n_iter=5).means,
                              fit_diag_gmm(x, 2, n_iter=6).means, atol=1e-10, rtol=0)
    assert torch.allclose(fit_diag_gmm(x, 3, n_iter=0).weights, torch.full((1, 3), 1 / 3,
                                                                           dtype=x.dtype))
    one = fit_diag_gmm(x, 1)
    assert torch.allclose(one.means[0, 0], x.mean(0))
    with pytest.raises(ValueError):
        fit_diag_gmm(x, 0)
    # A group with a single valid sample: its likelihood is that sample's, not halved.
    single = torch.zeros(20, dtype=torch.float64)
    single[4] = 1
    s = fit_diag_gmm(x, 1, mask=single, var_floor=0.5)
    ref = torch.distributions.Normal(x[4], math.sqrt(0.5)).log_prob(x[4]).sum()
    assert float(s.log_likelihood[0]) == pytest.approx(float(ref), rel=1e-9)


def test_group_moments_with_one_and_two_valid_samples() -> None:
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 5, dtype=torch.float64)
    mask[0, [1, 3]] = 1
    mask[1, 2] = 1
    mean, cov, _ = group_moments(z, mask)
    assert torch.allclose(cov[0], torch.cov(z[0, [1, 3]].T))
    assert torch.allclose(mean[1], z[1, 2])


def test_unbiased_mmd_over_three_groups_uses_distinct_pairs_only() -> None:
    g = torch.Generator().manual_seed(9)
    z = torch.randn(3, 6, 2, generator=g)
    z[2] += 0.5
    pairs = [(0, 1), (0, 2), (1, 2)]
    want = sum(float(mmd2(z[i], z[j], 1.0, "unbiased")) for i, j in pairs) / 3
    assert float(multi_mmd_loss(z, estimator="unbiased")) == pytest.approx(want, rel=1e-5)


def test_gmm_batched_likelihood_and_empty_component_keeps_its_mean() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 12, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.float64)
    mask[1, 8:] = 0
    both = fit_diag_gmm(x, 2, mask=mask)
    for i in range(2):
        one = fit_diag_gmm(x[i][mask[i] > 0], 2)
        assert float(both.log_likelihood[i]) == pytest.approx(float(one.log_likelihood[0]),
                                                              rel=1e-9)
    init = torch.tensor([[[0.0, 0.0], [1e3, 1e3]]], dtype=torch.float64)
    far = fit_diag_gmm(x[0], 2, init_means=init)
    assert torch.allclose(far.means[0, 1], init[0, 1])


def test_skewness_of_a_constant_dimension_is_zero() -> None:
    z = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    z[..., 1] = 3.0
    _, _, skew = group_moments(z)
    assert torch.isfinite(skew).all() and float(skew[0, 1]) == 0.0
