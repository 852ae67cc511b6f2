"""Encoders and fusions: unimodal splits, masking, registry coverage."""

from __future__ import annotations

import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.models import build_multimodal_model
from equimodal.models.encoders import Conv1dEncoder, MLPEncoder, TransformerEncoder
from equimodal.registry import FUSIONS


def test_concat_unimodal_logits_sum_to_fused(tiny_data) -> None:  # type: ignore[no-untyped-def]
    model = build_multimodal_model(tiny_data.info, ModelConfig(fusion="concat"))
    out = model(tiny_data.train.full_batch())
    total = sum(out.unimodal_logits.values())
    assert torch.allclose(total, out.logits, atol=1e-5)


def test_sum_unimodal_logits_sum_to_fused(tiny_data) -> None:  # type: ignore[no-untyped-def]
    model = build_multimodal_model(tiny_data.info, ModelConfig(fusion="sum"))
    out = model(tiny_data.train.full_batch())
    assert torch.allclose(sum(out.unimodal_logits.values()), out.logits, atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_fusion_ignores_absent_modality_values(tiny_data, fusion: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_multimodal_model(tiny_data.info, ModelConfig(fusion=fusion)).eval()
    batch = tiny_data.test.full_batch().with_modalities(["a"])
    noisy = batch.with_modalities(["a"])
    noisy.inputs["b"] = torch.randn_like(noisy.inputs["b"])  # garbage where absent
    assert torch.allclose(model(batch).logits, model(noisy).logits, atol=1e-5)


@pytest.mark.parametrize("cls", [MLPEncoder, Conv1dEncoder, TransformerEncoder])
def test_sequence_encoders_ignore_padding(cls: type) -> None:
    torch.manual_seed(0)
    enc = cls(5, 16, 2).eval()
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 5, 3, 1])
    pad = torch.arange(7)[None, :] >= lengths[:, None]
    x_other = x.clone()
    x_other[pad] = 100.0
    x[pad] = 0.0
    assert torch.allclose(enc(x, lengths), enc(x_other, lengths), atol=1e-4)
