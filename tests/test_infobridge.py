"""InfoBridge and the InfoNCE baseline: the NCE objective and its MI bound on known-MI toys,
conditioning on T, negatives, context builders, the alternating critic/main steps, every
context option and ablation, the memory buffer, unimodal logits and the Fig. 3 diagnostic."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import StepContext, Trainer, predict_split, seed_everything
from equimodal.engine.optim import build_optimizer
from equimodal.eval.diagnostics_kernel import (
    cross_modal_kernel_distances,
    kernel_distance_matrix,
    split_kernel_distances,
)
from equimodal.losses.cmi import (
    assign_clusters,
    conditional_nce_objective,
    kmeans,
    nce_mi_estimate,
    nce_mi_lower_bound,
    protective_margin,
    quantize_similarity,
    sample_negative_indices,
)
from equimodal.losses.mi import gaussian_mutual_information
from equimodal.losses.nce import info_nce
from equimodal.methods.check import check_method
from equimodal.methods.infobridge import ABLATIONS, CONTEXT_VARIANTS, InfoBridge, PairCritic
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch

MODEL = ModelConfig(hidden=16, layers=1)
SMALL: dict[str, Any] = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5,
                         "strengths": [1.5, 1.0], "n_train": 96, "n_valid": 32, "n_test": 32}




@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _method(data: MultimodalData, name: str = "infobridge", **cfg: Any) -> Any:
    seed_everything(0)
    return create_method(name, data.info, MODEL, **cfg)


def _ctx(method: Any, data: MultimodalData) -> StepContext:
    """A step context with the method's optimisers, as the trainer builds it."""
    train = TrainConfig(epochs=1, batch_size=32, lr=1e-2, device="cpu", progress=False)
    ctx = StepContext(train, torch.device("cpu"), data.train, torch.Generator().manual_seed(0))
    stage = method.stages(train)[0]
    groups = method.param_groups(stage)
    opts = method.group_options()
    ctx.optimizers = {g: build_optimizer(ps, train, opts.get(g)) for g, ps in groups.items()}
    ctx.group_params = groups
    ctx.stage = stage
    return ctx


def _batch(data: MultimodalData, start: int = 0, size: int = 32) -> Batch:
    return data.train.batch(torch.arange(start, start + size))


def _train(data: MultimodalData, epochs: int = 2, **cfg: Any) -> tuple[Any, list[dict[str, Any]]]:
    method = _method(data, **cfg)
    train = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, device="cpu", progress=False)
    res = Trainer(method, data, train).fit()
    return res.method, res.history


# ----- objective and bounds ---------------------------------------------------------------
def test_protective_margin_is_log_n1_over_n0() -> None:
    assert protective_margin(5) == pytest.approx(-math.log(5))  # Sec. 4.1: -1.61
    assert protective_margin(4, 2) == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError):
        protective_margin(0)


def test_nce_objective_is_maximised_at_the_posterior() -> None:
    """Eq. 3 / 6: argmax_h L_NCE = p / (p + (N0/N1) q), cell by cell."""
    p, q, k = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5]), 5.0
    cells_pos = torch.tensor([0] * 80 + [1] * 20)  # 100 positives in proportion p
    # One logit per cell; the expectation over p and q is exact for this two-cell toy.
    s_opt = torch.log(p / (k * q)).requires_grad_(True)
    exact = (p * torch.nn.functional.logsigmoid(s_opt)).sum() + k * (
        q * torch.nn.functional.logsigmoid(-s_opt)).sum()
    (grad,) = torch.autograd.grad(exact, s_opt)
    assert torch.allclose(grad, torch.zeros(2), atol=1e-6)
    for delta in (-0.5, 0.5):
        s = s_opt.detach() + delta
        worse = (p * torch.nn.functional.logsigmoid(s)).sum() + k * (
            q * torch.nn.functional.logsigmoid(-s)).sum()
        assert worse < exact
    # The sample version equals the expectation when samples follow p and q exactly.
    s0 = s_opt.detach()
    pos = s0[cells_pos]
    neg = s0[torch.tensor([0, 1]).repeat(50).reshape(100, 1)]  # negatives in proportion q
    assert conditional_nce_objective(pos, neg, k) == pytest.approx(float(exact.detach()), abs=1e-5)


