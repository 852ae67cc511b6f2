"""Shared robustness protocols: missing-modality subsets, frame drop and feature noise."""

from __future__ import annotations

import pytest
import torch

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import evaluate, seed_everything
from equimodal.eval import (
    DEFAULT_RATES,
    add_noise,
    drop_frames,
    frame_drop_curve,
    missing_modality_table,
    modality_subsets,
    noise_curve,
)
from equimodal.registry import create_method, load_dataset


@pytest.fixture(scope="module")
def seq3() -> MultimodalData:
    """Three modalities: two sequences with random lengths, one vector."""
    seqs: MultimodalData = load_dataset(
        "synthetic", modalities=["a", "b"], strengths=[1.0, 0.5], n_classes=3, dim=5,
        latent=3, noise=0.5, seq_len=10, n_train=40, n_valid=20, n_test=300, seed=3,
    )
    vec: MultimodalData = load_dataset(
        "synthetic", modalities=["c"], strengths=[1.0], n_classes=3, dim=4, latent=3,
        noise=0.5, n_train=40, n_valid=20, n_test=300, seed=4,
    )
    for name in ("train", "valid", "test"):
        s, v = seqs.split(name), vec.split(name)
        s.inputs["c"], s.present["c"] = v.inputs["c"], v.present["c"]
    info = type(seqs.info)(seqs.info.kind, 3, {**seqs.info.modalities, **vec.info.modalities},
                           name="seq3")
    return MultimodalData(info, seqs.train, seqs.valid, seqs.test)


@pytest.fixture(scope="module")
def method(seq3: MultimodalData) -> torch.nn.Module:
    """An untrained but fixed concat model (evaluation needs only ``predict``)."""
    seed_everything(0)
    return create_method("concat", seq3.info, ModelConfig(hidden=8, layers=1))


def test_subsets_enumerate_every_nonempty_combination() -> None:
    subsets = modality_subsets(["x", "y", "z"])
    assert len(subsets) == 7 and len(set(subsets)) == 7
    assert subsets[:3] == [("x",), ("y",), ("z",)] and subsets[-1] == ("x", "y", "z")
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)


def test_missing_modality_table_rows_match_direct_evaluation(seq3, method) -> None:  # type: ignore[no-untyped-def]
    table = missing_modality_table(method, seq3.test, seq3.info)
    rows = {r["modalities"]: r for r in table["rows"]}
    assert set(rows) == {"a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"}
    assert [r["complete"] for r in table["rows"]].count(True) == 1
    clean = evaluate(method, seq3.test, seq3.info, unimodal=False)
    assert rows["a+b+c"]["accuracy"] == pytest.approx(clean["accuracy"])
    only_b = evaluate(method, seq3.test, seq3.info, modalities=["b"])
    assert rows["b"]["accuracy"] == pytest.approx(only_b["accuracy"])
    incomplete = [r["accuracy"] for r in table["rows"] if not r["complete"]]
    assert table["average"]["accuracy"] == pytest.approx(sum(incomplete) / 6)


def test_missing_table_skips_modalities_absent_from_the_split(seq3, method) -> None:  # type: ignore[no-untyped-def]
    split = seq3.test.subset(torch.arange(50))
    split.present["c"] = torch.zeros_like(split.present["c"])
    table = missing_modality_table(method, split, seq3.info)
    assert [r["modalities"] for r in table["rows"]] == ["a", "b", "a+b"]


