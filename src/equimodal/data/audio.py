"""Batched audio features in torch: WAV reading, log-mel spectrograms, MFCCs, noise.

Everything works on a whole batch of equal-length (zero-padded) signals at once: one
``torch.stft`` call, one filterbank matmul, one DCT matmul. No torchaudio / librosa.

Conventions (those of :mod:`equimodal.data.formats.audio`, whose WAV reader, HTK mel
filterbank and :func:`log_mel_batch`, the one log-mel implementation, are re-exported here):
Hann window of ``win_ms``, hop of ``hop_ms``, FFT size the next power of two of the window,
centred frames (``1 + samples // hop`` frames), power spectrum, area-normalised triangular mel
filters, natural log with a floor ``eps``, MFCC = orthonormal DCT-II of the log-mel frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from equimodal.data.formats.audio import (
    frame_params,
    hz_to_mel,
    log_mel_batch,
    mel_to_hz,
    read_wav,
)

__all__ = [
    "add_noise",
    "dct_matrix",
    "frame_lengths",
    "frame_params",
    "log_mel_batch",
    "masked_mean_std",
    "mel_band_centers",
    "mfcc_from_log_mel",
    "pad_signals",
    "peak_normalize",
    "read_wav",
]


def frame_lengths(n_samples: np.ndarray | Tensor | int, hop: int) -> np.ndarray:
    """Valid centred frames of signals with ``n_samples`` samples: ``1 + n // hop``."""
    return 1 + np.asarray(n_samples, dtype=np.int64) // hop


def pad_signals(signals: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut or zero-pad 1-d signals to one length.

    Args:
        signals: Mono float signals of any lengths.
        length: Output length in samples.

    Returns:
        ``([B, length] float32, [B] valid sample counts)``.
    """
    out = np.zeros((len(signals), length), dtype=np.float32)
    valid = np.zeros(len(signals), dtype=np.int64)
    for i, x in enumerate(signals):
        n = min(len(x), length)
        out[i, :n] = x[:n]
        valid[i] = n
    return out, valid


def peak_normalize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Scale a signal to a peak absolute value of 1 (silence stays silent)."""
    return (x / max(float(np.abs(x).max(initial=0.0)), eps)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise to a signal at a signal-to-noise ratio in dB.

    Args:
        x: ``[N]`` signal.
        snr_db: Signal-to-noise ratio in dB (lower is noisier).
        rng: Seeded generator (reproducible noise).
    """
    power = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    scale = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x + rng.normal(0.0, scale, x.shape)).astype(np.float32)


def mel_band_centers(
    sample_rate: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Centre frequency in Hz of each band of :func:`log_mel_batch`'s filterbank."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    mels = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    return np.asarray(mel_to_hz(mels[1:-1]))


def dct_matrix(n_in: int, n_out: int) -> Tensor:
    """Orthonormal DCT-II basis ``[n_in, n_out]`` (``frames @ basis`` gives coefficients)."""
    n = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mfcc_from_log_mel(log_mel: Tensor, n_mfcc: int = 13) -> Tensor:
    """MFCCs ``[..., n_mfcc]`` from log-mel frames ``[..., n_mels]`` (orthonormal DCT-II)."""
    return log_mel @ dct_matrix(log_mel.shape[-1], n_mfcc).to(log_mel)


def masked_mean_std(x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over the first ``lengths`` frames of ``[B, T, D]``.

    Returns:
        ``([B, D], [B, D])``; a sequence of length 0 gives zeros.
    """
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x)
    count = mask.sum(1).clamp_min(1.0)[:, None]
    mean = (x * mask[..., None]).sum(1) / count
    var = ((x - mean[:, None, :]).pow(2) * mask[..., None]).sum(1) / count
    return mean, var.sqrt()
