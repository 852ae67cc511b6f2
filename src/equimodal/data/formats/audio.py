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


def log_mel_batch(
    x: torch.Tensor,
    sample_rate: int,
    n_mels: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    fmin: float = 0.0,
    fmax: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Log-mel spectrograms of a batch of equal-length signals (the one log-mel in equimodal).

    Hann window of ``win_ms``, hop of ``hop_ms``, FFT size the next power of two of the
    window, centred frames, power spectrum ``re^2 + im^2``, area-normalised HTK mel filters
    (:func:`mel_filterbank`), natural log with a floor ``eps``.

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


def log_mel(
    x: np.ndarray,
    sample_rate: int,
    n_mels: int = 64,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    eps: float = 1e-6,
) -> np.ndarray:
    """Log-mel spectrogram ``[frames, n_mels]`` of a mono signal: :func:`log_mel_batch` of a
    batch of one.

    Until issue 16 this was a second implementation whose power spectrum was ``|z|^2``;
    ``re^2 + im^2`` differs from it by float32 rounding only (at most ~5e-7 on the log-mel).

    Args:
        x: ``[samples]`` float signal.
        sample_rate: Its rate in Hz.
        n_mels: Mel bands.
        win_ms: Hann window length in milliseconds (FFT size: next power of two).
        hop_ms: Hop in milliseconds; frames = ``1 + samples // hop`` (centred frames).
        eps: Floor added before the log.
    """
    sig = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return log_mel_batch(sig[None], sample_rate, n_mels, win_ms, hop_ms,
                         eps=eps)[0].contiguous().numpy()


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
    _, hop, _ = frame_params(sample_rate)
    return feats, min(feats.shape[0], 1 + valid // hop)