def _gauss(n: int, d: int, rho: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho * rho) * torch.randn(n, d, generator=g)


def _log_ratio(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """Exact log p(x, y) / p(x) p(y) of unit Gaussians with correlation rho per dimension."""
    c = 1 - rho * rho
    return (-0.5 * math.log(c) - (rho * rho * (x * x + y * y) - 2 * rho * x * y) / (2 * c)).sum(-1)


def test_nce_bound_with_optimal_critic_on_correlated_gaussians() -> None:
    """I = -d/2 log(1 - rho^2); the optimal critic's estimate is below I and log(N0 + 1) and
    approaches I as N0 grows; Eq. 8's bound holds for any critic."""
    d, rho = 2, 0.6
    true_mi = gaussian_mutual_information(rho, d)
    g = torch.Generator().manual_seed(0)
    x, y = _gauss(100_000, d, rho, g)
    lr = _log_ratio(x, y, rho)
    y_neg = y[torch.randperm(x.shape[0], generator=g)]  # product of marginals
    gaps = []
    for n0 in (1, 5, 50, 500):
        m = protective_margin(n0)
        est = float(nce_mi_estimate(lr + m, m))  # h* logit = log r + gamma
        assert est < true_mi and est < math.log(n0 + 1) and est <= math.log(n0) + 1e-6
        gaps.append(true_mi - est)
        neg = (_log_ratio(x, y_neg, rho) + m)[:, None]
        assert float(nce_mi_lower_bound(lr + m, neg, float(n0))) < est
    assert gaps == sorted(gaps, reverse=True)  # tighter with more negatives
    assert gaps[-1] < 0.02 and gaps[1] > 0.2
    # Eq. 8 holds for arbitrary (bad) critics too; the positive-only estimate does not.
    for const in (-3.0, 0.0, 5.0):
        pos = torch.full((1000,), const)
        assert float(nce_mi_lower_bound(pos, torch.full((1000, 1), const), 5.0)) < true_mi
    assert float(nce_mi_estimate(torch.full((10,), 20.0), protective_margin(5))) > true_mi


def _fit_critic(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, n0: int, same: bool,
                n_ctx: int, steps: int = 150) -> PairCritic:
    torch.manual_seed(0)
    crit = PairCritic(x.shape[1], y.shape[1], n_ctx, 16, 32)
    opt = torch.optim.Adam(crit.parameters(), 1e-2)
    m = protective_margin(n0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (256,), generator=g)
        xb, yb, tb = x[rows], y[rows], t[rows]
        idx, ok, _ = sample_negative_indices(tb, tb, n0, torch.eye(256, dtype=torch.bool), same,
                                             generator=g)
        pos = crit(xb, yb, tb) + m
        neg = crit(xb[:, None].expand(256, n0, x.shape[1]), yb[idx], tb[:, None].expand(256, n0))
        loss = -conditional_nce_objective(pos, neg + m, float(n0), ok)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return crit


def _estimate(crit: PairCritic, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
              n0: int) -> float:
    with torch.no_grad():
        return float(nce_mi_estimate(crit(x, y, t) + protective_margin(n0), protective_margin(n0)))


def test_trained_critic_estimate_is_below_and_near_the_true_mi() -> None:
    d, rho, n0 = 2, 0.8, 5
    true_mi = gaussian_mutual_information(rho, d)  # 1.02 nats < log 5
    g = torch.Generator().manual_seed(2)
    x, y = _gauss(20_000, d, rho, g)
    t = torch.zeros(x.shape[0], dtype=torch.long)
    crit = _fit_critic(x, y, t, n0, True, 1)
    xe, ye = _gauss(20_000, d, rho, g)
    te = torch.zeros(xe.shape[0], dtype=torch.long)
    trained = _estimate(crit, xe, ye, te, n0)
    optimal = float(nce_mi_estimate(_log_ratio(xe, ye, rho) + protective_margin(n0),
                                    protective_margin(n0)))
    assert trained < true_mi and trained < math.log(n0 + 1)
    assert trained > optimal - 0.1  # the trained critic reaches the optimal critic's value
    untrained = _estimate(PairCritic(d, d, 1, 16, 32), xe, ye, te, n0)
    assert trained > untrained + 0.3


def test_conditioning_on_t_removes_dependence_explained_by_t() -> None:
    """z^a, z^b independent given T but dependent through T: I(a; b | T) = 0 < I(a; b)."""
    g = torch.Generator().manual_seed(3)
    n, n0 = 8000, 5
    t = torch.randint(0, 4, (n,), generator=g)
    means = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    x = means[t] + 0.5 * torch.randn(n, 2, generator=g)
    y = means[t] + 0.5 * torch.randn(n, 2, generator=g)
    conditional = _estimate(_fit_critic(x, y, t, n0, True, 4), x, y, t, n0)
    const = torch.zeros_like(t)
    unconditional = _estimate(_fit_critic(x, y, const, n0, True, 1), x, y, const, n0)
    assert conditional < 0.1  # nothing left to share once T is known
    assert unconditional > 0.7  # ~ H(T) = log 4 = 1.39, capped below log 5


# ----- negatives and context builders -----------------------------------------------------
def test_negatives_share_the_anchor_context_and_never_the_anchor() -> None:
    torch.manual_seed(0)
    anchor = torch.tensor([0, 0, 1, 2])
    pool = torch.tensor([0, 0, 1, 2, 1, 0])
    exclude = torch.zeros(4, 6, dtype=torch.bool)
    exclude[torch.arange(4), torch.arange(4)] = True  # the first 4 pool rows are the anchors
    idx, ok, fb = sample_negative_indices(anchor, pool, 50, exclude, True)
    assert ok.all() and idx.shape == (4, 50)
    same = ~fb
    assert (pool[idx[same]] == anchor[same, None]).all()  # p(z | T): same context
    assert not (idx == torch.arange(4)[:, None]).any()
    assert fb.tolist() == [False, False, False, True]  # context 2 has no other member
    idx_any, _, _ = sample_negative_indices(anchor, pool, 200, exclude, False)
    assert (pool[idx_any] != anchor[:, None]).any()
    _, ok1, _ = sample_negative_indices(torch.tensor([0]), torch.tensor([0]), 3,
                                        torch.ones(1, 1, dtype=torch.bool))
    assert not ok1.any()  # no candidate at all: excluded from the loss


def test_kmeans_recovers_blobs_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    truth = torch.arange(3).repeat_interleave(50)
    x = centers[truth] + 0.3 * torch.randn(150, 2, generator=g)
    c1 = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    c2 = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c1, c2)
    lab = assign_clusters(x, c1)
    for k in range(3):  # each blob maps to exactly one cluster
        assert lab[truth == k].unique().numel() == 1
    assert lab.unique().numel() == 3
    brute = torch.cdist(x, c1).argmin(1)
    assert torch.equal(lab, brute)
    # More clusters than distinct points: empty clusters are re-seeded, all stay in use.
    dup = torch.tensor([[0.0], [0.0], [1.0], [1.0], [2.0]])
    assert assign_clusters(dup, kmeans(dup, 3, generator=torch.Generator())).unique().numel() == 3


