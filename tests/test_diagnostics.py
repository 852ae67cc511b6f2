"""Diagnostics: Shapley modality contributions, modality gap, Dirichlet hook, protocol
report, and the ``robustness`` / ``diagnose`` commands."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

from equimodal.cli import main
from equimodal.config import ModelConfig, RunConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import evaluate, fit
from equimodal.eval.diagnostics import (
    collect_embeddings,
    dirichlet_diagnostics,
    modality_contributions,
    modality_gap,
    protocol_report,
    shapley_values,
)
from equimodal.losses.graphs import dirichlet_energy
from equimodal.registry import load_dataset

IMBALANCED = {"strengths": [2.0, 0.15], "noise": 0.7, "dim": 8, "latent": 4, "n_classes": 3,
              "n_train": 240, "n_valid": 80, "n_test": 120, "seed": 4}


def _game(players: list[str], value) -> dict[frozenset[str], float]:  # type: ignore[no-untyped-def]
    return {frozenset(c): value(set(c)) for k in range(len(players) + 1)
            for c in combinations(players, k)}


def test_shapley_of_additive_game_is_each_players_worth() -> None:
    worth = {"a": 0.5, "b": 0.2, "c": -0.1}
    phi = shapley_values(_game(list(worth), lambda s: sum(worth[p] for p in s)), list(worth))
    assert phi == pytest.approx(worth)


def test_shapley_symmetry_and_efficiency() -> None:
    players = ["a", "b", "c"]
    # Only the grand coalition is worth anything: symmetric players share it equally.
    phi = shapley_values(_game(players, lambda s: 1.0 if len(s) == 3 else 0.0), players)
    assert phi == pytest.approx({p: 1 / 3 for p in players})
    # An asymmetric game: a glove market (a owns a left glove, b and c right ones).
    v = _game(players, lambda s: 1.0 if "a" in s and ({"b", "c"} & s) else 0.0)
    phi = shapley_values(v, players)
    assert phi == pytest.approx({"a": 2 / 3, "b": 1 / 6, "c": 1 / 6})
    assert sum(phi.values()) == pytest.approx(v[frozenset(players)] - v[frozenset()])
    with pytest.raises(KeyError):
        shapley_values({frozenset(): 0.0}, ["a"])


def test_modality_gap_values_masks_and_shapes() -> None:
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    # Normalisation removes scale: identical directions have no gap.
    assert modality_gap({"a": x, "b": 5 * x}) == {"a|b": pytest.approx(0.0)}
    gap = modality_gap({"a": x, "b": -x})
    assert gap["a|b"] == pytest.approx(math.sqrt(2.0))
    # Only samples with both modalities count.
    present = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    y = torch.tensor([[0.0, 1.0], [7.0, 7.0]])
    assert modality_gap({"a": x, "b": y}, present)["a|b"] == pytest.approx(math.sqrt(2.0))
    # Features of different sizes are not comparable.
    assert modality_gap({"a": x, "c": torch.ones(2, 3)}) == {}


@pytest.fixture(scope="module")
def imbalanced() -> tuple[MultimodalData, object]:
    torch.set_num_threads(1)
    data = load_dataset("synthetic", **IMBALANCED)
    cfg = RunConfig("concat", "synthetic", data=IMBALANCED,
                    model=ModelConfig(hidden=16, layers=1),
                    train=TrainConfig(epochs=6, batch_size=32, lr=3e-3, progress=False))
    return data, fit(cfg, None, data=data).method


def test_contributions_follow_modality_strength_and_are_efficient(imbalanced) -> None:  # type: ignore[no-untyped-def]
    data, method = imbalanced
    out = modality_contributions(method, data.test, data.info)
    phi = out["values"]
    assert out["metric"] == "accuracy" and out["sign"] == 1.0
    assert phi["a"] > phi["b"] and phi["a"] > 0.2  # the strong modality carries the model
    full = evaluate(method, data.test, data.info, unimodal=False)["accuracy"]
    assert out["subsets"]["a+b"] == pytest.approx(full)
    assert sum(phi.values()) == pytest.approx(full - out["empty"])
    majority = torch.bincount(data.test.target).max().item() / len(data.test)
    assert out["empty"] == pytest.approx(majority)
    assert sum(out["share"].values()) == pytest.approx(1.0)


def test_contributions_of_a_regression_metric_are_sign_flipped(tmp_path: Path) -> None:
    kw = {**IMBALANCED, "task": "regression", "n_train": 120}
    data = load_dataset("synthetic", **kw)
    cfg = RunConfig("concat", "synthetic", data=kw, model=ModelConfig(hidden=8, layers=1),
                    train=TrainConfig(epochs=3, progress=False))
    out = modality_contributions(fit(cfg, None, data=data).method, data.test, data.info)
    assert out["metric"] == "mae" and out["sign"] == -1.0
    # Efficiency on the negated MAE: the contributions add up to how much lower the model's
    # MAE is than that of predicting the mean target.
    assert sum(out["values"].values()) == pytest.approx(out["empty"] - out["subsets"]["a+b"])
    mean_pred = (data.test.target - data.test.target.mean()).abs().mean()
    assert out["empty"] == pytest.approx(float(mean_pred), rel=1e-5)


def test_embeddings_and_gap_of_a_trained_model(imbalanced) -> None:  # type: ignore[no-untyped-def]
    data, method = imbalanced
    emb = collect_embeddings(method, data.test, limit=50)
    assert set(emb["features"]) == {"a", "b"} and emb["features"]["a"].shape == (50, 16)
    assert emb["fused"] is not None and emb["fused"].shape[0] == 50
    assert torch.equal(emb["target"], data.test.target[:50].cpu())
    gap = modality_gap(emb["features"], emb["present"])["a|b"]
    assert 0.0 < gap <= 2.0  # centroids of unit vectors are at most 2 apart


def test_dirichlet_hook(imbalanced) -> None:  # type: ignore[no-untyped-def]
    data, method = imbalanced
    assert dirichlet_diagnostics(method, data.test) == {}

    class WithGraph(torch.nn.Module):
        training = False

        def diagnostics(self, split):  # type: ignore[no-untyped-def]
            x = split.inputs["a"][:20]
            return {"dirichlet": dirichlet_energy(x, (torch.cdist(x, x) < 3.0).float())}

    out = dirichlet_diagnostics(WithGraph(), data.test)  # type: ignore[arg-type]
    x = data.test.inputs["a"][:20]
    assert out["dirichlet"] == pytest.approx(float(dirichlet_energy(x, (torch.cdist(x, x) < 3.0)
                                                                    .float())))
    assert out["dirichlet"] > 0

    class WithBank(torch.nn.Module):
        def diagnostics(self, split) -> dict[str, float]:  # type: ignore[no-untyped-def]
            return {"dirichlet_in": 2.0, "other": 1.0}

    assert dirichlet_diagnostics(WithBank(), data.test) == {"dirichlet_in": 2.0}  # type: ignore[arg-type]


def test_protocol_report_applies_what_fits_the_data(imbalanced, tiny_seq_data) -> None:  # type: ignore[no-untyped-def]
    data, method = imbalanced
    rep = protocol_report(method, data.test, data.info, levels=(0.0, 1.0))
    assert set(rep) == {"missing", "noise", "diagnostics"}  # no sequences: no frame drop
    assert [r["modalities"] for r in rep["missing"]["rows"]] == ["a", "b", "a+b"]
    assert [r["level"] for r in rep["noise"]["rows"]] == [0.0, 1.0]
    assert set(rep["diagnostics"]) == {"shapley", "modality_gap", "votes"}
    votes = rep["diagnostics"]["votes"]
    n, fused_right = votes["n"], round(votes["fused_accuracy"] * votes["n"])
    assert n == len(data.test)
    for v in votes["branches"].values():  # fused right = branch right - outvoted + rescued
        assert fused_right == round(v["accuracy"] * n) - v["outvoted"] + v["rescued"]
    # Strengths 2.0 / 0.15: the strong branch is right more often and more sure.
    a, b = votes["branches"]["a"], votes["branches"]["b"]
    assert a["accuracy"] > b["accuracy"] and a["median_margin"] > b["median_margin"]
    cfg = RunConfig("concat", "synthetic", model=ModelConfig(hidden=8, layers=1),
                    train=TrainConfig(epochs=1, progress=False))
    seq_method = fit(cfg, None, data=tiny_seq_data).method
    rep = protocol_report(seq_method, tiny_seq_data.test, tiny_seq_data.info, ["drop"],
                          rates=(0.0, 0.5))
    assert list(rep) == ["frame_drop"] and len(rep["frame_drop"]["rows"]) == 2
    with pytest.raises(ValueError, match="unknown protocols"):
        protocol_report(method, data.test, data.info, ["bogus"])


def test_robustness_and_diagnose_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    sets = [f"-sdata.{k}={json.dumps(v)}" for k, v in IMBALANCED.items()]
    assert main(["train", "-m", "late", "-d", "synthetic", "--epochs", "2", "--out",
                 str(tmp_path), "--no-progress", *sets]) == 0
    run = next(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["robustness", str(run), "--levels", "0,1"]) == 0
    text = capsys.readouterr().out
    assert "a+b" in text and "Gaussian" in text and "sequence" in text
    assert main(["robustness", str(run), "--protocols", "missing", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["missing"]["rows"]
    assert [r["modalities"] for r in rows] == ["a", "b", "a+b"]
    assert main(["diagnose", str(run), "--json"]) == 0
    diag = json.loads(capsys.readouterr().out)
    assert set(diag["shapley"]["values"]) == {"a", "b"} and "a|b" in diag["modality_gap"]
    assert set(diag["votes"]["branches"]) == {"a", "b"}
    assert main(["diagnose", str(run)]) == 0
    text = capsys.readouterr().out
    assert "Shapley" in text and "branch votes" in text and "outvoted" in text
    assert main(["robustness", str(run), "--protocols", "bogus"]) == 2
