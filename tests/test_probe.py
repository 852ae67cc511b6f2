"""Linear probes on frozen modality features: maths against sklearn, wiring into every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine.trainer import Trainer
from equimodal.methods.check import easy_data
from equimodal.metrics.probe import fit_logistic, fit_ridge, linear_probe
from equimodal.registry import METHODS, create_method

NO_PROBE = {"mult"}  # cross-modal stream features: documented to report no probe


def _blobs(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, -1.0], [0.0, 0.0, 2.0, 0.0]])
    x = centres[y] + 1.5 * torch.randn(n, 4, generator=g, dtype=torch.float32) + shift
    return x.double(), y


def test_logistic_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.linear_model")
    x, y = _blobs(300, 0)
    lam = 1e-2
    w, b = fit_logistic(x, y, 3, lam)
    ref = sk.LogisticRegression(C=1.0 / (lam * len(x)), tol=1e-10, max_iter=5000).fit(
        x.numpy(), y.numpy())
    ours = torch.softmax(x @ w + b, 1)
    theirs = torch.as_tensor(ref.predict_proba(x.numpy()))
    assert torch.allclose(ours, theirs, atol=1e-4)
    # Softmax logits are defined up to a per-row constant: compare centred coefficients.
    wc = w - w.mean(1, keepdim=True)
    rc = torch.as_tensor(ref.coef_).T
    assert torch.allclose(wc, rc - rc.mean(1, keepdim=True), atol=1e-3)


def test_ridge_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.linear_model")
    x, _ = _blobs(200, 1)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64) + 3.0
    lam = 0.1
    w, b = fit_ridge(x, y, lam)
    ref = sk.Ridge(alpha=lam * len(x)).fit(x.numpy(), y.numpy())
    assert torch.allclose(w.squeeze(1), torch.as_tensor(ref.coef_), atol=1e-8)
    assert float(b) == pytest.approx(float(ref.intercept_), abs=1e-8)


def test_probe_reads_signal_not_offsets() -> None:
    """Separable features score high, label-free ones near chance, and a constant offset (the
    artefact that fools the split read-out) changes nothing."""
    tr, va, te = _blobs(300, 2), _blobs(150, 3), _blobs(150, 4)
    res = linear_probe("classification", tr, va, te, 3)
    assert res is not None and res.test["accuracy"] > 0.75
    assert res.lam in res.by_lambda
    shifted = [(x + 50.0, y) for x, y in (tr, va, te)]
    res2 = linear_probe("classification", shifted[0], shifted[1], shifted[2], 3)
    assert res2 is not None and res2.test["accuracy"] == pytest.approx(res.test["accuracy"])
    g = torch.Generator().manual_seed(5)
    noise = [(torch.randn(len(y), 4, generator=g, dtype=torch.float64), y)
             for _, y in (tr, va, te)]
    res3 = linear_probe("classification", noise[0], noise[1], noise[2], 3)
    assert res3 is not None and res3.test["accuracy"] < 0.5


def test_probe_selects_on_valid() -> None:
    """With few train rows and many noise dims, the strongest penalty wins on valid."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 60, generator=g, dtype=torch.float64)
        x[:, 0] += 1.5 * (2 * y - 1)
        return x, y

    res = linear_probe("classification", split(40), split(400), split(400), 2)
    assert res is not None
    assert res.by_lambda[res.lam] == max(res.by_lambda.values())
    assert res.valid["accuracy"] == res.by_lambda[res.lam]
    # An intermediate strength wins here: neither end of the grid is picked blindly.
    assert res.lam not in (1.0, 1e-3)
    assert res.by_lambda[res.lam] > min(res.by_lambda.values())


def test_regression_probe_and_multilabel_none() -> None:
    x, _ = _blobs(200, 6)
    y = x[:, 0] - x[:, 1]
    res = linear_probe("regression", (x, y), (x, y), (x, y))
    assert res is not None and res.test["mae"] < 0.05
    assert linear_probe("multilabel", (x, y), (x, y), (x, y)) is None


