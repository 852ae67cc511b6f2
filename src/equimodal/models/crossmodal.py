"""Sequence building blocks of the multimodal sentiment analysis (MSA) baselines.

Directional cross-modal transformers as in MulT (Tsai et al., ACL 2019), used by ``mult``
and ``dmd``: a stream ``src -> tgt`` lets every frame of the target modality attend to the
(unaligned) frames of the source modality, so its output has the target's length. Also:
per-modality temporal Conv1d projections, last-valid-step pooling, MulT's residual output
head, and the LSTM utterance encoders of MISA / Self-MM, all length- and padding-aware.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from equimodal.models.encoders import length_mask
from equimodal.types import Batch, TaskInfo


def sinusoidal_table(t: int, d: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fairseq sinusoidal positions ``[t, d]`` (positions 1..t, sin half then cos half), the
    table MulT adds to its scaled inputs."""
    half = d // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freq = torch.exp(torch.arange(half, device=device, dtype=dtype) * -scale)
    ang = torch.arange(1, t + 1, device=device, dtype=dtype)[:, None] * freq[None, :]
    table = torch.cat([ang.sin(), ang.cos()], dim=1)
    if d % 2:
        table = F.pad(table, (0, 1))
    return table


def future_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """MulT's optional "future" mask ``[t_q, t_k]`` (True = blocked): query ``i`` may see keys
    ``j <= i + |t_k - t_q|``, so key 0 is always visible."""
    i = torch.arange(t_q, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return j > i + abs(t_k - t_q)


def last_valid(h: Tensor, mask: Tensor) -> Tensor:
    """Feature of the last valid frame: ``h [B, T, d]``, prefix ``mask [B, T]`` -> ``[B, d]``
    (frame 0 for rows without a valid frame)."""
    idx = (mask.long().sum(1) - 1).clamp_min(0)
    return h[torch.arange(h.shape[0], device=h.device), idx]


def masked_pool(h: Tensor, mask: Tensor, how: str = "mean") -> Tensor:
    """``last`` valid frame or ``mean`` over valid frames of ``h [B, T, d]``."""
    if how == "last":
        return last_valid(h, mask)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def modality_masks(batch: Batch, names: Sequence[str]) -> dict[str, Tensor]:
    """Valid-frame masks ``[B, T_m]`` per modality: within the length and modality present
    (a missing modality has no valid frame, so nobody attends to its zeros)."""
    out = {}
    for n in names:
        x = batch.inputs[n]
        b, t = x.shape[0], (x.shape[1] if x.dim() == 3 else 1)
        mask = length_mask(batch.lengths.get(n), t, b, x.device)
        out[n] = mask & batch.present[n].bool()[:, None]
    return out


class TemporalProjection(nn.Module):
    """Per-modality temporal Conv1d ``D_m -> d`` (vectors are length-1 sequences).

    Padded frames are zeroed before the kernel (so they cannot leak into valid frames) and
    after it. ``same`` padding keeps every length.

    Args:
        info: Task description (modality dims).
        dim: Output width ``d``.
        kernel: Temporal kernel size (odd keeps the alignment with the input frames).
        when_needed: Identity when ``D_m == d`` (MulT / DMD reference code) instead of
            always convolving.
    """

    def __init__(self, info: TaskInfo, dim: int, kernel: int = 1, when_needed: bool = True
                 ) -> None:
        super().__init__()
        if kernel < 1:
            raise ValueError(f"kernel must be >= 1, got {kernel}")
        self.proj = nn.ModuleDict()
        for n, spec in info.modalities.items():
            self.proj[n] = (nn.Identity() if when_needed and spec.dim == dim else
                            nn.Conv1d(spec.dim, dim, kernel, padding=kernel // 2, bias=False))

    def forward(self, x: Tensor, mask: Tensor, name: str) -> Tensor:
        """Project ``x [B, T, D]`` (or ``[B, D]``) of modality ``name`` -> ``[B, T, d]``."""
        x = x.unsqueeze(1) if x.dim() == 2 else x
        m = mask.to(x.dtype).unsqueeze(-1)
        proj = self.proj[name]
        h = x * m if isinstance(proj, nn.Identity) else proj((x * m).transpose(1, 2))
        h = h if isinstance(proj, nn.Identity) else h.transpose(1, 2)
        return h[:, : x.shape[1]] * m


class CrossmodalLayer(nn.Module):
    """One MulT transformer layer (pre-norm): ``x += Attn(LN x, LN kv); x += FFN(LN x)``.

    As in MulT the query and the keys/values share the first LayerNorm; the FFN is
    ``d -> 4d -> d`` with ReLU.

    Args:
        dim: Width ``d``.
        heads: Attention heads (must divide ``dim``).
        attn_dropout: Dropout on attention weights.
        relu_dropout: Dropout after the FFN's ReLU.
        res_dropout: Dropout on both residual branches.
    """

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.relu_dropout = relu_dropout
        self.res_dropout = res_dropout

    def forward(self, x: Tensor, kv: Tensor | None, key_pad: Tensor, has_keys: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        """``x [B, Tq, d]`` attends to ``kv [B, Tk, d]`` (itself when ``None``);
        ``key_pad [B, Tk]`` is True on ignored keys; ``has_keys [B]`` zeroes the attention
        update of rows that have no key at all."""
        q = self.norm_attn(x)
        k = q if kv is None else self.norm_attn(kv)
        att, _ = self.attn(q, k, k, key_padding_mask=key_pad, attn_mask=attn_mask,
                           need_weights=False)
        att = F.dropout(att, self.res_dropout, self.training) * has_keys.to(x.dtype)[:, None, None]
        x = x + att
        h = F.dropout(F.relu(self.fc1(self.norm_ff(x))), self.relu_dropout, self.training)
        return x + F.dropout(self.fc2(h), self.res_dropout, self.training)


class CrossmodalEncoder(nn.Module):
    """MulT's TransformerEncoder: ``sqrt(d)``-scaled inputs + sinusoidal positions + embed
    dropout, a stack of :class:`CrossmodalLayer` and a final LayerNorm.

    With ``kv`` it is a directional cross-modal transformer (queries: target frames,
    keys/values: source frames); without it, a self-attention transformer.

    Args:
        dim: Width ``d``.
        heads: Attention heads.
        layers: Number of layers.
        attn_dropout: Dropout on attention weights.
        relu_dropout: FFN dropout.
        res_dropout: Residual dropout.
        embed_dropout: Dropout on the scaled, position-encoded inputs.
        causal: Apply MulT's future mask (:func:`future_mask`).
    """

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0,
                 embed_dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.embed_dropout = embed_dropout
        self.causal = causal
        self.layers = nn.ModuleList(
            CrossmodalLayer(dim, heads, attn_dropout, relu_dropout, res_dropout)
            for _ in range(max(1, layers))
        )
        self.norm = nn.LayerNorm(dim)

    def _embed(self, x: Tensor) -> Tensor:
        pos = sinusoidal_table(x.shape[1], self.dim, x.device, x.dtype)
        return F.dropout(math.sqrt(self.dim) * x + pos, self.embed_dropout, self.training)

    def forward(self, x: Tensor, q_mask: Tensor, kv: Tensor | None = None,
                kv_mask: Tensor | None = None) -> Tensor:
        """Encode ``x [B, Tq, d]`` (valid frames ``q_mask``) against ``kv [B, Tk, d]`` (valid
        frames ``kv_mask``) or itself; returns ``[B, Tq, d]`` (padded query frames are
        computed but meaningless: pool with the mask)."""
        keys_valid = q_mask if kv is None else kv_mask
        if keys_valid is None:
            raise ValueError("kv_mask is required with kv")
        has_keys = keys_valid.any(1)
        # A row without any valid key would give NaN attention: unmask key 0 there and drop
        # the attention update of that row (has_keys) instead.
        key_pad = ~keys_valid
        key_pad[~has_keys, 0] = False
        h = self._embed(x)
        kv_h = None if kv is None else self._embed(kv)
        mask = None
        if self.causal:
            mask = future_mask(x.shape[1], h.shape[1] if kv_h is None else kv_h.shape[1],
                               x.device)
        for layer in self.layers:
            h = layer(h, kv_h, key_pad, has_keys, mask)
        return self.norm(h)


class MulTStreams(nn.Module):
    """MulT's directional pairwise cross-modal transformers and per-target memory.

    For every ordered pair ``src -> tgt`` (``src != tgt``) one :class:`CrossmodalEncoder`
    (its own parameters: ``a -> b`` and ``b -> a`` are different networks) refines the
    target sequence with the source; the ``M - 1`` streams of a target are concatenated
    (width ``(M - 1) d``) and a self-attention "memory" transformer runs over them.

    Args:
        names: Modality names (data order).
        dim: Per-stream width ``d``.
        heads: Attention heads (must divide ``d``).
        layers: Layers per cross-modal transformer.
        mem_layers: Layers of each memory transformer.
        attn_dropout: Attention dropout of streams whose target is ``primary`` and of the
            memory transformers (MulT's ``attn_dropout``).
        attn_dropout_other: Attention dropout of streams targeting another modality
            (MulT's ``attn_dropout_a`` / ``attn_dropout_v``).
        relu_dropout: FFN dropout.
        res_dropout: Residual dropout.
        embed_dropout: Input dropout inside every transformer.
        primary: The text-like modality.
        causal: Future mask in every transformer.
        targets: Target modalities that get streams and a memory (``None``: all; MulT's
            ``lonly`` / ``aonly`` / ``vonly`` ablation keeps one, Table 3 ``[V,A -> L]``).
    """

    def __init__(self, names: Sequence[str], dim: int, heads: int, layers: int, mem_layers: int,
                 attn_dropout: float = 0.1, attn_dropout_other: float = 0.0,
                 relu_dropout: float = 0.1, res_dropout: float = 0.1,
                 embed_dropout: float = 0.25, primary: str | None = None,
                 causal: bool = False, targets: Sequence[str] | None = None) -> None:
        super().__init__()
        self.names = list(names)
        if len(self.names) < 2:
            raise ValueError("cross-modal streams need at least two modalities")
        self.targets = self.names if targets is None else [t for t in self.names if t in targets]
        if targets is not None and (not self.targets or set(targets) - set(self.names)):
            raise ValueError(f"targets {list(targets)} must be a non-empty subset of {self.names}")
        primary = primary or self.names[0]
        self.cross = nn.ModuleDict()
        self.memory = nn.ModuleDict()
        m = len(self.names)
        for tgt in self.targets:
            drop = attn_dropout if tgt == primary else attn_dropout_other
            for src in self.names:
                if src != tgt:
                    self.cross[self.key(src, tgt)] = CrossmodalEncoder(
                        dim, heads, layers, drop, relu_dropout, res_dropout, embed_dropout, causal)
            self.memory[tgt] = CrossmodalEncoder(
                (m - 1) * dim, heads, mem_layers, attn_dropout, relu_dropout, res_dropout,
                embed_dropout, causal)
        self.out_dim = (m - 1) * dim

    @staticmethod
    def key(src: str, tgt: str) -> str:
        """ModuleDict key of the stream ``src -> tgt``."""
        return f"{src}->{tgt}"

    def stream(self, src: str, tgt: str, seqs: dict[str, Tensor], masks: dict[str, Tensor]
               ) -> Tensor:
        """Target ``tgt`` refined by source ``src``: ``[B, T_tgt, d]``."""
        block = self.cross[self.key(src, tgt)]
        out: Tensor = block(seqs[tgt], masks[tgt], seqs[src], masks[src])
        return out

    def forward(self, seqs: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Memory outputs per target ``[B, T_tgt, (M - 1) d]``."""
        out = {}
        for tgt in self.targets:
            streams = [self.stream(src, tgt, seqs, masks) for src in self.names if src != tgt]
            out[tgt] = self.memory[tgt](torch.cat(streams, dim=-1), masks[tgt])
        return out


class ResidualHead(nn.Module):
    """MulT's output block: ``h = x + W2 Dropout(ReLU(W1 x))``, ``y = W_out h``.

    Args:
        dim: Input width (kept by the residual block).
        out_dim: Output size.
        dropout: Dropout after the ReLU (MulT's ``out_dropout``).
    """

    def __init__(self, dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, out_dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(W1 x, h, y)``: the first projection, the residual output and the prediction."""
        z = self.proj1(x)
        h = x + self.proj2(F.dropout(F.relu(z), self.dropout, self.training))
        return z, h, self.out(h)


def _packed(x: Tensor, mask: Tensor) -> tuple[nn.utils.rnn.PackedSequence, Tensor]:
    # Rows without a valid frame (missing modality) still need length >= 1 to be packed.
    lengths = mask.long().sum(1).clamp(1, x.shape[1]).cpu()
    return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), lengths


class LastStateLSTM(nn.Module):
    """Self-MM's ``AuViSubNet``: a packed LSTM over valid frames, its final hidden state,
    dropout and a linear layer.

    Args:
        in_dim: Frame size.
        hidden: LSTM hidden size.
        out_dim: Output size.
        dropout: Dropout on the final state.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, T, D]`` with valid frames ``mask [B, T]`` -> ``[B, out_dim]``."""
        packed, _ = _packed(x, mask)
        _, (h, _) = self.rnn(packed)
        out: Tensor = self.linear(self.dropout(h[-1]))
        return out


class StackedBiLSTM(nn.Module):
    """MISA's utterance encoder: two bidirectional LSTMs with a LayerNorm in between; the
    final states of both layers and both directions are concatenated (``4 * hidden``).

    Args:
        in_dim: Frame size.
        hidden: Hidden size of each direction (MISA: the input size).
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.rnn2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 4 * hidden

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, T, D]`` with valid frames ``mask [B, T]`` -> ``[B, 4 * hidden]``."""
        packed, lengths = _packed(x, mask)
        out1, (h1, _) = self.rnn1(packed)
        pad1, _ = pad_packed_sequence(out1, batch_first=True, total_length=x.shape[1])
        packed2 = pack_padded_sequence(self.norm(pad1), lengths, batch_first=True,
                                       enforce_sorted=False)
        _, (h2, _) = self.rnn2(packed2)
        # h: [directions, B, hidden] -> [B, 2 * hidden] per layer (forward then backward).
        return torch.cat([h1.transpose(0, 1).flatten(1), h2.transpose(0, 1).flatten(1)], dim=1)
