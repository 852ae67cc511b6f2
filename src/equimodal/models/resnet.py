"""From-scratch ResNet-18 encoder for image-like modalities (spectrograms, video frames).

OGM-GE (Peng et al., CVPR 2022) and the balanced-multimodal papers that follow it train a
ResNet-18 from scratch on each modality: a 1-channel audio spectrogram and a few 3-channel
video frames whose per-frame features are pooled over time. Modalities in this toolkit arrive
flattened (``[B, D]`` or ``[B, T, D]``), so the encoder reshapes each vector to an image
``(C, H, W)``, runs the 2D trunk per frame and mean-pools frame features over valid frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from equimodal.models.encoders import length_mask, masked_mean
from equimodal.registry import ENCODERS

__all__ = ["BasicBlock", "ResNet18Encoder", "infer_image_shape"]

#: Channel widths of the four ResNet-18 stages before the ``width`` multiplier.
BASE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
#: BasicBlocks per stage of ResNet-18.
BLOCKS: tuple[int, int, int, int] = (2, 2, 2, 2)


def infer_image_shape(
    in_dim: int, image_shape: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """Validate ``image_shape`` against the flattened modality size, or infer it.

    Args:
        in_dim: Flattened modality (or frame) size D.
        image_shape: ``(C, H, W)`` with ``C * H * W == D``; ``None`` treats a perfect square
            ``D = s * s`` as a 1-channel ``(1, s, s)`` image (a spectrogram-like default).

    Returns:
        The ``(C, H, W)`` tuple.

    Raises:
        ValueError: ``image_shape`` is malformed or does not multiply to ``D``, or it is
            absent and ``D`` is not a perfect square.
    """
    if image_shape is None:
        side = math.isqrt(in_dim) if in_dim > 0 else 0
        if side * side != in_dim or side == 0:
            raise ValueError(
                f"resnet18 encoder: modality dim D={in_dim} is not a perfect square, so the "
                "image shape cannot be inferred; pass image_shape=(C, H, W) with C*H*W == "
                f"{in_dim}"
            )
        return (1, side, side)
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or any(v <= 0 for v in shape):
        raise ValueError(
            f"resnet18 encoder: image_shape must be three positive ints (C, H, W), got "
            f"{tuple(image_shape)!r}"
        )
    c, h, w = shape
    if c * h * w != in_dim:
        raise ValueError(
            f"resnet18 encoder: image_shape={shape} has C*H*W={c * h * w} but the modality "
            f"dim is D={in_dim}"
        )
    return (c, h, w)


class BasicBlock(nn.Module):
    """ResNet BasicBlock: two 3x3 conv-BN layers plus an identity or 1x1-projection shortcut.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        stride: Stride of the first conv (2 halves the resolution at stage starts).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        # bias=False: each conv is followed by BatchNorm, whose shift makes a bias redundant
        # (and keeps the parameter count equal to the reference ResNet-18).
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_ch, H, W] -> [N, out_ch, H / stride, W / stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


@ENCODERS.register(
    "resnet18", "From-scratch ResNet-18 on reshaped images; frames mean-pooled (OGM-GE style)"
)
class ResNet18Encoder(nn.Module):
    """ResNet-18 trained from scratch, as OGM-GE uses for spectrograms and video frames.

    A vector ``[B, D]`` is reshaped to ``[B, C, H, W]``; a sequence ``[B, T, D]`` is a clip of
    ``T`` frames, each encoded by the same 2D trunk, and the frame features are averaged over
    the valid frames given by ``lengths`` (OGM-GE pools its visual features over frames).
    Layout: stem, four stages of ``[2, 2, 2, 2]`` BasicBlocks with widths
    ``(64, 128, 256, 512) * width``, BatchNorm, global average pooling, then ``Linear`` to
    ``hidden``. With ``width=1`` and the ImageNet stem the trunk (all but the final Linear)
    has exactly the reference ResNet-18 parameter count (11,176,512 for 3 input channels).

    Args:
        in_dim: Flattened image (frame) size D.
        hidden: Output feature size H.
        layers: Accepted for :func:`~equimodal.models.encoders.build_encoder` compatibility
            (``model.layers``); ignored, ResNet-18's depth is fixed.
        dropout: Dropout on the pooled trunk features before the projection.
        image_shape: ``(C, H, W)`` with ``C * H * W == D``; ``None`` infers ``(1, s, s)``
            when ``D = s * s``.
        width: Channel multiplier of the four stages (``1.0`` = standard ResNet-18).
        stem: ``imagenet`` (7x7 stride-2 conv + 3x3 max-pool, as OGM-GE) or ``cifar``
            (3x3 stride-1 conv, no pooling; keeps resolution for tiny images).

    Raises:
        ValueError: Bad ``image_shape`` (see :func:`infer_image_shape`), ``width <= 0`` or
            an unknown ``stem``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        layers: int = 2,
        dropout: float = 0.0,
        image_shape: Sequence[int] | None = None,
        width: float = 1.0,
        stem: Literal["imagenet", "cifar"] = "imagenet",
    ) -> None:
        super().__init__()
        del layers  # fixed depth; see the docstring
        if width <= 0:
            raise ValueError(f"resnet18 encoder: width must be > 0, got {width}")
        self.image_shape = infer_image_shape(in_dim, image_shape)
        chans = [max(1, round(c * width)) for c in BASE_WIDTHS]
        c_in = self.image_shape[0]
        stem_mods: list[nn.Module]
        if stem == "imagenet":
            stem_mods = [
                nn.Conv2d(c_in, chans[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(chans[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
        elif stem == "cifar":
            stem_mods = [
                nn.Conv2d(c_in, chans[0], 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(chans[0]),
                nn.ReLU(inplace=True),
            ]
        else:
            raise ValueError(f"resnet18 encoder: stem must be 'imagenet' or 'cifar', got {stem!r}")
        stages: list[nn.Module] = []
        prev = chans[0]
        for i, (ch, n) in enumerate(zip(chans, BLOCKS, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                # Stages 2-4 halve the resolution in their first block, as in ResNet-18.
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(prev, ch, stride))
                prev = ch
            stages.append(nn.Sequential(*blocks))
        #: Stem + four stages + global average pooling: ``[N, C, H, W] -> [N, 512 * width]``.
        self.trunk = nn.Sequential(*stem_mods, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(prev, hidden)
        self.out_dim = hidden
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for ReLU convs and unit/zero BN, as the reference ResNet; from-scratch
        # training (no pretrained weights) is what OGM-GE does.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_dim(self, x: Tensor) -> None:
        # A wrong size would otherwise surface as an opaque reshape error deep in the trunk.
        d = math.prod(self.image_shape)
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise ValueError(
                f"resnet18 encoder expects [B, D] or [B, T, D] with D={d} "
                f"(image_shape={self.image_shape}), got {tuple(x.shape)}"
            )

    def _encode_frames(self, frames: Tensor) -> Tensor:
        """``[N, D] -> [N, H]``: reshape each flattened frame to an image and encode it."""
        img = frames.reshape(frames.shape[0], *self.image_shape)
        return self.proj(self.dropout(self.trunk(img)))

    def forward_sequence(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-frame features ``[B, T, H]`` (``[B, 1, H]`` for vectors); padded frames are zero.

        Only valid frames go through the trunk, so padding neither leaks into the features
        nor into BatchNorm's batch statistics during training.
        """
        self._check_dim(x)
        if x.dim() == 2:
            x = x.unsqueeze(1)
        b, t, _ = x.shape
        mask = length_mask(lengths, t, b, x.device)
        out = x.new_zeros(b, t, self.out_dim)
        if bool(mask.any()):
            out[mask] = self._encode_frames(x[mask]).to(out.dtype)
        return out

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, H]``: mean of frame features over valid frames."""
        if x.dim() == 2:
            self._check_dim(x)
            return self._encode_frames(x)
        h = self.forward_sequence(x, lengths)
        return masked_mean(h, length_mask(lengths, h.shape[1], h.shape[0], h.device))
