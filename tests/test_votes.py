"""Branch votes of a summed-logit model (``equimodal.eval.votes``) against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark_scripts import load_script
from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.engine.run import fit
from equimodal.eval.votes import branch_votes, top1_margin, weighted_sum_accuracy
from equimodal.registry import load_dataset

# Targets 0, 1, 2, 0. Gray predicts 0, 1, 2, 1 (right, right, right, wrong); color predicts
# 1, 1, 0, 0. Their sum predicts 1, 1, 0, 0: color outvotes gray on samples 0 and 2 and
# rescues sample 3.
TARGET = torch.tensor([0, 1, 2, 0])
GRAY = torch.tensor([[3.0, 0, 0], [0, 2, 0], [0, 0, 1], [0, 4, 0]])
COLOR = torch.tensor([[0.0, 5, 0], [0, 1, 0], [2, 0, 0], [6, 0, 0]])


def test_counts_margins_and_scale_by_hand() -> None:
    votes = branch_votes(GRAY + COLOR, {"gray": GRAY, "color": COLOR}, TARGET)
    assert votes["n"] == 4 and votes["fused_accuracy"] == pytest.approx(0.5)
    gray, color = votes["branches"]["gray"], votes["branches"]["color"]
    assert (gray["accuracy"], gray["outvoted"], gray["rescued"]) == (0.75, 2, 1)
    assert (color["accuracy"], color["outvoted"], color["rescued"]) == (0.5, 0, 0)
    # Margins 3, 2, 1, 4: torch's median of an even count is the lower middle value.
    assert gray["median_margin"] == pytest.approx(2.0)
    assert gray["median_margin_outvoted"] == pytest.approx(1.0)  # samples 0, 2: 3 and 1
    assert math.isnan(color["median_margin_outvoted"])
    # Row stds (unbiased) sqrt(3), 2/sqrt(3), 1/sqrt(3), 4/sqrt(3).
    assert gray["logit_std"] == pytest.approx(2.5 / math.sqrt(3))


def test_weighted_sum_reweights_one_branch() -> None:
    uni = {"gray": GRAY, "color": COLOR}
    assert weighted_sum_accuracy(uni, TARGET, {}) == pytest.approx(0.5)
    assert weighted_sum_accuracy(uni, TARGET, {"color": 0.0}) == pytest.approx(0.75)
    assert weighted_sum_accuracy(uni, TARGET, {"gray": 0.0}) == pytest.approx(0.5)
    # Half of color's vote: sums [3, 2.5, 0], [0, 2.5, 0], [1, 0, 1], [3, 4, 0].
    assert weighted_sum_accuracy(uni, TARGET, {"color": 0.5}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"unknown branch\(es\) \['audio'\]"):
        weighted_sum_accuracy(uni, TARGET, {"audio": 1.0})


def test_bad_input_names_the_branch() -> None:
    with pytest.raises(ValueError, match="no unimodal logits"):
        branch_votes(GRAY, {}, TARGET)
    with pytest.raises(ValueError, match=r"color: expected logits \[N=4, C>=2\]"):
        branch_votes(GRAY, {"gray": GRAY, "color": COLOR[:3]}, TARGET)
    with pytest.raises(ValueError, match="target: expected class indices"):
        branch_votes(GRAY, {"gray": GRAY}, TARGET[:, None])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), c=st.integers(2, 6), seed=st.integers(0, 2**16),
       scale=st.floats(0.1, 10.0))
def test_votes_properties(n: int, c: int, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, c, generator=gen), torch.randn(n, c, generator=gen)
    y = torch.randint(0, c, (n,), generator=gen)
    votes = branch_votes(a + b, {"a": a, "b": b}, y)
    fused_right = round(votes["fused_accuracy"] * n)
    for name, logits in (("a", a), ("b", b)):
        v = votes["branches"][name]
        # fused right = branch right - outvoted + rescued
        assert fused_right == round(v["accuracy"] * n) - v["outvoted"] + v["rescued"]
        assert v["median_margin"] >= 0
        # Margins and scale grow with the logits; the votes of one branch alone do not move.
        alone = branch_votes(scale * logits, {name: scale * logits}, y)["branches"][name]
        assert (alone["outvoted"], alone["rescued"]) == (0, 0)
        assert alone["logit_std"] == pytest.approx(scale * v["logit_std"], rel=1e-4)
    assert votes["fused_accuracy"] == pytest.approx(weighted_sum_accuracy({"a": a, "b": b}, y, {}))
    assert torch.all(top1_margin(a) >= 0)


def test_cgmnist_votes_script_reproduces_the_recorded_score(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The script reloads a run's selected model: its fused test accuracy is the recorded one."""
    data_cfg = {"n_train": 120, "n_valid": 60, "n_test": 60}
    cfg = RunConfig("sum", "synthetic", data=data_cfg, model=ModelConfig(hidden=16, layers=1),
                    train=TrainConfig(epochs=2, progress=False, device="cpu"))
    result = fit(cfg, tmp_path / "run")
    script = load_script("reproductions/cgmnist_votes.py", "cgmnist_votes")
    anchor = sorted(result.method.modalities_in_use)[0]
    valid_row, test_row = script.rows(tmp_path / "run", load_dataset("synthetic", **data_cfg),
                                      anchor)
    cells = [c.strip() for c in test_row.strip("|").split("|")]
    assert cells[1] == "test"
    assert float(cells[3]) == pytest.approx(100 * result.test["accuracy"], abs=0.006)
    assert valid_row.count("|") == test_row.count("|") == script.HEADER.count("|")
