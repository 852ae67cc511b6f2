"""``losses/nce.py`` against explicit loops: cosine logits, InfoNCE reductions and masks."""

from __future__ import annotations

import math

import pytest
import torch

from equimodal.losses.nce import cosine_logits, info_nce


def _loop(a: torch.Tensor, p: torch.Tensor, tau: float, keep: list[bool]) -> list[float]:
    out = []
    for i in range(a.shape[0]):
        if not keep[i]:
            out.append(0.0)
            continue
        sims = [float(torch.dot(a[i], p[k]) / (a[i].norm() * p[k].norm())) / tau
                for k in range(p.shape[0]) if keep[k]]
        own = float(torch.dot(a[i], p[i]) / (a[i].norm() * p[i].norm())) / tau
        out.append(-own + math.log(sum(math.exp(s) for s in sims)))
    return out


def test_cosine_logits_match_a_loop_and_reject_bad_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    got = cosine_logits(a, p, 0.5)
    assert got.shape == (4, 5)
    for i in range(4):
        for k in range(5):
            ref = float(torch.dot(a[i], p[k]) / (a[i].norm() * p[k].norm())) / 0.5
            assert float(got[i, k]) == pytest.approx(ref, abs=1e-5)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError):
            cosine_logits(a, p, bad)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_info_nce_matches_a_loop_with_reductions_and_mask(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, generator=g)
    p = a + 0.7 * torch.randn(6, 4, generator=g)
    full = _loop(a, p, tau, [True] * 6)
    assert torch.allclose(info_nce(a, p, tau, reduction="none"), torch.tensor(full), atol=1e-4)
    assert float(info_nce(a, p, tau)) == pytest.approx(sum(full) / 6, abs=1e-4)
    assert float(info_nce(a, p, tau, reduction="sum")) == pytest.approx(sum(full), abs=1e-4)
    keep = [True, False, True, True, False, True]
    mask = torch.tensor(keep)
    part = _loop(a, p, tau, keep)
    got = info_nce(a, p, tau, mask=mask, reduction="none")
    assert torch.allclose(got, torch.tensor(part), atol=1e-4)
    assert float(info_nce(a, p, tau, mask=mask)) == pytest.approx(sum(part) / 4, abs=1e-4)
    assert float(info_nce(a, p, tau, mask=mask, reduction="sum")) == pytest.approx(sum(part),
                                                                                  abs=1e-4)
    # Masked rows equal dropping them.
    drop = info_nce(a[mask], p[mask], tau)
    assert float(info_nce(a, p, tau, mask=mask)) == pytest.approx(float(drop), abs=1e-5)
    none = torch.zeros(6, dtype=torch.bool)
    assert float(info_nce(a, p, tau, mask=none)) == 0.0


def test_info_nce_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        info_nce(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError):
        info_nce(torch.randn(3), torch.randn(3))


def test_info_nce_defaults_are_tau_0_1_and_mean() -> None:
    g = torch.Generator().manual_seed(2)
    a, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    want = sum(_loop(a, p, 0.1, [True] * 5)) / 5
    assert float(info_nce(a, p)) == pytest.approx(want, abs=1e-4)
    assert float(cosine_logits(a, p)[0, 1]) == pytest.approx(
        float(torch.dot(a[0], p[1]) / (a[0].norm() * p[1].norm())) / 0.1, abs=1e-4)
