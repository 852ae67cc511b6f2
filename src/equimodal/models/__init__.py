"""Encoders, fusion modules and the generic multimodal model."""

from equimodal.models.convnet import ConvNet4Encoder as ConvNet4Encoder  # registers convnet4
from equimodal.models.encoders import Conv1dEncoder, MLPEncoder, TransformerEncoder, build_encoder
from equimodal.models.fusion import (
    ConcatFusion,
    FiLMFusion,
    Fusion,
    FusionOutput,
    GatedFusion,
    LateFusion,
    SumFusion,
    build_fusion,
)
from equimodal.models.multimodal import MultimodalModel, build_encoders, build_multimodal_model
from equimodal.models.resnet import ResNet18Encoder as ResNet18Encoder  # registers resnet18

__all__ = [
    "ConcatFusion",
    "Conv1dEncoder",
    "FiLMFusion",
    "Fusion",
    "FusionOutput",
    "GatedFusion",
    "LateFusion",
    "MLPEncoder",
    "MultimodalModel",
    "SumFusion",
    "TransformerEncoder",
    "build_encoder",
    "build_encoders",
    "build_fusion",
    "build_multimodal_model",
]
