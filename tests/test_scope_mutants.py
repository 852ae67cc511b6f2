"""SCOPE balanced fusion keeps its residual: ``z = hbar + A~ hbar`` (Sec. 4.3), in training
(in-batch graphs) and at inference against the reference bank (issue 18's mutant)."""

from __future__ import annotations

import torch

from equimodal.config import ModelConfig
from equimodal.methods.scope import Scope
from equimodal.methods.scope_modules import fused_graph
from equimodal.registry import create_method, load_dataset

DATA = {"n_classes": 3, "dim": 8, "latent": 4, "n_train": 64, "n_valid": 16, "n_test": 16}


def _method(**cfg: object) -> tuple[Scope, object]:
    data = load_dataset("synthetic", seed=0, **DATA)
    torch.manual_seed(0)
    m: Scope = create_method("scope", data.info, ModelConfig(hidden=16, layers=1), **cfg)
    return m, data


def test_in_batch_fusion_adds_diffused_features_to_hbar() -> None:
    m, data = _method()
    m.eval()
    batch = data.train.batch(torch.arange(40))  # type: ignore[attr-defined]
    with torch.no_grad():
        out = m(batch)
        hbar = out.extras["hbar"]
        _, mask = fused_graph(out.extras["graphs"], out.extras["rho"])
        assert m.net.propagate is not None
        want = hbar + m.net.propagate(hbar, mask)
    assert torch.allclose(out.fused, want, atol=1e-6)
    assert not torch.allclose(out.fused, want - hbar, atol=1e-3)


def test_zero_step_diffusion_doubles_hbar_in_batch_and_against_the_bank() -> None:
    """With T = 0 the diffusion operator is the identity, so ``z = hbar + hbar``."""
    m, data = _method(diffusion_steps=0, xi=0.5)
    batch = data.train.batch(torch.arange(40))  # type: ignore[attr-defined]
    m.eval()
    with torch.no_grad():
        out = m(batch)
        assert torch.allclose(out.fused, 2 * out.extras["hbar"], atol=1e-6)
        m.refresh_bank(data.train, 40)  # type: ignore[attr-defined]
        r = m.net.refine(batch)
        pred = m.predict(batch)
    assert torch.allclose(pred.fused, 2 * m.net.weighted(r.h, r.rho), atol=1e-6)