def test_quantised_similarity_has_three_equal_mass_ordered_levels() -> None:
    s = torch.linspace(-1, 1, 300)
    lv = quantize_similarity(s, 3)
    assert torch.bincount(lv).tolist() == [100, 100, 100]
    assert torch.all(lv[1:] >= lv[:-1])  # monotone in the similarity
    ref = torch.linspace(0, 1, 99)
    assert quantize_similarity(torch.tensor([-5.0, 0.5, 5.0]), 3, ref).tolist() == [0, 1, 2]


# ----- the alternating steps --------------------------------------------------------------
@pytest.mark.parametrize("context", ["label", "kmeans", "similarity", "constant"])
def test_critic_and_main_steps_do_not_leak(data: MultimodalData, context: str) -> None:
    """After the critic step only critic parameters changed (and no encoder had a gradient);
    after the main step only encoders/classifier changed (and no critic had a gradient)."""
    method = _method(data, context=context)
    method.train()
    ctx = _ctx(method, data)
    critic_ids = {id(p) for p in method.critics.parameters()}
    log: list[tuple[str, set[str], set[str]]] = []
    step = ctx.step

    def spy(group: str = "main") -> None:
        with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
        before = {n: p.detach().clone() for n, p in method.named_parameters()}
        step(group)
        changed = {n for n, p in method.named_parameters() if not torch.equal(p, before[n])}
        log.append((group, with_grad, changed))

    ctx.step = spy  # type: ignore[method-assign]
    method.training_step(_batch(data), ctx)
    assert [g for g, _, _ in log] == ["critic", "main"]
    names = {n: id(p) in critic_ids for n, p in method.named_parameters()}
    (_, grads_c, changed_c), (_, grads_m, changed_m) = log
    assert changed_c and all(names[n] for n in changed_c) and all(names[n] for n in grads_c)
    assert changed_m and not any(names[n] for n in changed_m | grads_m)
    assert any(n.startswith("model.encoders") for n in changed_m)


