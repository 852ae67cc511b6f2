"""One implementation per job: the log-mel spectrogram, the registered format-loader factories
and the method checks that the bench and ``create_method`` share (issue 16)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from equimodal.data import audio
from equimodal.data.builtin import formats_registry
from equimodal.data.dataset import DataError
from equimodal.data.formats import audio as format_audio
from equimodal.registry import (
    DATASETS,
    UnsupportedTaskError,
    create_method,
    load_dataset,
    method_config,
)
from fixtures_formats import mmsa_split, write_pickle


def _previous_log_mel(x: np.ndarray, sr: int, n_mels: int) -> np.ndarray:
    """The second implementation before issue 16 (power ``|z|^2``, matrix product)."""
    win, hop, n_fft = format_audio.frame_params(sr)
    sig = torch.from_numpy(x)
    if sig.numel() <= n_fft // 2:
        sig = torch.nn.functional.pad(sig, (0, n_fft // 2 + 1 - sig.numel()))
    spec = torch.stft(sig, n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win), center=True, return_complex=True)
    fb = torch.from_numpy(format_audio.mel_filterbank(sr, n_fft, n_mels))
    return torch.log(fb @ spec.abs().pow(2) + 1e-6).T.numpy()


@pytest.mark.parametrize(("n", "sr", "n_mels"),
                         [(8000, 8000, 40), (4800, 16000, 64), (90, 16000, 32)])
def test_both_former_log_mel_call_sites_give_identical_arrays(
        n: int, sr: int, n_mels: int) -> None:
    assert audio.log_mel_batch is format_audio.log_mel_batch  # one implementation, re-exported
    assert audio.frame_params is format_audio.frame_params
    x = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    single = format_audio.log_mel(x, sr, n_mels)  # CREMA-D's call site
    batched = audio.log_mel_batch(torch.from_numpy(x)[None], sr, n_mels)  # AV-MNIST's
    assert single.dtype == np.float32 and single.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(single, batched[0].numpy())
    # In a larger batch a signal's spectrogram may differ by float rounding (batched matmul).
    pair = audio.log_mel_batch(torch.from_numpy(np.stack([x, x[::-1].copy()])), sr, n_mels)
    np.testing.assert_allclose(single, pair[0].numpy(), rtol=0, atol=2e-6)
    # The numbers moved by float32 rounding of |z|^2 vs re^2 + im^2 only.
    np.testing.assert_allclose(single, _previous_log_mel(x, sr, n_mels), rtol=0, atol=2e-6)


def test_clip_log_mel_is_the_batched_log_mel_of_the_padded_clip() -> None:
    x = np.sin(np.arange(4000) * 0.05).astype(np.float32)  # 0.5 s at 8 kHz
    feats, valid = format_audio.clip_log_mel(x, 8000, sample_rate=8000, max_seconds=1.0,
                                             n_mels=20)
    buf = np.zeros(8000, dtype=np.float32)
    buf[:4000] = x
    expect = audio.log_mel_batch(torch.from_numpy(buf)[None], 8000, 20)[0].numpy()
    np.testing.assert_array_equal(feats, expect)
    assert valid == 1 + 4000 // 80 and feats.shape == (101, 20)


FACTORIES = [("generic", "load_generic"), ("mmsa", "load_mmsa"), ("iemocap", "load_iemocap"),
             ("cremad", "load_cremad")]


@pytest.mark.parametrize(("name", "loader"), FACTORIES)
def test_every_loader_argument_is_reachable_through_the_registered_factory(
        name: str, loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = getattr(formats_registry, loader)
    factory = DATASETS.get(name)
    loader_args = list(inspect.signature(real).parameters)
    factory_args = inspect.signature(factory).parameters
    assert set(loader_args) <= set(factory_args)  # what check_kwargs and `help` read
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in factory_args.values())
    seen: dict[str, Any] = {}

    def record(path: Any, *args: Any, **kwargs: Any) -> str:
        seen.update(dict(zip(loader_args[1:], args, strict=False)), path=path, **kwargs)
        return "loaded"

    monkeypatch.setattr(formats_registry, loader, record)
    values = {arg: f"<{arg}>" for arg in loader_args}
    assert factory(**values) == "loaded"
    assert {k: str(v) for k, v in seen.items()} == values  # each argument arrived, unchanged


def test_mmsa_check_range_is_reachable_from_a_run_config(tmp_path: Path) -> None:
    data = {s: mmsa_split(8, i) for i, s in enumerate(("train", "valid", "test"))}
    data["train"]["regression_labels"][0] = 5.0  # outside MOSI's [-3, 3]
    path = str(write_pickle(tmp_path / "mosi" / "aligned.pkl", data))
    with pytest.raises(DataError, match="outside"):
        load_dataset("mmsa", path=path)
    loaded = load_dataset("mmsa", path=path, check_range=False)
    assert float(loaded.train.target.max()) == 5.0
    with pytest.raises(KeyError, match="check_rang"):  # unknown names still fail, listed
        load_dataset("mmsa", path=path, check_rang=False)


def test_method_config_is_create_methods_check_and_names_the_refusal() -> None:
    info = load_dataset("synthetic", task="regression", n_train=16, n_valid=8, n_test=8).info
    cls, cfg = method_config("concat", info)
    assert cls.name == "concat" and isinstance(cfg, cls.Config)
    with pytest.raises(UnsupportedTaskError, match="does not support regression") as err:
        method_config("ogm_ge", info)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedTaskError, match="does not support regression"):
        create_method("ogm_ge", info)
    with pytest.raises(KeyError, match="no_such_field"):  # a bad config is not a refusal
        method_config("concat", info, no_such_field=1)
