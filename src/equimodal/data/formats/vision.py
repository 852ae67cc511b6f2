"""Image features without downloads: normalised downsampled pixels, or a fixed random conv."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from equimodal.data.dataset import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# ImageNet channel statistics: the usual normalisation of RGB inputs.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An RGB image resized to ``size x size``, normalised, as ``[3, size, size]`` float32.

    Raises:
        DataError: naming the file when it is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        with Image.open(p) as im:
            # JPEG draft mode decodes at a reduced scale (>= 2x the target): much faster
            # on full-size video frames, and a no-op for other formats.
            im.draft("RGB", (2 * size, 2 * size))
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{p}: not a readable image ({err})") from err
    return ((arr - MEAN) / STD).transpose(2, 0, 1).copy()


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    f = Path(folder)
    if not f.is_dir():
        return []
    return sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` indices at the centres of ``n`` equal segments of ``range(total)``.

    All of them when ``total <= n``.
    """
    if total <= n:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def frame_stack(files: Sequence[Path], n: int, size: int) -> tuple[np.ndarray, int]:
    """Sample ``n`` frames uniformly and stack them as ``[n, 3 * size * size]``.

    Returns:
        The zero-padded stack and the number of real frames.
    """
    idx = uniform_indices(len(files), n)
    out = np.zeros((n, 3 * size * size), dtype=np.float32)
    for j, i in enumerate(idx):
        out[j] = load_image(files[i], size).reshape(-1)
    return out, len(idx)


class TinyConv(nn.Module):
    """Three strided conv layers with global average pooling: ``[B, 3, S, S] -> [B, width]``.

    Random-initialised from a fixed seed (no weights to download): a random conv net keeps
    local structure that raw pixels lose, which suffices as a frozen featuriser for tests
    and quick baselines.
    """

    def __init__(self, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, width // 2, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]``."""
        out: torch.Tensor = self.net(x).mean(dim=(2, 3))
        return out


def conv_features(images: np.ndarray, width: int = 64, seed: int = 0) -> np.ndarray:
    """Apply :class:`TinyConv` to ``[B, 3 * S * S]`` (or ``[B, 3, S, S]``) images."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.dim() == 2:
        side = int(round((x.shape[1] / 3) ** 0.5))
        x = x.reshape(-1, 3, side, side)
    with torch.no_grad():
        return TinyConv(width, seed)(x).numpy()