def test_missing_modalities_are_left_out_of_the_pairs(data: MultimodalData) -> None:
    method = _method(data)
    method.train()
    ctx = _ctx(method, data)
    batch = _batch(data)
    batch.present["b"][:10] = False
    with torch.no_grad():
        plan = method._plan(batch, method(batch))[0]
    assert plan.rows.tolist() == list(range(10, 32))
    logs = method.training_step(batch, ctx)
    assert math.isfinite(float(logs["loss"].detach()))
    assert int(method.bank_present[:, 1].sum()) == 22  # absent rows are stored as absent
    batch.present["b"][:] = False  # no pair at all: the critic step is a no-op
    critic = [p.detach().clone() for p in method.critics.parameters()]
    logs = method.training_step(batch, ctx)
    assert float(logs["nce"]) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(critic, method.critics.parameters(),
                                                 strict=True))


def test_memory_buffer_is_fifo_and_excludes_stale_positives(data: MultimodalData) -> None:
    method = _method(data, memory_size=40)
    method.train()
    ctx = _ctx(method, data)
    method.training_step(_batch(data, 0, 32), ctx)
    assert int(method.bank_ptr) == 32 and int(method.bank_present.all(1).sum()) == 32
    method.training_step(_batch(data, 32, 32), ctx)
    assert int(method.bank_ptr) == (64 % 40)
    assert sorted(method.bank_index.tolist()) == sorted(list(range(24, 64)))  # last 40 ids
    # The bank now holds copies of samples 32..63: re-drawing that batch must never use
    # a sample's own (stale) copy as its negative.
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        plans = method._plan(batch, method(batch))
    for plan in plans:
        pool_ids = torch.cat([batch.index[plan.rows], method.bank_index[plan.bank_rows]])
        anchors = batch.index[plan.rows][:, None]
        assert not (pool_ids[plan.idx_b] == anchors).any()
        assert plan.idx_a is not None and not (pool_ids[plan.idx_a] == anchors).any()
        pool_t = torch.cat([plan.t, method.bank_label[plan.bank_rows]])
        ok = plan.ok_b & ~plan.fallback
        assert (pool_t[plan.idx_b][ok] == plan.t[ok, None]).all()  # same class (label T)
    state = method.state_dict()
    assert {"bank_0", "bank_1", "bank_index", "bank_ptr", "centroids"} <= set(state)
    twin = _method(data, memory_size=40)
    twin.load_state_dict(state)
    assert torch.equal(twin.bank_0, method.bank_0) and int(twin.bank_ptr) == int(method.bank_ptr)


# ----- contexts, ablations, end to end ----------------------------------------------------
def test_label_context_uses_targets_in_training_and_predictions_at_inference(
        data: MultimodalData) -> None:
    method = _method(data)
    batch = _batch(data)
    out = method(batch)
    method.train()
    assert torch.equal(method._sample_contexts(batch, out), batch.target)
    method.eval()
    assert torch.equal(method._sample_contexts(batch, out), out.logits.argmax(1))
    method.cfg.inference_context = "target"
    assert torch.equal(method._sample_contexts(batch, out), batch.target)
    est = method.cmi_estimates(batch)
    assert set(est) == {"a-b/nce", "a-b/mi"} and est["a-b/mi"] <= math.log(5) + 1e-6


