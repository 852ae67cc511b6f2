"""WAV reading and log-mel spectrograms (numpy filterbank + ``torch.stft``), no downloads."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch

from equimodal.data.dataset import DataError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 in [-1, 1].

    PCM files (8/16/24/32-bit) go through the standard library ``wave`` module; other
    encodings (e.g. IEEE float) fall back to ``scipy.io.wavfile``.

    Returns:
        ``(samples, sample_rate)``.

    Raises:
        DataError: naming the file when it is missing or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        with wave.open(str(p), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
        x = _pcm_to_float(raw, width)
    except (wave.Error, EOFError, ValueError):
        x, rate, channels = _read_scipy(p)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32), int(rate)


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    if width == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    raise ValueError(f"unsupported sample width {width}")


def _read_scipy(p: Path) -> tuple[np.ndarray, int, int]:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(p)
    except (ValueError, OSError) as err:
        raise DataError(f"{p}: not a readable WAV file ({err})") from err
    x = np.asarray(data)
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    elif x.dtype.kind == "u":
        x = (x.astype(np.float32) - 128.0) / 128.0
    channels = x.shape[1] if x.ndim == 2 else 1
    return x.reshape(-1).astype(np.float32), int(rate), channels


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling from ``rate`` to ``target`` Hz (identity when equal)."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return np.asarray(resample_poly(x, target // g, rate // g), dtype=np.float32)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` with area normalisation.

    Filter ``i`` rises from mel point ``i`` to ``i + 1`` and falls to ``i + 2`` on an HTK
    mel grid between ``fmin`` and ``fmax``; each is scaled by ``2 / bandwidth`` so bands of
    different width carry comparable energy.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    width = np.diff(hz)
    ramps = hz[:, None] - freqs[None, :]
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return fb.astype(np.float32)


def log_mel(
    x: np.ndarray,
    sample_rate: int,
    n_mels: int = 64,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    eps: float = 1e-6,
) -> np.ndarray:
    """Log-mel spectrogram ``[frames, n_mels]`` of a mono signal.

    Args:
        x: ``[samples]`` float signal.
        sample_rate: Its rate in Hz.
        n_mels: Mel bands.
        win_ms: Hann window length in milliseconds (FFT size: next power of two).
        hop_ms: Hop in milliseconds; frames = ``1 + samples // hop`` (centred frames).
        eps: Floor added before the log.
    """
    win = max(1, round(sample_rate * win_ms / 1000.0))
    hop = max(1, round(sample_rate * hop_ms / 1000.0))
    n_fft = 1 << (win - 1).bit_length()
    sig = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if sig.numel() <= n_fft // 2:
        # reflect padding needs more samples than half a window.
        sig = torch.nn.functional.pad(sig, (0, n_fft // 2 + 1 - sig.numel()))
    spec = torch.stft(sig, n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win), center=True, return_complex=True)
    power = spec.abs().pow(2)  # [freq, frames]
    fb = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels))
    mel = fb @ power
    return torch.log(mel + eps).T.contiguous().numpy()


def clip_log_mel(
    x: np.ndarray,
    rate: int,
    sample_rate: int = 16000,
    max_seconds: float = 3.0,
    n_mels: int = 64,
) -> tuple[np.ndarray, int]:
    """Fixed-size log-mel of a clip: resampled, cut or zero-padded to ``max_seconds``.

    Returns:
        ``([frames, n_mels], valid_frames)``: frames past the clip's end are padding.
    """
    x = resample(x, rate, sample_rate)
    n = max(1, round(max_seconds * sample_rate))
    valid = min(len(x), n)
    buf = np.zeros(n, dtype=np.float32)
    buf[:valid] = x[:valid]
    feats = log_mel(buf, sample_rate, n_mels)
    hop = max(1, round(sample_rate * 0.010))
    return feats, min(feats.shape[0], 1 + valid // hop)
