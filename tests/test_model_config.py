"""Per-modality encoder choice and arguments (`model.encoders`, `model.encoder_kwargs`)."""

from __future__ import annotations

import pytest

from equimodal.config import ModelConfig, RunConfig, apply_overrides
from equimodal.models import build_multimodal_model
from equimodal.models.encoders import MLPEncoder
from equimodal.models.resnet import ResNet18Encoder
from equimodal.types import ModalitySpec, TaskInfo


def _info() -> TaskInfo:
    mods = {"img": ModalitySpec("img", 64), "txt": ModalitySpec("txt", 10)}
    return TaskInfo(name="toy", kind="classification", num_outputs=3, modalities=mods)


def test_encoders_and_kwargs_apply_per_modality() -> None:
    cfg = apply_overrides(RunConfig(), [
        'model.encoders={"img": "resnet18"}',
        'model.encoder_kwargs={"img": {"image_shape": [1, 8, 8], "width": 0.125}, '
        '"*": {}}'])
    model = build_multimodal_model(_info(), cfg.model)
    img, txt = model.encoders["img"], model.encoders["txt"]
    assert isinstance(img, ResNet18Encoder) and img.image_shape == (1, 8, 8)
    assert isinstance(txt, MLPEncoder)


def test_unknown_modality_or_argument_is_an_error() -> None:
    with pytest.raises(KeyError, match="unknown modality 'image'"):
        build_multimodal_model(_info(), ModelConfig(encoders={"image": "resnet18"}))
    with pytest.raises(ValueError, match="takes no argument"):
        build_multimodal_model(_info(), ModelConfig(encoder_kwargs={"txt": {"width": 2}}))


def test_empty_per_modality_settings_keep_earlier_digests() -> None:
    base = RunConfig()
    assert "encoders" not in base.identity()["model"]
    changed = RunConfig(model=ModelConfig(encoders={"img": "mlp"}))
    assert changed.digest() != base.digest()
