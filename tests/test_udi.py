"""UDI: losses against closed forms / references, controller and ranking rules, the staged
schedule (anchor frozen, progressive followers) and every ablation switch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy.spatial.distance import jensenshannon

from equimodal.cli import main
from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import StepContext, Trainer, predict_split, seed_everything
from equimodal.losses.consistency import js_divergence, predictive_entropy
from equimodal.losses.mi import (
    club_nll,
    club_upper_bound,
    club_upper_bound_pairwise,
    gaussian_mutual_information,
)
from equimodal.methods.check import check_method
from equimodal.methods.udi_modules import (
    GaussianEstimator,
    branch_scores,
    controller_weights,
    flatten_state,
    grad_inner,
    rank_branches,
)
from equimodal.registry import create_method, load_dataset

# ----- pure losses ----------------------------------------------------------------------------


def test_js_divergence_matches_scipy_and_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(6, 5, generator=g) * 2, torch.randn(6, 5, generator=g) * 2
    ours = js_divergence(p, q, reduction="none")
    ref = [jensenshannon(a.numpy(), b.numpy()) ** 2 for a, b in
           zip(p.softmax(-1).double(), q.softmax(-1).double(), strict=True)]
    assert torch.allclose(ours.double(), torch.tensor(ref, dtype=torch.double), atol=1e-6)
    assert torch.allclose(ours, js_divergence(q, p, reduction="none"), atol=1e-6)  # symmetric
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-6)
    far = js_divergence(torch.tensor([[30.0, -30.0]]), torch.tensor([[-30.0, 30.0]]))
    assert float(far) == pytest.approx(math.log(2.0), abs=1e-5)
    # Eq. 5 as written sums over samples; the mask drops rows.
    mask = torch.tensor([True, False, True, True, False, True])
    assert float(js_divergence(p, q, mask, reduction="sum")) == pytest.approx(
        float(ours[mask].sum()), rel=1e-6)


def test_predictive_entropy_extremes() -> None:
    ent = predictive_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]))
    assert float(ent[0]) == pytest.approx(math.log(4.0), abs=1e-6)
    assert float(ent[1]) < 1e-6


def test_club_closed_form_equals_double_sum_and_nll_is_gaussian() -> None:
    g = torch.Generator().manual_seed(1)
    y, mu, logvar = (torch.randn(9, 4, generator=g) for _ in range(3))
    assert float(club_upper_bound(y, mu, logvar)) == pytest.approx(
        float(club_upper_bound_pairwise(y, mu, logvar)), rel=1e-5, abs=1e-5)
    mask = torch.tensor([True, True, False, True, True, True, False, True, True])
    assert float(club_upper_bound(y, mu, logvar, mask)) == pytest.approx(
        float(club_upper_bound_pairwise(y[mask], mu[mask], logvar[mask])), rel=1e-5, abs=1e-5)
    ref = -torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(y).sum(-1).mean()
    assert float(club_nll(y, mu, logvar)) == pytest.approx(float(ref), rel=1e-5)


def _correlated(n: int, d: int, rho: float, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * torch.randn(n, d, generator=g)


def test_fitted_club_upper_bounds_known_gaussian_mi() -> None:
    d = 2
    for rho in (0.0, 0.5, 0.8):
        g = torch.Generator().manual_seed(2)
        torch.manual_seed(0)
        est = GaussianEstimator(d, d, 16)
        opt = torch.optim.Adam(est.parameters(), lr=2e-2)
        for _ in range(150):  # fit q_phi by its NLL (Eq. 10)
            x, y = _correlated(256, d, rho, g)
            loss = est.nll(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        x, y = _correlated(4000, d, rho, g)
        with torch.no_grad():
            bound = float(est.upper_bound(x, y))
        true = gaussian_mutual_information(rho, d)
        assert bound >= true - 0.02, (rho, bound, true)
        # Tight: close to the bound's value d rho^2 / (1 - rho^2) for the exact Gaussian q.
        assert bound <= 1.15 * d * rho * rho / (1.0 - rho * rho) + 0.03, (rho, bound)
    assert gaussian_mutual_information(0.8, d) > 1.0  # the non-trivial case was checked


# ----- controller and ranking -----------------------------------------------------------------


def test_controller_relu_and_normalisation() -> None:
    g_cls = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    agree = [torch.tensor([3.0, 5.0]), torch.tensor([1.0])]   # <.,.> = 3 + 2 = 5
    conflict = [torch.tensor([-1.0, 9.0]), None]              # only the shared key: -1
    assert float(grad_inner(g_cls, agree)) == pytest.approx(5.0)
    assert float(grad_inner(g_cls, conflict)) == pytest.approx(-1.0)
    a_con, a_com = controller_weights(grad_inner(g_cls, agree), grad_inner(g_cls, conflict), 0.0)
    assert (float(a_con), float(a_com)) == (1.0, 0.0)
    a_con, a_com = controller_weights(torch.tensor(1.0), torch.tensor(3.0), 0.0)
    assert (float(a_con), float(a_com)) == pytest.approx((0.25, 0.75))
    a_con, a_com = controller_weights(torch.tensor(-1.0), torch.tensor(-2.0), 1e-8)
    assert (float(a_con), float(a_com)) == (0.0, 0.0)


def test_rank_branches_scores_ties_and_forced_anchor() -> None:
    assert rank_branches([0.5, 0.9, 0.7], [0.1, 0.9, 0.5]) == [1, 2, 0]
    # Similar scores: the lower predictive entropy wins (Sec. 3.1).
    assert rank_branches([0.80, 0.803], [0.2, 0.6], tolerance=0.005) == [0, 1]
    assert rank_branches([0.80, 0.803], [0.2, 0.6], tolerance=0.0) == [1, 0]
    assert rank_branches([0.5, 0.9, 0.7], [0.0] * 3, forced=0) == [0, 1, 2]


# ----- training -------------------------------------------------------------------------------


def _data(names: list[str], strengths: list[float], **kw: Any) -> MultimodalData:
    args: dict[str, Any] = dict(modalities=names, strengths=strengths, n_classes=3, dim=8,
                                latent=4, noise=1.0, n_train=160, n_valid=80, n_test=80, seed=0)
    args.update(kw)
    data: MultimodalData = load_dataset("synthetic", **args)
    return data


def _fit(data: MultimodalData, epochs: int = 3, method: str = "udi", **cfg: Any) -> Any:
    seed_everything(0)
    m = create_method(method, data.info, ModelConfig(hidden=16, layers=1), **cfg)
    train = TrainConfig(epochs=epochs, batch_size=40, lr=1e-2, seed=0, progress=False,
                        device="cpu")
    return Trainer(m, data, train).fit()


def _branch_vec(method: Any, name: str) -> torch.Tensor:
    return flatten_state(method._branch(name))


@pytest.mark.parametrize("kw", [{}, {"n_modalities": 3}, {"sequences": True, "epochs": 3}])
def test_contract(kw: dict[str, Any]) -> None:
    report = check_method("udi", **kw)
    assert report.score > report.chance + 0.15


def test_anchor_is_strongest_branch_and_stays_frozen() -> None:
    data = _data(["weak", "strong"], [0.3, 1.5])
    r = _fit(data)
    udi = r.method
    assert udi.anchor == "strong" and udi.order_names == ["strong", "weak"]
    assert float(udi.branch_score[1]) > float(udi.branch_score[0])
    # The anchor's weights are still its best selection-stage epoch: nothing trained it later.
    anchor_i = udi.names.index("strong")
    assert torch.equal(_branch_vec(udi, "strong"), getattr(udi, f"snapshot_{anchor_i}"))
    stages = [h["stage"] for h in r.history]
    assert stages == ["unimodal"] * 3 + ["follower_1"] * 3
    for h in r.history[3:]:
        assert h["train/alpha_con"] >= 0.0 and h["train/alpha_com"] >= 0.0
        assert h["train/alpha_con"] + h["train/alpha_com"] <= 1.0
    assert "weak/accuracy" in r.test and "strong/accuracy" in r.test


def test_forced_anchor_appendix_a7() -> None:
    data = _data(["weak", "strong"], [0.3, 1.5])
    r = _fit(data, epochs=2, anchor="weak")
    assert r.method.anchor == "weak"
    i = r.method.names.index("weak")
    assert torch.equal(_branch_vec(r.method, "weak"), getattr(r.method, f"snapshot_{i}"))
    with pytest.raises(KeyError):
        create_method("udi", data.info, anchor="nope")


def test_without_do_and_dc_is_the_sum_baseline() -> None:
    """Table 2 row 1: no decoupling, no controller (alphas 0) == joint summation training."""
    data = _data(["a", "b"], [1.0, 0.5])
    udi = _fit(data, decoupled=False, dynamic_controller=False)
    base = _fit(data, method="sum")
    assert [h["stage"] for h in udi.history] == ["joint"] * 3
    out_udi, _, _ = predict_split(udi.method, data.test)
    out_sum, _, _ = predict_split(base.method, data.test)
    assert torch.allclose(out_udi, out_sum, atol=1e-6)


def test_dc_only_joint_stage_uses_dynamic_weights() -> None:
    """Table 2 "DC only": one joint stage whose directed terms get controller weights."""
    data = _data(["a", "b"], [1.0, 0.5])
    r = _fit(data, decoupled=False)
    follower = r.method.order_names[1]
    alphas = [(h[f"train/alpha_con/{follower}"], h[f"train/alpha_com/{follower}"])
              for h in r.history]
    assert all(a >= 0 and b >= 0 and a + b <= 1.0 for a, b in alphas)
    assert any(a + b > 0.5 for a, b in alphas)  # the controller found aligned terms
    out = _fit(data, decoupled=False, dynamic_controller=False)
    assert not torch.allclose(predict_split(r.method, data.test)[0],
                              predict_split(out.method, data.test)[0])


@pytest.mark.parametrize("alphas", [(0.0, 1.0), (1.0, 0.0), (0.0, 0.0)])
def test_fixed_weights_table3(alphas: tuple[float, float]) -> None:
    data = _data(["a", "b"], [1.5, 0.5])
    r = _fit(data, dynamic_controller=False, alpha_con=alphas[0], alpha_com=alphas[1])
    for h in r.history:
        if h["stage"] == "follower_1":
            assert (h["train/alpha_con"], h["train/alpha_com"]) == alphas
            # Eq. 12 with fixed weights (epoch means of a linear combination).
            total = h["train/ce"] + alphas[0] * h["train/con"] + alphas[1] * h["train/com"]
            assert h["train/loss"] == pytest.approx(total, rel=1e-4, abs=1e-5)


def _follower_gap(r: Any, data: MultimodalData) -> float:
    _, uni, _ = predict_split(r.method, data.test)
    anchor, follower = r.method.order_names
    return float(js_divergence(uni[anchor], uni[follower]))


def test_consistency_and_complementary_terms_act() -> None:
    """(1, 0) pulls the follower to the anchor even against the labels (a pure-noise anchor
    is forced); (0, 1) keeps the MI bound between the branches lower."""
    data = _data(["noise", "a"], [0.0, 1.5])
    free = _fit(data, epochs=6, dynamic_controller=False, anchor="noise")
    pulled = _fit(data, epochs=6, dynamic_controller=False, anchor="noise", alpha_con=20.0)
    assert _follower_gap(pulled, data) < 0.3 * _follower_gap(free, data)
    data = _data(["a", "b"], [1.5, 0.5])
    none = _fit(data, epochs=6, dynamic_controller=False)
    # L_com is per feature dimension (estimator_inputs="standardize"): 16 = hidden width.
    com = _fit(data, epochs=6, dynamic_controller=False, alpha_com=16.0)
    assert com.history[-1]["train/com"] < 0.5 * none.history[-1]["train/com"]


def test_follower_init_reset_or_keep() -> None:
    data = _data(["a", "b"], [1.5, 0.5])
    for init in ("reset", "unimodal"):
        seed_everything(0)
        udi = create_method("udi", data.info, ModelConfig(hidden=16, layers=1),
                            follower_init=init, dynamic_controller=False)
        with torch.no_grad():
            for p in udi.parameters():
                p.add_(1.0)  # pretend the selection stage trained every branch
        udi.branch_score.fill_(0.5)
        for i, n in enumerate(udi.names):
            getattr(udi, f"snapshot_{i}").copy_(_branch_vec(udi, n))
        trained = _branch_vec(udi, "b").clone()
        ctx = StepContext(TrainConfig(epochs=1), torch.device("cpu"), data.train,
                          torch.Generator().manual_seed(0))
        ctx.stage, ctx.stage_index = udi.stages(TrainConfig(epochs=1))[1], 1
        assert ctx.stage.name == "follower_1"
        udi.on_stage_start(ctx.stage, ctx)
        udi.on_epoch_start(ctx)
        expected = udi._init_state[1] if init == "reset" else trained
        assert torch.equal(_branch_vec(udi, "b"), expected)
        assert torch.equal(_branch_vec(udi, "a"), udi.snapshot_0)  # the anchor untouched


def test_three_modalities_progressive_guidance() -> None:
    """Appendix A.2: order by unimodal score; the last follower is guided by both earlier."""
    data = _data(["c", "a", "b"], [0.2, 1.5, 0.6])
    seed_everything(0)
    init = create_method("udi", data.info, ModelConfig(hidden=16, layers=1))
    before = {k: v.clone() for k, v in init.estimators.state_dict().items()}
    r = _fit(data, epochs=3)
    udi = r.method
    assert udi.order_names == ["a", "b", "c"]
    assert [s.name for s in udi.stages(TrainConfig(epochs=3))] == [
        "unimodal", "follower_1", "follower_2"]
    assert udi._plan(udi.stages(TrainConfig(epochs=3))[2]) == [("c", ["a", "b"])]
    idx = {n: i for i, n in enumerate(udi.names)}
    after = udi.estimators.state_dict()

    def trained(guide: str, follower: str) -> bool:
        key = f"{idx[guide]}_{idx[follower]}.mu.0.weight"
        return not torch.equal(before[key], after[key])

    assert trained("a", "b") and trained("a", "c") and trained("b", "c")
    assert not trained("c", "a") and not trained("b", "a")
    assert all(math.isfinite(h["train/loss"]) for h in r.history)


def test_follower_epoch_selection_scores_only_trained_branches(monkeypatch: Any) -> None:
    """Appendix A.2: follower ``b`` is kept on ``y^{ab}``; ``c`` (not trained yet) is left out."""
    target = torch.tensor([0, 1])
    uni = {"a": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "b": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
           "c": torch.tensor([[0.0, 9.0], [9.0, 0.0]])}
    present = {n: torch.ones(2, dtype=torch.bool) for n in uni}
    fused = torch.stack(list(uni.values())).sum(0)
    assert branch_scores(fused, uni, target, present)[0] == 0.0
    assert branch_scores(fused, uni, target, present, ["a", "b"])[0] == 1.0
    # Wiring: which branches each stage scores as "fused".
    import equimodal.methods.udi as udi_module

    seen: list[tuple[str, ...]] = []

    def spy(*args: Any) -> Any:
        seen.append(tuple(args[4]))
        return branch_scores(*args)

    monkeypatch.setattr(udi_module, "branch_scores", spy)
    r = _fit(_data(["c", "a", "b"], [0.2, 1.5, 0.6]), epochs=1)
    order = tuple(r.method.order_names)
    assert seen == [("c", "a", "b"), order[:2], order]


def _follower_ctx(udi: Any, data: MultimodalData) -> StepContext:
    """A step context in stage ``follower_1`` with the engine's groups and optimisers."""
    train = TrainConfig(epochs=1, batch_size=40, lr=1e-2, seed=0, progress=False, device="cpu")
    ctx = StepContext(train, torch.device("cpu"), data.train, torch.Generator().manual_seed(0))
    ctx.valid_split = data.valid
    stage = udi.stages(train)[1]
    assert stage.name == "follower_1"
    Trainer(udi, data, train)._activate(ctx, stage, "max")
    ctx.stage_index = 1
    return ctx


