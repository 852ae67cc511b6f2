"""PMR's four-layer ``convnet`` for CG-MNIST, registered as the ``convnet4`` encoder.

PMR (Fan et al., CVPR 2023; reference code fanyunfeng-bit/Modal-Imbalance-PMR,
``models/basic_model.py``, class ``convnet``) and UDI (App. A.4/A.5: "a specialized encoder
containing four convolutional layers and one average pooling layer") encode each CG-MNIST
modality with the same small network, checked layer by layer against the reference::

    BN(C) -> conv5x5(C->32, pad 2) -> ReLU -> maxpool3x3/2 (pad 1)      28x28 -> 14x14
          -> conv3x3(32->32, pad 1) -> ReLU
          -> conv3x3(32->64, stride 2, pad 1) -> ReLU                     14x14 -> 7x7
          -> conv3x3(64->64, pad 1) -> ReLU -> avgpool7 -> fc(64 -> 512)

Convs keep their biases (the reference leaves ``bias=True``); there is no BN after the convs
and no activation after ``fc``. ``hidden`` replaces the reference's 512 (set
``model.hidden=512`` for the paper: 100,390 parameters with ``C = 3``, 98,786 with ``C = 1``).

Modalities arrive flattened (``[B, D]``, channel-major): the encoder views each vector as
``(C, H, W)`` without copying. Sequences ``[B, T, D]`` are encoded per frame and mean-pooled
over valid frames, as :class:`~equimodal.models.resnet.ResNet18Encoder` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from equimodal.models.encoders import length_mask, masked_mean
from equimodal.models.resnet import infer_image_shape
from equimodal.registry import ENCODERS

__all__ = ["ConvNet4Encoder", "convnet_image_shape"]


def convnet_image_shape(
    in_dim: int, image_shape: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """``(C, H, W)`` of a flattened image: given, or inferred as 1- or 3-channel square.

    Args:
        in_dim: Flattened size D.
        image_shape: ``(C, H, W)`` with ``C * H * W == D``; ``None``: ``(1, s, s)`` when
            ``D = s^2``, else ``(3, s, s)`` when ``D = 3 s^2`` (a channel-major RGB image).

    Raises:
        ValueError: ``image_shape`` is malformed, or ``D`` fits neither default.
    """
    if image_shape is None and in_dim % 3 == 0 and math.isqrt(in_dim) ** 2 != in_dim:
        side = math.isqrt(in_dim // 3)
        if side > 0 and 3 * side * side == in_dim:
            return (3, side, side)
    return infer_image_shape(in_dim, image_shape)


@ENCODERS.register("convnet4", "PMR's CG-MNIST convnet: input BN, 4 convs, avgpool, fc")
class ConvNet4Encoder(nn.Module):
    """PMR's ``convnet`` (see the module docstring for the layer list).

    Args:
        in_dim: Flattened image size D (``C * H * W``).
        hidden: Output feature size (the reference's 512).
        layers: Accepted for :func:`~equimodal.models.encoders.build_encoder` compatibility
            (``model.layers``); ignored, the depth is fixed.
        dropout: Dropout on the pooled features before ``fc`` (the reference has none).
        image_shape: ``(C, H, W)``; ``None`` infers ``(1, s, s)`` or ``(3, s, s)``.
        channels_last: Run the convs in ``torch.channels_last`` memory format (faster
            oneDNN kernels on CPU for some shapes; numerically the same network).
        init: ``"pmr"`` (default): the reference's ``weight_init`` (PMR ``utils/utils.py``,
            applied by its ``main_*`` scripts to the whole model): Kaiming-normal convs
            (``fan_out``, ReLU; biases kept), Xavier-normal ``fc`` with zero bias, BN 1/0.
            ``"torch"``: PyTorch's default init. Measured on CG-MNIST (SGD lr 1e-3, 10k
            images): with ``"torch"`` the gray branch was still at chance (CE 2.29) after
            624 steps, because the default init shrinks activations ~2.4x per conv layer.

    Raises:
        ValueError: a bad ``image_shape`` or ``init``, or images smaller than 8x8 (the
            stride-2 stages need ``H, W >= 8`` for a non-empty 7x7-style pooling window).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int = 512,
        layers: int = 4,
        dropout: float = 0.0,
        image_shape: Sequence[int] | None = None,
        channels_last: bool = False,
        init: str = "pmr",
    ) -> None:
        super().__init__()
        del layers  # fixed depth
        self.image_shape = convnet_image_shape(in_dim, image_shape)
        c, h, w = self.image_shape
        if min(h, w) < 8:
            raise ValueError(f"convnet4 encoder: images must be at least 8x8, got {h}x{w}")
        self.channels_last = channels_last
        self.trunk = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.Conv2d(c, 32, kernel_size=5, stride=1, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(32, 32, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True),
        )
        # The reference's AvgPool2d(7, stride=1) is a global mean on 28x28 inputs (7x7 maps);
        # a global mean keeps other sizes working and is identical there.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(64, hidden)
        self.out_dim = hidden
        if init == "pmr":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        elif init != "torch":
            raise ValueError(f"convnet4 encoder: init must be 'pmr' or 'torch', got {init!r}")
        if channels_last:
            # Module.to accepts memory_format at run time; its typing stub omits it.
            self.trunk.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _check_dim(self, x: Tensor) -> None:
        d = math.prod(self.image_shape)
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise ValueError(f"convnet4 encoder expects [B, D] or [B, T, D] with D={d} "
                             f"(image_shape={self.image_shape}), got {tuple(x.shape)}")

    def encode_images(self, img: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, hidden]``."""
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        z = self.trunk(img).mean(dim=(2, 3))
        return self.fc(self.dropout(z))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Features ``[B, hidden]`` (sequences: mean over valid frames)."""
        self._check_dim(x)
        if x.dim() == 2:
            return self.encode_images(x.view(x.shape[0], *self.image_shape))
        b, t, _ = x.shape
        mask = length_mask(lengths, t, b, x.device)
        out = x.new_zeros(b, t, self.out_dim)
        if bool(mask.any()):
            frames = x[mask]
            out[mask] = self.encode_images(frames.view(frames.shape[0], *self.image_shape))
        return masked_mean(out, mask)
