"""UDI's CLUB estimator stays finite and bounded when the features are large and growing.

Regression for the CG-MNIST divergence: with the printed Eq. 8-10 on raw 512-d convnet
features, the follower's features grew under the color shortcut (norm 2 -> 28), the
estimator's NLL grew with their square (215 -> 1,090 in 100 steps) and its SGD steps with it,
until the loss was non-finite. ``estimator_inputs="standardize"`` (the default) must keep the
estimator loss bounded and the bound independent of the feature scale; ``raw`` must not
(these tests fail on the old code, which had only the raw form).
"""

from __future__ import annotations

import pytest
import torch

from equimodal.losses.mi import standardize
from equimodal.methods.udi_modules import GaussianEstimator


def _fit_growing(inputs: str, steps: int = 40) -> list[float]:
    """Fit ``q_phi`` by SGD (momentum 0.9, as the engine's estimator group) on image-like
    ReLU anchor features and follower features whose scale grows 1x -> 7x."""
    torch.manual_seed(0)
    d, n = 64, 64
    proj = torch.randn(16, d)
    est = GaussianEstimator(d, d, d, inputs)
    opt = torch.optim.SGD(est.parameters(), lr=5e-2, momentum=0.9, weight_decay=1e-4)
    losses = []
    for s in range(steps):
        z = torch.randn(n, 16)
        x, y = torch.relu(z @ proj), (z @ proj) * (1 + s / 10)  # |x| ~ 22, |y| 32 -> 220
        loss = est.nll(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_standardized_estimator_loss_stays_finite_and_bounded() -> None:
    losses = _fit_growing("standardize")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert max(losses) <= 1.05 * losses[0]  # no growth with the follower's scale
    assert losses[-1] < losses[0]  # and it still learns: y is a function of x's pre-ReLU


def test_raw_estimator_loss_grows_with_the_feature_scale() -> None:
    """The printed form (kept as ``raw``) is the failure mode the default fixes."""
    losses = _fit_growing("raw", steps=60)
    assert max(losses) > 10 * losses[0]


@torch.no_grad()
def test_bound_is_invariant_to_follower_and_anchor_scale() -> None:
    """Standardised inputs: scaling either side's features (what the follower could do to
    lower Eq. 8, unbounded in ``y``'s scale for a fixed ``q_phi``) leaves ``L_com`` unchanged."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    torch.manual_seed(0)
    est = GaussianEstimator(8, 8, 16)
    raw = GaussianEstimator(8, 8, 16, "raw")
    raw.load_state_dict(est.state_dict())
    ref = float(est.upper_bound(x, y))
    assert float(est.upper_bound(50 * x + 3, 20 * y - 1)) == pytest.approx(ref, rel=1e-4)
    assert float(est.nll(x, 40 * y)) == pytest.approx(float(est.nll(x, y)), rel=1e-4)
    # Raw: the bound's magnitude follows the follower's scale (so does its gradient).
    r1, r2 = float(raw.upper_bound(x, y)), float(raw.upper_bound(x, 20 * y))
    assert abs(r2) > 10 * abs(r1) > 1e-3


@torch.no_grad()
def test_standardize_matches_definition_and_masks_rows() -> None:
    g = torch.Generator().manual_seed(4)
    t = torch.randn(10, 3, generator=g) * 7 + 2
    t[:, 2] *= 1e-3  # a near-constant feature keeps its small relative scale (no 1/std_d)
    s = standardize(t)
    assert torch.allclose(s.mean(0), torch.zeros(3), atol=1e-5)
    assert float(s.pow(2).mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(s[:, 2].std()) < 1e-2 < float(s[:, 0].std())
    assert torch.equal(standardize(torch.ones(4, 2)), torch.zeros(4, 2))  # dead feature -> 0
    est = GaussianEstimator(3, 3, 4)
    mask = torch.tensor([True] * 6 + [False] * 4)
    assert float(est.upper_bound(t, t * 2, mask)) == pytest.approx(
        float(est.upper_bound(t[:6], t[:6] * 2)), rel=1e-5)
    with pytest.raises(ValueError, match="inputs"):
        GaussianEstimator(3, 3, 4, "bogus")


def _follower_on_com(inputs: str, steps: int = 30) -> list[float]:
    """A follower (linear map of large non-negative pooled features, like convnet4's) trained
    by SGD on ``L_com`` alone (``alpha_com = 1``), ``q_phi`` refitted before each step."""
    torch.manual_seed(0)
    d, n = 128, 64
    proj = torch.randn(16, d)
    fol = torch.nn.Linear(32, d)
    est = GaussianEstimator(d, d, d, inputs)
    opt_e = torch.optim.SGD(est.parameters(), lr=2e-2, momentum=0.9)
    opt_f = torch.optim.SGD(fol.parameters(), lr=2e-2, momentum=0.9)
    norms = []
    for _ in range(steps):
        z = torch.randn(n, 16)
        x = torch.relu(z @ proj)
        y = fol(torch.cat([z, torch.randn(n, 16)], 1).abs() * 30 / 32**0.5)
        nll = est.nll(x, y.detach())
        opt_e.zero_grad()
        nll.backward()
        opt_e.step()
        com = est.upper_bound(x, y)
        opt_f.zero_grad()
        com.backward()
        opt_f.step()
        norms.append(float(y.detach().norm(dim=1).mean()))
    return norms


def test_follower_minimising_the_bound_keeps_its_scale() -> None:
    """The second CG-MNIST failure: with alpha_com ~ 1 the follower's features blew up (norm
    8 -> 355 in 3 steps) when ``L_com`` was summed over 512 normalised dimensions."""
    default, raw = _follower_on_com("standardize"), _follower_on_com("raw")
    assert max(default) < 1.2 * default[0]
    assert raw[-1] > 2.5 * raw[0]
