"""Tests that kill mutmut survivors in the specification methods' loss code (issue 18;
docs/mutation.md): SCOPE's loss weights and running-mean normalisation."""

from __future__ import annotations

import pytest
import torch

from equimodal.config import ModelConfig
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