def _fit(name: str, data: MultimodalData, run_dir: Path | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    method = create_method(name, data.info, ModelConfig(hidden=16, layers=1))
    train = TrainConfig(epochs=1, batch_size=60, lr=3e-3, progress=False, device="cpu")
    return Trainer(method, data, train, run_dir).fit().test


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_reports_a_probe_per_modality(name: str) -> None:
    """Registry-wide: a probe for every modality the method uses (none where documented)."""
    cls = METHODS.get(name)
    data = easy_data(cls)
    test = _fit(name, data)
    method_mods = [k.split("/")[0] for k in test if k.endswith("/accuracy")]
    assert method_mods, "no per-modality read-out"
    probes = {k.split("/")[0] for k in test if k.endswith("/probe_accuracy")}
    if name in NO_PROBE:
        assert not probes
        return
    assert probes == set(method_mods)
    for m in probes:
        assert 0.0 <= test[f"{m}/probe_accuracy"] <= 1.0
        assert f"{m}/probe_macro_f1" in test


def test_probe_in_metrics_json_and_regression_key(tmp_path: Path) -> None:
    data = easy_data(METHODS.get("concat"), task="regression")
    _fit("concat", data, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("valid", "test"):
        for m in data.info.modality_names:
            assert f"{m}/probe_mae" in saved[split]
            assert f"{m}/probe_accuracy" not in saved[split]
    assert "probe_seconds" in saved["timings"]


def test_absent_rows_are_left_out_of_the_probe() -> None:
    from equimodal.engine.evaluate import split_features

    data = easy_data(METHODS.get("concat"))
    name = data.info.modality_names[1]
    data.test.present[name][::2] = False
    method = create_method("concat", data.info, ModelConfig(hidden=8, layers=1))
    feats = split_features(method, data.test)
    n = len(data.test)
    assert feats[data.info.modality_names[0]][0].shape[0] == n
    assert feats[name][0].shape[0] == n - (n + 1) // 2


def _df(task: str) -> object:
    import pandas as pd

    rows = []
    for method, ro, pr in (("concat", 0.50, 0.70), ("scope", 0.20, 0.66)):
        for seed in (0, 1):
            r = {"run_id": f"{method}{seed}", "method": method, "label": "d", "seed": seed,
                 "status": "finished", "task": task, "modalities": ["a", "b"],
                 "updated_at": "2026", "wall_seconds": 1.0, "reason": None}
            if task == "classification":
                r.update({"test/accuracy": 0.9, "test/a/accuracy": 0.9, "test/b/accuracy": ro,
                          "test/a/probe_accuracy": 0.95, "test/b/probe_accuracy": pr + 0.01 *
                          seed})
            else:
                r.update({"test/mae": 0.5, "test/a/mae": 0.6, "test/b/mae": 0.9,
                          "test/a/probe_mae": 0.55, "test/b/probe_mae": 0.8})
            rows.append(r)
    return pd.DataFrame(rows)


def test_tables_show_the_probe_next_to_the_read_out() -> None:
    from equimodal.bench.tables import dataset_table, runs_table, to_html, to_markdown

    table = dataset_table(_df("classification"), "d")
    assert table.rows == ["a (unimodal)", "a (probe)", "b (unimodal)", "b (probe)", "fusion"]
    probe = table.cells[table.rows.index("b (probe)")][table.cols.index("scope")]
    assert probe is not None and probe[0].mean == pytest.approx(0.665)
    assert "66.50±0.71" in to_markdown(table) and "b (probe)" in to_html(table)
    runs = runs_table(_df("classification"))
    assert {"b/accuracy", "b/probe_accuracy"} <= set(runs.columns)
    reg = dataset_table(_df("regression"), "d")
    assert reg.cols[-1] == "Probe MAE (a / b)"
    cell = reg.cells[0][-1]
    assert cell is not None and [s.mean for s in cell] == [0.55, 0.8]
    assert not cell[0].higher_better


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - NO_PROBE))
def test_probe_features_are_the_modality_own(name: str) -> None:
    """A modality's probe features do not move when another modality's input does: a probe
    on cross-modal features would read the strong modality through the weak one."""
    data = easy_data(METHODS.get(name))
    torch.manual_seed(0)
    method = create_method(name, data.info, ModelConfig(hidden=16, layers=1)).eval()
    batch = data.test.batch(torch.arange(30))
    names = list(getattr(method, "modalities_in_use", None) or data.info.modality_names)
    if len(names) < 2:  # `unimodal`: one modality, nothing to cross
        assert set(method.modality_features(data.test.batch(torch.arange(4)))) == set(names)
        return
    with torch.no_grad():
        before = method.modality_features(batch)
        other = names[-1]
        batch.inputs[other] = batch.inputs[other] + 3.0 * torch.randn_like(batch.inputs[other])
        after = method.modality_features(batch)
    assert set(before) == set(names)
    for n in names[:-1]:
        assert torch.allclose(before[n], after[n], atol=1e-6), n
    assert not torch.allclose(before[other], after[other])