@pytest.mark.parametrize("k", [5, 10])
def test_kmeans_context_refits_on_the_training_split(data: MultimodalData, k: int) -> None:
    method, history = _train(data, epochs=2, context="kmeans", n_clusters=k)
    assert bool(method.centroids_ready) and method.centroids.shape[0] == k
    assert method.critic("a", "b").context.num_embeddings == k
    method.train()
    batch = _batch(data)
    t = method._sample_contexts(batch, method(batch))
    assert t.min() >= 0 and t.max() < k and t.unique().numel() > 1
    before = method.centroids.clone()
    ctx = _ctx(method, data)
    method.cfg.kmeans_refit_every = 2
    ctx.epoch = 3
    method.on_epoch_start(ctx)
    assert torch.equal(before, method.centroids)  # not a refit epoch
    ctx.epoch = 4
    method.on_epoch_start(ctx)  # features moved during the last epoch: centroids follow
    assert not torch.equal(before, method.centroids)
    assert method.training  # the refit's eval-mode pass restores the mode
    assert all(math.isfinite(h["train/nce"]) for h in history)


def test_similarity_and_constant_contexts(data: MultimodalData) -> None:
    sim = _method(data, context="similarity")
    sim.train()
    batch = _batch(data)
    with torch.no_grad():
        plan = sim._plan(batch, sim(batch))[0]
    assert torch.bincount(plan.t, minlength=3).min() >= 8  # ~equal thirds of 32
    assert plan.t.max() <= 2
    const = _method(data, context="constant")
    with torch.no_grad():
        plan = const._plan(batch, const(batch))[0]
    assert (plan.t == 0).all() and const.critic("a", "b").context.num_embeddings == 1


def test_margin_caps_the_estimate_and_its_ablation_removes_it(data: MultimodalData) -> None:
    full = _method(data)
    assert full.margin == pytest.approx(-math.log(5)) and full.prior_ratio == 5.0
    _, hist = _train(data, epochs=2)
    assert all(h["train/mi_estimate"] <= math.log(5) for h in hist)
    nomargin = _method(data, **ABLATIONS["no_margin"])
    assert nomargin.margin == 0.0 and nomargin.prior_ratio == 1.0
    _, hist = _train(data, epochs=2, **ABLATIONS["no_margin"])
    assert all(h["train/mi_estimate"] <= 0.0 for h in hist)  # log sigma <= 0, no log N0


def test_without_cmi_is_joint_training(data: MultimodalData) -> None:
    """Table 2 "w/o CMI objective": no critic, the same numbers as the concat baseline."""
    method, hist = _train(data, epochs=2, **ABLATIONS["no_cmi"])
    assert len(method.critics) == 0 and "train/nce" not in hist[0]
    seed_everything(0)
    concat = create_method("concat", data.info, MODEL)
    train = TrainConfig(epochs=2, batch_size=32, lr=3e-3, device="cpu", progress=False)
    ref = Trainer(concat, data, train).fit().method
    a, _, _ = predict_split(method, data.test)
    b, _, _ = predict_split(ref, data.test)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(set(ABLATIONS) | set(CONTEXT_VARIANTS)))
def test_every_ablation_and_context_variant_trains(data: MultimodalData, variant: str) -> None:
    cfg = {**ABLATIONS, **CONTEXT_VARIANTS}[variant]
    method, hist = _train(data, epochs=3, **cfg)
    assert all(math.isfinite(h["train/loss"]) for h in hist)
    assert hist[-1]["train/task"] < hist[0]["train/task"]
    assert hist[-1]["valid/accuracy"] > 0.5  # 3 classes: chance ~ 0.33
    if cfg.get("use_cmi", True):
        assert hist[-1]["train/critic_nce"] > hist[0]["train/critic_nce"]  # the critic learns


def test_negatives_any_option_estimates_more_than_conditional(data: MultimodalData) -> None:
    """With negatives from any context the bound covers I(z^a, T; z^b) >= I(z^a; z^b | T)."""
    _, cond = _train(data, epochs=4)
    _, anyneg = _train(data, epochs=4, negatives="any")
    assert anyneg[-1]["train/mi_estimate"] > cond[-1]["train/mi_estimate"]