def test_drop_rate_zero_equals_clean_evaluation(seq3, method) -> None:  # type: ignore[no-untyped-def]
    corrupted, frac = drop_frames(seq3.test, 0.0, seed=1)
    for name, x in seq3.test.inputs.items():
        assert torch.equal(corrupted.inputs[name], x)
    assert frac == {"a": 0.0, "b": 0.0}
    curve = frame_drop_curve(method, seq3.test, seq3.info, rates=(0.0, 0.5), seed=1)
    clean = evaluate(method, seq3.test, seq3.info, unimodal=False)
    assert curve["rows"][0]["accuracy"] == pytest.approx(clean["accuracy"])


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_removes_about_p_of_valid_frames_only(seq3, rate: float) -> None:
    split = seq3.test
    corrupted, frac = drop_frames(split, rate, seed=0)
    for name in ("a", "b"):
        x, y = split.inputs[name], corrupted.inputs[name]
        t = x.shape[1]
        valid = torch.arange(t)[None, :] < split.lengths[name][:, None]
        was_nonzero = x.abs().sum(-1) > 0
        zeroed = (y.abs().sum(-1) == 0) & was_nonzero
        measured = float(zeroed[valid].float().mean())
        assert measured == pytest.approx(rate, abs=0.04)
        assert frac[name] == pytest.approx(measured, abs=1e-6)
        kept = ~zeroed & valid
        assert torch.equal(y[kept], x[kept]), "kept frames must be untouched"
        assert torch.equal(y[~valid], x[~valid]), "padding must stay as it was"
    assert torch.equal(corrupted.inputs["c"], split.inputs["c"]), "vectors are not frames"


def test_drop_is_deterministic_and_nested_across_rates(seq3) -> None:  # type: ignore[no-untyped-def]
    a1, _ = drop_frames(seq3.test, 0.3, seed=7)
    a2, _ = drop_frames(seq3.test, 0.3, seed=7)
    b, _ = drop_frames(seq3.test, 0.3, seed=8)
    assert torch.equal(a1.inputs["a"], a2.inputs["a"])
    assert not torch.equal(a1.inputs["a"], b.inputs["a"])
    hi, _ = drop_frames(seq3.test, 0.6, seed=7)
    low_zero = a1.inputs["a"].abs().sum(-1) == 0
    hi_zero = hi.inputs["a"].abs().sum(-1) == 0
    assert bool((hi_zero | ~low_zero).all()), "a higher rate drops a superset of frames"
    only_b, _ = drop_frames(seq3.test, 0.3, seed=7, modalities=["b"])
    assert torch.equal(only_b.inputs["a"], seq3.test.inputs["a"])
    assert torch.equal(only_b.inputs["b"], a1.inputs["b"]), "draws independent of selection"


def test_frame_drop_curve_rows_average_and_determinism(seq3, method) -> None:  # type: ignore[no-untyped-def]
    c1 = frame_drop_curve(method, seq3.test, seq3.info, seed=2)
    c2 = frame_drop_curve(method, seq3.test, seq3.info, seed=2)
    assert c1 == c2
    assert [r["rate"] for r in c1["rows"]] == list(DEFAULT_RATES)
    fracs = [r["dropped_fraction"] for r in c1["rows"]]
    assert fracs == sorted(fracs) and fracs[0] == 0.0 and fracs[-1] > 0.8
    mean = sum(r["accuracy"] for r in c1["rows"]) / len(c1["rows"])
    assert c1["average"]["accuracy"] == pytest.approx(mean)
    assert "rate" not in c1["average"]


def test_frame_drop_needs_sequences(seq3, method) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="sequence"):
        frame_drop_curve(method, seq3.test, seq3.info, modalities=["c"])


def test_noise_level_zero_is_clean_and_scale_is_relative(seq3, method) -> None:  # type: ignore[no-untyped-def]
    split = seq3.test
    same = add_noise(split, 0.0, seed=0)
    assert all(torch.equal(same.inputs[n], split.inputs[n]) for n in split.inputs)
    noisy = add_noise(split, 0.5, seed=0, modalities=["c"])
    diff = noisy.inputs["c"] - split.inputs["c"]
    ratio = diff.std(0) / split.inputs["c"].std(0, unbiased=False)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5), atol=0.08)
    assert torch.equal(noisy.inputs["a"], split.inputs["a"])
    seq_noisy = add_noise(split, 1.0, seed=0, modalities=["a"])
    pad = ~(torch.arange(10)[None, :] < split.lengths["a"][:, None])
    assert torch.equal(seq_noisy.inputs["a"][pad], split.inputs["a"][pad])
    curve = noise_curve(method, split, seq3.info, levels=(0.0, 1.0), seed=0)
    clean = evaluate(method, split, seq3.info, unimodal=False)
    assert curve["rows"][0]["accuracy"] == pytest.approx(clean["accuracy"])
    assert curve == noise_curve(method, split, seq3.info, levels=(0.0, 1.0), seed=0)
