"""Per-modality encoders. Each maps ``[B, D]`` or ``[B, T, D]`` (+ lengths) to ``[B, H]``;
sequence encoders can also return per-frame features ``[B, T, H]`` via ``forward_sequence``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from equimodal.registry import ENCODERS
from equimodal.types import ModalitySpec


def length_mask(lengths: Tensor | None, t: int, batch: int, device: torch.device) -> Tensor:
    """Boolean ``[B, T]`` mask of valid frames (all valid when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(batch, t, dtype=torch.bool, device=device)
    return torch.arange(t, device=device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [B, T, H]`` over valid frames of ``mask [B, T]`` (zero for empty rows)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


@ENCODERS.register("mlp", "Multi-layer perceptron; sequences are mean-pooled over valid frames")
class MLPEncoder(nn.Module):
    """MLP encoder: Linear-ReLU(-Dropout) x layers.

    Args:
        in_dim: Input feature size.
        hidden: Output feature size H.
        layers: Number of linear layers (>= 1).
        dropout: Dropout after each hidden activation.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(max(1, layers)):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            if dropout > 0:
                mods.append(nn.Dropout(dropout))
            d = hidden
        self.net = nn.Sequential(*mods)
        self.out_dim = hidden

    def forward_sequence(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Frame-wise features ``[B, T, H]`` (or ``[B, 1, H]`` for vectors)."""
        return self.net(x if x.dim() == 3 else x.unsqueeze(1))

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, H]``."""
        if x.dim() == 2:
            return self.net(x)
        h = self.net(x)
        return masked_mean(h, length_mask(lengths, x.shape[1], x.shape[0], x.device))


@ENCODERS.register("conv1d", "Temporal Conv1d stack with masked mean pooling")
class Conv1dEncoder(nn.Module):
    """Temporal convolution encoder for ``[B, T, D]`` sequences (vectors are length-1).

    Args:
        in_dim: Frame feature size.
        hidden: Output feature size H.
        layers: Number of Conv1d layers.
        kernel_size: Temporal kernel size (odd keeps lengths).
        dropout: Dropout after each layer.
    """

    def __init__(
        self, in_dim: int, hidden: int, layers: int = 2, kernel_size: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(max(1, layers)):
            mods += [nn.Conv1d(d, hidden, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if dropout > 0:
                mods.append(nn.Dropout(dropout))
            d = hidden
        self.net = nn.Sequential(*mods)
        self.out_dim = hidden

    def forward_sequence(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Frame-wise features ``[B, T, H]``; padded frames are zeroed."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        mask = length_mask(lengths, x.shape[1], x.shape[0], x.device)
        h = self.net((x * mask.unsqueeze(-1)).transpose(1, 2)).transpose(1, 2)
        return h * mask.unsqueeze(-1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, H]``."""
        h = self.forward_sequence(x, lengths)
        t = h.shape[1]
        return masked_mean(h, length_mask(lengths, t, h.shape[0], h.device))


@ENCODERS.register("transformer", "Small Transformer encoder with masked mean pooling")
class TransformerEncoder(nn.Module):
    """Input projection + learned positions + ``nn.TransformerEncoder`` + masked mean pooling.

    Args:
        in_dim: Frame feature size.
        hidden: Model width H (divisible by ``heads``).
        layers: Transformer layers.
        heads: Attention heads.
        dropout: Dropout inside the transformer.
        max_len: Longest sequence supported by the positional table.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        max_len: int = 1024,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.pos = nn.Parameter(torch.zeros(1, max_len, hidden))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, max(1, layers), enable_nested_tensor=False)
        self.out_dim = hidden

    def forward_sequence(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Frame-wise features ``[B, T, H]``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        b, t, _ = x.shape
        mask = length_mask(lengths, t, b, x.device)
        # A sample with no valid frame (missing modality) would make attention NaN: keep frame 0.
        mask = mask.clone()
        mask[:, 0] = True
        h = self.proj(x) + self.pos[:, :t]
        return self.encoder(h, src_key_padding_mask=~mask) * mask.unsqueeze(-1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, H]``."""
        h = self.forward_sequence(x, lengths)
        mask = length_mask(lengths, h.shape[1], h.shape[0], h.device).clone()
        mask[:, 0] = True
        return masked_mean(h, mask)


def build_encoder(
    spec: ModalitySpec,
    kind: str = "auto",
    hidden: int = 64,
    layers: int = 2,
    dropout: float = 0.0,
    heads: int = 4,
    seq_encoder: str = "transformer",
    extra: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build an encoder for one modality; ``auto`` = MLP for vectors, ``seq_encoder`` otherwise.

    Args:
        spec: The modality (its feature size, vector or sequence).
        kind: Registered encoder name or ``auto``.
        hidden: Output feature size H.
        layers: Depth.
        dropout: Dropout inside the encoder.
        heads: Attention heads (transformer).
        seq_encoder: Encoder for sequences under ``auto``.
        extra: Further keyword arguments of the encoder's constructor (e.g. ``image_shape``).

    Raises:
        ValueError: ``extra`` names an argument the encoder does not take.
    """
    if kind == "auto":
        kind = seq_encoder if spec.is_sequence else "mlp"
    cls = ENCODERS.get(kind)
    kwargs = dict(extra or {})
    if kwargs:
        accepted = inspect.signature(cls).parameters
        unknown = sorted(k for k in kwargs if k not in accepted)
        if unknown:
            raise ValueError(f"model.encoder_kwargs for modality {spec.name!r}: encoder "
                             f"{kind!r} takes no argument(s) {unknown}")
    if cls is TransformerEncoder:
        kwargs.setdefault("max_len", max(spec.seq_len or 1, 1))
        return TransformerEncoder(spec.dim, hidden, layers, heads, dropout, **kwargs)
    module: nn.Module = cls(spec.dim, hidden, layers, dropout=dropout, **kwargs)
    return module
