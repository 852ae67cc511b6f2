"""Batched audio features in torch: WAV reading, log-mel spectrograms, MFCCs, noise.

Everything works on a whole batch of equal-length (zero-padded) signals at once: one
``torch.stft`` call, one filterbank matmul, one DCT matmul. No torchaudio / librosa.

Conventions (the same as :mod:`equimodal.data.formats.audio`, whose WAV reader and HTK mel
filterbank are reused): Hann window of ``win_ms``, hop of ``hop_ms``, FFT size the next power
of two of the window, centred frames (``1 + samples // hop`` frames), power spectrum,
area-normalised triangular mel filters, natural log with a floor ``eps``, MFCC = orthonormal
DCT-II of the log-mel frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from equimodal.data.formats.audio import hz_to_mel, mel_filterbank, mel_to_hz, read_wav

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


def frame_params(
    sample_rate: int, win_ms: float = 25.0, hop_ms: float = 10.0
) -> tuple[int, int, int]:
    """Window, hop and FFT sizes in samples for a sample rate.

    Returns:
        ``(win, hop, n_fft)`` with ``n_fft`` the next power of two ``>= win``.
    """
    win = max(1, round(sample_rate * win_ms / 1000.0))
    hop = max(1, round(sample_rate * hop_ms / 1000.0))
    return win, hop, 1 << (win - 1).bit_length()


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


def log_mel_batch(
    x: Tensor,
    sample_rate: int,
    n_mels: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    fmin: float = 0.0,
    fmax: float | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Log-mel spectrograms of a batch of equal-length signals.

    Args:
        x: ``[B, N]`` float signals (zero-padded to a common length).
        sample_rate: Their rate in Hz.
        n_mels: Mel bands.
        win_ms: Hann window length in ms.
        hop_ms: Hop in ms.
        fmin: Lowest filter edge in Hz.
        fmax: Highest filter edge in Hz (default Nyquist).
        eps: Floor added to the mel power before the log.

    Returns:
        ``[B, T, n_mels]`` with ``T = 1 + N // hop`` centred frames.
    """
    win, hop, n_fft = frame_params(sample_rate, win_ms, hop_ms)
    if x.dim() != 2:
        raise ValueError(f"expected [B, N] signals, got shape {tuple(x.shape)}")
    if x.shape[1] <= n_fft // 2:  # reflect padding needs more than half a window
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.shape[1]))
    window = torch.hann_window(win, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      return_complex=True)  # [B, F, T]
    power = spec.real.pow(2) + spec.imag.pow(2)
    fb = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)).to(x)
    mel = torch.einsum("mf,bft->btm", fb, power)
    return torch.log(mel + eps)


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