def test_estimator_own_group_trained_by_its_nll_only() -> None:
    """Eq. 10 / Algorithm 1 line 14: ``q_phi`` is its own group, updated by its NLL only;
    ``L_com`` moves the follower, never ``phi``."""
    data = _data(["a", "b"], [1.5, 0.5])
    batch = data.train.batch(torch.arange(40))
    est_after, follower_after = {}, {}
    for a_com in (0.0, 5.0):
        seed_everything(0)
        udi = create_method("udi", data.info, ModelConfig(hidden=16, layers=1), anchor="a",
                            dynamic_controller=False, alpha_com=a_com)
        ctx = _follower_ctx(udi, data)
        assert {id(p) for p in ctx.group_params["estimator"]} == {
            id(p) for p in udi.estimators.parameters()}
        assert not {id(p) for p in ctx.group_params["estimator"]} & {
            id(p) for p in ctx.group_params["follower"]}
        udi.train()
        udi.on_epoch_start(ctx)
        before = {k: v.clone() for k, v in udi.estimators.state_dict().items()}
        udi.training_step(batch, ctx)
        # A leak of L_com into phi would sit in .grad until the next estimator step.
        assert all(p.grad is None for p in udi.estimators.parameters())
        after = udi.estimators.state_dict()
        assert not torch.equal(before["0_1.mu.0.weight"], after["0_1.mu.0.weight"])  # q(b|a)
        assert torch.equal(before["1_0.mu.0.weight"], after["1_0.mu.0.weight"])
        est_after[a_com] = {k: v.clone() for k, v in after.items()}
        follower_after[a_com] = _branch_vec(udi, "b")
    assert all(torch.equal(est_after[0.0][k], est_after[5.0][k]) for k in est_after[0.0])
    assert not torch.equal(follower_after[0.0], follower_after[5.0])  # L_com did act