def test_unimodal_logits_from_split_concat_and_probe_heads(data: MultimodalData) -> None:
    method = _method(data)
    out = method(_batch(data))
    assert set(out.unimodal_logits) == {"a", "b"}
    assert torch.allclose(sum(out.unimodal_logits.values()), out.logits, atol=1e-5)
    seed_everything(0)
    gated = create_method("infobridge", data.info, ModelConfig(hidden=16, layers=1,
                                                                 fusion="gated"))
    heads = gated.net.unimodal_heads
    assert heads is not None  # the gated fusion cannot be split: probe heads instead
    batch = _batch(data, 0, 96)
    out = gated(batch)
    probe = gated.probe_loss(batch, out)
    enc = list(gated.net.encoders.parameters())
    grads = torch.autograd.grad(probe, enc + list(heads.parameters()), allow_unused=True)
    assert all(g is None for g in grads[: len(enc)])  # detached: encoders get nothing
    assert all(g is not None for g in grads[len(enc):])

    def probe_acc() -> float:
        with torch.no_grad():
            logits = gated(batch).unimodal_logits["a"]
        return float((logits.argmax(1) == batch.target).float().mean())

    before = probe_acc()
    gated.train()
    ctx = _ctx(gated, data)
    for _ in range(10):
        for start in (0, 32, 64):
            gated.training_step(_batch(data, start), ctx)
    assert probe_acc() > max(before, 0.6)


# ----- InfoNCE baseline ---------------------------------------------------------------------
def test_infonce_loss_is_task_plus_symmetric_cross_modal_infonce(data: MultimodalData) -> None:
    method = _method(data, "infonce")
    batch = _batch(data)
    batch.present["b"][:4] = False
    out = method(batch)
    losses = method.compute_loss(batch, out, None)
    za = method.projections["a"](out.features["a"])
    zb = method.projections["b"](out.features["b"])
    mask = batch.present["b"]
    nce = 0.5 * (info_nce(za, zb, 0.1, mask) + info_nce(zb, za, 0.1, mask))
    task = torch.nn.functional.cross_entropy(out.logits, batch.target)
    expected = float((task + 0.1 * nce).detach())
    assert float(losses["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    three = load_dataset("synthetic", seed=0, **{**SMALL, "modalities": ["x", "y", "z"],
                                                 "strengths": [1.5, 1.0, 1.0]})
    assert len(_method(three, "infonce").pairs) == 3


# ----- contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["infobridge", "infonce"])
@pytest.mark.parametrize("n_modalities", [2, 3])
def test_contract(name: str, n_modalities: int) -> None:
    report = check_method(name, n_modalities=n_modalities)
    assert report.last_loss < report.first_loss and report.score > report.chance + 0.15


def test_three_modalities_use_every_pair() -> None:
    three = load_dataset("synthetic", seed=0, **{**SMALL, "modalities": ["x", "y", "z"],
                                                 "strengths": [1.5, 1.0, 1.0]})
    method = _method(three)
    assert isinstance(method, InfoBridge)
    assert method.pairs == [("x", "y"), ("x", "z"), ("y", "z")] and len(method.critics) == 3
    method.train()
    ctx = _ctx(method, three)
    logs = method.training_step(three.train.batch(torch.arange(32)), ctx)
    assert math.isfinite(float(logs["nce"]))
    est = method.cmi_estimates(three.train.batch(torch.arange(32)))
    assert {k.split("/")[0] for k in est} == {"x-y", "x-z", "y-z"}


# ----- Fig. 3 diagnostic -------------------------------------------------------------------
def test_kernel_distances() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = kernel_distance_matrix(x, x, 5.0)
    assert float(d[0, 0]) == 0.0
    assert float(d[0, 1]) == pytest.approx(math.sqrt(2 - 2 * math.exp(-25 / 50)))
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(25)
    protos = torch.randn(4, 8, generator=g) * 3
    za = protos[labels] + 0.3 * torch.randn(100, 8, generator=g)
    zb = protos[labels] + 0.3 * torch.randn(100, 8, generator=g)
    res = cross_modal_kernel_distances({"a": za, "b": zb}, labels)
    assert res["paired"] < res["within_class"] < res["between_class"]
    assert res["paired"] <= res["overall"] <= math.sqrt(2)
    assert {"class/0", "class/3"} <= set(res)
    far = cross_modal_kernel_distances({"a": za, "b": torch.randn(100, 8, generator=g)}, labels)
    assert far["paired"] > res["paired"] and far["within_class"] > res["within_class"]
    with pytest.raises(ValueError):
        cross_modal_kernel_distances({"a": za, "b": zb[:, :4]}, labels)


def test_split_kernel_distances_on_a_model(data: MultimodalData) -> None:
    method = _method(data)
    res = split_kernel_distances(method, data.test, bandwidth=None)
    assert 0.0 < res["overall"] <= math.sqrt(2) and res["bandwidth"] > 0
