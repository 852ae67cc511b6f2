"""Tests that kill mutmut survivors in the specification methods' loss code (issue 18;
docs/mutation.md): SCOPE's loss weights and running-mean normalisation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.losses.disentangle import similarity_surrogate
from equimodal.losses.graphs import graph_alignment_loss
from equimodal.methods.scope import Scope
from equimodal.registry import create_method, load_dataset

SCOPE_DATA = {"n_classes": 3, "dim": 8, "latent": 4, "n_train": 32, "n_valid": 8, "n_test": 8}


def _scope(**cfg: object) -> Scope:
    data = load_dataset("synthetic", seed=0, **SCOPE_DATA)
    torch.manual_seed(0)
    m: Scope = create_method("scope", data.info, ModelConfig(hidden=8, layers=1), **cfg)
    return m


def test_scope_fixed_weights_zero_the_inactive_terms() -> None:
    m = _scope(loss_weighting="fixed", fixed_weights=(0.5, 2.0, 3.0), use_align=False)
    phi = m.loss_weights(torch.tensor([1.0, 1.0, 1.0]))
    assert phi.tolist() == [0.5, 0.0, 3.0]


def test_scope_running_loss_means_start_at_the_first_value_then_follow_the_ema() -> None:
    m = _scope(loss_ema=0.75)
    m.train()
    first = torch.tensor([0.2, 0.05, 0.4])
    assert torch.allclose(m.normalized_ratios(first), torch.ones(3))  # Lbar <- L at step 1
    second = torch.tensor([0.6, 0.05, 0.8])
    mean = 0.75 * first + 0.25 * second
    assert torch.allclose(m.normalized_ratios(second), second / mean)
    assert torch.allclose(m.loss_mean, mean)
    # No update outside training or without gradients.
    with torch.no_grad():
        assert torch.allclose(m.normalized_ratios(first), first / mean)
    m.eval()
    assert torch.allclose(m.normalized_ratios(first), first / mean)
    assert torch.allclose(m.loss_mean, mean)


def test_scope_running_mean_is_floored_only_near_zero() -> None:
    m = _scope()
    m.train()
    m.normalized_ratios(torch.tensor([0.0, 1e-3, 2.0]))
    out = m.normalized_ratios(torch.tensor([0.0, 1e-3, 2.0]))
    assert out.tolist() == pytest.approx([0.0, 1.0, 1.0])


def _scope_terms(m: Scope) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    data = load_dataset("synthetic", seed=0, **SCOPE_DATA)
    batch = data.train.batch(torch.arange(16))
    names = list(batch.present)
    batch.present[names[1]][:5] = False
    batch.inputs[names[1]][:5] = 0
    m.train()
    out = m(batch)
    terms = m.compute_loss(batch, out, SimpleNamespace(stage=None))
    return batch, out, terms


def test_scope_loss_terms_respect_presence_and_the_configured_reduction() -> None:
    m = _scope(dis_reduction="mean")
    batch, out, terms = _scope_terms(m)
    h, present = out.extras["h"], out.extras["present"]
    assert not bool(present.all())
    sim, diff = similarity_surrogate(h, present, "mean")
    assert torch.allclose(terms["sim"], sim) and torch.allclose(terms["diff"], diff)
    assert torch.allclose(terms["align"], graph_alignment_loss(out.extras["graphs"], present))
    uni = sum(m.masked_task_loss(lg, batch.target, batch.present[n])
              for n, lg in out.unimodal_logits.items())
    assert torch.allclose(terms["uni"], uni)
    rho = out.extras["rho"].detach().mean(0)
    for i, name in enumerate(m.info.modality_names):
        assert torch.allclose(terms[f"rho_{name}"], rho[i])
    assert {"phi_dis", "phi_align", "phi_pred"} <= set(terms)


def test_scope_normalized_objective_value_and_phi_gradient() -> None:
    """Value ``sum sg(phi) L``; Phi's gradient comes from ``phi . sg(L / Lbar)`` only."""
    m = _scope(loss_weighting="normalized")
    m.loss_seen.fill_(True)  # a later step: Lbar differs from L, so L / Lbar is not constant
    m.loss_mean.copy_(torch.tensor([2.0, 0.5, 1.0]))
    _, _, terms = _scope_terms(m)
    parts = torch.stack([terms["dis"], terms["align"], terms["pred"]]).detach()
    phi = m.loss_weights(parts)
    value = (phi * parts).sum() + terms["uni"]
    assert float(terms["loss"].detach()) == pytest.approx(float(value.detach()), rel=1e-5)
    assert m.net.weighting is not None
    params = [p for p in m.net.weighting.parameters() if p.requires_grad]
    got = torch.autograd.grad(terms["loss"], params, allow_unused=True)
    ratio = parts / m.loss_mean
    want = torch.autograd.grad((m.loss_weights(parts) * ratio).sum(), params, allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in got)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None and w is not None:
            assert torch.allclose(g, w, atol=1e-6)