def test_controller_is_eq13_16_on_follower_params(monkeypatch: Any) -> None:
    """alphas = ReLU-normalised <grad L_cls, grad L_con/com> over the follower's parameters,
    with L_cls the multimodal (summed-logit) cross-entropy, on the sampled mini-batch."""
    data = _data(["a", "b"], [1.0, 0.5])
    # Raw estimator inputs (Eq. 8 as printed): this draw aligns both terms (guard below).
    udi = _fit(data, epochs=2, anchor="a", estimator_inputs="raw").method
    ctx = _follower_ctx(udi, data)
    batch = data.train.batch(torch.arange(40, 80))
    monkeypatch.setattr(ctx, "sample_batch", lambda size=None: batch)
    udi.train()
    udi.on_epoch_start(ctx)  # the stage is already prepared: this runs the controller only
    params = [p for mod in udi._branch("b") for p in mod.parameters()]
    out = udi(batch)
    za, zb = out.unimodal_logits["a"], out.unimodal_logits["b"]
    com = udi.estimators["0_1"].upper_bound(out.features["a"].detach(), out.features["b"])
    losses = (torch.nn.functional.cross_entropy(za + zb, batch.target),
              js_divergence(za.detach(), zb), com)
    g_cls, g_con, g_com = (torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
                           for v in losses)
    assert g_com[-1] is None  # L_com does not reach the head: K_com of Eq. 14 is smaller
    xi = [sum(float((a * b).sum()) for a, b in zip(g_cls, g, strict=True) if b is not None)
          for g in (g_con, g_com)]
    pos = [max(x, 0.0) for x in xi]
    expected = (pos[0] / (sum(pos) + 1e-8), pos[1] / (sum(pos) + 1e-8))
    # Both terms aligned here, so the values pin down L_cls (the follower's own CE would
    # give about (0.84, 0.16) instead).
    assert min(expected) > 0.1
    assert udi.alpha("b") == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("dc", [True, False])
