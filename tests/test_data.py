"""Data model: validation errors, determinism, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equimodal.data.dataset import BatchLoader, DataError, make_split
from equimodal.registry import load_dataset


def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    a = load_dataset("synthetic", n_train=50, n_valid=10, n_test=10, seed=3)
    b = load_dataset("synthetic", n_train=50, n_valid=10, n_test=10, seed=3)
    c = load_dataset("synthetic", n_train=50, n_valid=10, n_test=10, seed=4)
    assert torch.equal(a.train.inputs["a"], b.train.inputs["a"])
    assert not torch.equal(a.train.inputs["a"], c.train.inputs["a"])


def test_synthetic_modality_names_come_from_arguments() -> None:
    d = load_dataset("synthetic", modalities="audio,video,text", strengths=[1, 0.5, 0.2],
                     n_train=20, n_valid=10, n_test=10)
    assert d.info.modality_names == ["audio", "video", "text"]


def test_synthetic_strength_controls_unimodal_signal() -> None:
    from sklearn.linear_model import LogisticRegression

    d = load_dataset("synthetic", strengths=[2.0, 0.1], n_train=600, n_test=400, seed=0)
    scores = {}
    for m in d.info.modality_names:
        clf = LogisticRegression(max_iter=500).fit(d.train.inputs[m], d.train.target)
        scores[m] = clf.score(d.test.inputs[m], d.test.target)
    assert scores["a"] > scores["b"] + 0.2


def test_synthetic_missing_keeps_one_modality_and_zero_fills() -> None:
    d = load_dataset("synthetic", missing=0.5, n_train=200, n_valid=10, n_test=10)
    pres = torch.stack([d.train.present[m] for m in d.info.modality_names], 1)
    assert pres.any(1).all() and (~pres).any()
    absent = ~d.train.present["a"]
    assert (d.train.inputs["a"][absent] == 0).all()


def test_sequence_lengths_and_padding() -> None:
    d = load_dataset("synthetic", seq_len=10, n_train=50, n_valid=10, n_test=10)
    x, lens = d.train.inputs["a"], d.train.lengths["a"]
    assert x.shape[1] == 10 and lens.min() >= 5 and lens.max() <= 10
    t = torch.arange(10)[None, :]
    assert (x[t.expand(50, -1) >= lens[:, None]] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": {"a": np.zeros((4, 3))}, "target": [0, 1, 2]}, "sample counts differ"),
        ({"inputs": {"a": np.full((3, 2), np.nan)}, "target": [0, 1, 1]}, "NaN/inf"),
        ({"inputs": {"a": np.zeros((3, 2))}, "target": [0, 1, 5]}, "out of range"),
        ({"inputs": {"a": np.zeros((3,))}, "target": [0, 1, 1]}, "must be [N, D]"),
    ],
)
def test_make_split_errors_name_source_and_field(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError) as err:
        make_split(task="classification", num_outputs=3, source="f.npz", split="valid", **kwargs)
    assert message in str(err.value) and "f.npz [valid]" in str(err.value)


def test_loader_covers_every_sample_once(tiny_data) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    loader = BatchLoader(tiny_data.train, 32, shuffle=True, generator=gen)
    seen = torch.cat([b.index for b in loader])
    assert sorted(seen.tolist()) == list(range(len(tiny_data.train)))
    assert len(loader) == 5


def test_with_modalities_masks_and_zeros(tiny_data) -> None:  # type: ignore[no-untyped-def]
    b = tiny_data.train.full_batch().with_modalities(["a"])
    assert b.present["a"].all() and not b.present["b"].any()
    assert (b.inputs["b"] == 0).all()


def test_unknown_dataset_suggests_close_name() -> None:
    with pytest.raises(KeyError, match="did you mean synthetic"):
        load_dataset("synthtic")