def test_controller_runs_once_per_epoch(monkeypatch: Any, dc: bool) -> None:
    calls: list[int] = []
    original = StepContext.sample_batch

    def counting(self: StepContext, size: int | None = None) -> Any:
        calls.append(self.epoch)
        return original(self, size)

    monkeypatch.setattr(StepContext, "sample_batch", counting)
    r = _fit(_data(["a", "b"], [1.5, 0.5]), epochs=2, dynamic_controller=dc)
    follower_epochs = [h["epoch"] for h in r.history if h["stage"] == "follower_1"]
    assert calls == (follower_epochs if dc else [])


@pytest.mark.parametrize("three", [False, True])
def test_cli_train_udi(tmp_path: Path, capsys: Any, three: bool) -> None:
    """``equimodal train --method udi`` end to end on 2 and 3 modalities (concat head)."""
    extra = ["-s", 'data.modalities=["a","b","c"]', "-s", "data.strengths=[1.0,0.5,0.3]",
             "-s", "method.fusion=concat"] if three else []
    args = ["train", "--method", "udi", "--data", "synthetic", "--epochs", "1", "--out",
            str(tmp_path), "--no-progress", "-s", "data.n_train=60", "-s", "data.n_valid=30",
            "-s", "data.n_test=30", *extra]
    assert main(args) == 0
    out = capsys.readouterr().out
    names = ["a", "b", "c"] if three else ["a", "b"]
    assert all(f"{n} (unimodal)" in out for n in names)
    run = next(tmp_path.iterdir())
    with open(run / "history.jsonl") as fh:
        stages = [json.loads(line)["stage"] for line in fh]
    expected = ["unimodal", "follower_1"] + (["follower_2", "fusion_head"] if three else [])
    assert stages == expected
    assert (run / "metrics.json").exists()


def test_concat_fusion_head() -> None:
    data = _data(["a", "b"], [1.5, 0.5])
    r = _fit(data, epochs=2, fusion="concat")
    udi = r.method
    assert [h["stage"] for h in r.history][-2:] == ["fusion_head"] * 2
    assert bool(udi.head_ready)
    batch = data.test.full_batch()
    udi.eval()
    with torch.no_grad():
        out = udi(batch)
        feats = udi.model.encode(batch)
        expected = udi.concat_head(torch.cat([feats[n] for n in udi.names], 1))
    assert torch.allclose(out.logits, expected)
    assert not torch.allclose(out.logits, sum(out.unimodal_logits.values()))
    assert r.test["accuracy"] > 0.6


def test_missing_modalities_and_state_round_trip() -> None:
    data = _data(["a", "b"], [1.5, 0.5], missing=0.3)
    r = _fit(data, epochs=2)
    assert all(math.isfinite(v) for h in r.history for k, v in h.items()
               if k.startswith("train/"))
    state = r.method.state_dict()
    for key in ("order", "alphas", "branch_score", "branch_entropy", "follower_best"):
        assert key in state
    seed_everything(5)
    twin = create_method("udi", data.info, ModelConfig(hidden=16, layers=1))
    twin.load_state_dict(state)
    assert twin.order_names == r.method.order_names
    assert twin.alpha("b") == r.method.alpha("b")


def test_config_validation() -> None:
    info = _data(["a", "b"], [1.0, 1.0], n_train=20, n_valid=10, n_test=10).info
    for bad in ({"fusion": "gated"}, {"follower_init": "x"}, {"alpha_con": -1.0},
                {"follower_epochs": 0}, {"follower_selection": "best"}):
        with pytest.raises(ValueError):
            create_method("udi", info, **bad)
