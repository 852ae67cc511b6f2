"""SCOPE: semantic graphs (Theorem 1), losses (Eq. 3, 6), diffusion attention, Dirichlet
energy, the reference bank, every ablation switch and the method contract."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import Trainer, predict_split
from equimodal.losses.disentangle import similarity_surrogate
from equimodal.losses.graphs import (
    closed_form_weights,
    diffusion_coefficients,
    diffusion_matrix,
    dirichlet_energy,
    exact_weights,
    graph_alignment_loss,
    lambda_bounds,
    masked_softmax,
    semantic_graph,
)
from equimodal.methods.check import check_method
from equimodal.methods.gat_stack import GATStack
from equimodal.methods.scope import AFR_VARIANTS, TABLE6_ABLATIONS, Scope
from equimodal.methods.scope_modules import (
    DiffusionAttention,
    LossWeightNet,
    fused_graph,
    single_key_attention,
)
from equimodal.presets import PAPER_PRESETS
from equimodal.registry import create_method, load_dataset
from equimodal.types import Batch

SMALL = ModelConfig(hidden=16, layers=1)


def _method(data: MultimodalData, **overrides: Any) -> Scope:
    torch.manual_seed(0)
    method: Scope = create_method("scope", data.info, SMALL, **overrides)
    return method


def _batch(data: MultimodalData, n: int = 40) -> Batch:
    return data.train.batch(torch.arange(n))


def _step(method: Scope, batch: Batch) -> dict[str, torch.Tensor]:
    method.train()
    terms = method.compute_loss(batch, method(batch), None)  # type: ignore[arg-type]
    terms["loss"].backward()
    return terms


# ----- Theorem 1: the parameter-free semantic graph --------------------------------------
@pytest.mark.parametrize("lam", ["lower_bound", "exact"])
def test_semantic_graph_is_row_stochastic_and_scale_invariant(lam: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(25, 6, dtype=torch.float64)
    present = torch.ones(25, dtype=torch.bool)
    present[3] = False
    g = semantic_graph(x, 8, present, lam)
    assert (g >= 0).all()
    rows = g.sum(1)
    assert torch.allclose(rows[present], torch.ones(24, dtype=torch.float64))
    assert rows[3] == 0 and g[:, 3].sum() == 0  # absent sample: no edges in or out
    assert (g.diagonal() == 0).all() and ((g > 0).sum(1) <= 8).all()
    for alpha in (1e-3, 7.0):  # f -> alpha^2 f: Theorem 1's scale invariance
        assert torch.allclose(semantic_graph(alpha * x, 8, present, lam), g, atol=1e-10)


def test_k_adapts_to_batches_smaller_than_k_plus_one() -> None:
    g = semantic_graph(torch.randn(5, 3), k=30)
    assert torch.allclose(g.sum(1), torch.ones(5)) and ((g > 0).sum(1) <= 4).all()


def test_closed_form_is_theorem1_lower_bound_formula() -> None:
    torch.manual_seed(1)
    f = torch.rand(4, 7, dtype=torch.float64) + 0.1
    k, s = 7, f.sum(1, keepdim=True)
    raw = (1 - (k * k - 1) * f / (k * s)).clamp_min(0).sqrt()
    assert torch.allclose(closed_form_weights(f), raw / raw.sum(1, keepdim=True))
    # Equal distances: Cauchy-Schwarz is tight, the lower bound is exact (uniform 1/k).
    eq = torch.full((1, 5), 2.5, dtype=torch.float64)
    assert torch.allclose(closed_form_weights(eq), torch.full((1, 5), 0.2, dtype=torch.float64))
    assert torch.allclose(exact_weights(eq), torch.full((1, 5), 0.2, dtype=torch.float64))
    one = torch.tensor([[3.0, 1.0]])
    kept = torch.tensor([[True, False]])
    for fn in (closed_form_weights, exact_weights):  # k = 1: the neighbour takes weight 1
        assert torch.equal(fn(one, kept), torch.tensor([[1.0, 0.0]]))


def _psi_objective(g: np.ndarray, f: np.ndarray) -> float:
    g = np.clip(g, 0.0, 1.0 - 1e-12)
    return float((np.log((1 + g) / (1 - g)) * f).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_weights_match_brute_force_solution_of_eq4(seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.2, 3.0, size=6)
    res = minimize(_psi_objective, np.full(6, 1 / 6), args=(f,), method="SLSQP",
                   bounds=[(0.0, 1.0 - 1e-9)] * 6,
                   constraints=[{"type": "eq", "fun": lambda g: g.sum() - 1.0}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    exact = exact_weights(torch.tensor(f)[None])[0].numpy()
    assert np.allclose(exact, res.x, atol=1e-4)
    # The lower-bound closed form is feasible but (unless distances are equal) not optimal.
    lower = closed_form_weights(torch.tensor(f)[None])[0].numpy()
    assert _psi_objective(exact, f) <= _psi_objective(lower, f) + 1e-9


def _brute_force_row(f: np.ndarray) -> np.ndarray:
    """Eq. 4 for one row by a generic constrained solver (no use of Eq. 5)."""
    k = f.shape[0]
    res = minimize(_psi_objective, np.full(k, 1 / k), args=(f,), method="SLSQP",
                   bounds=[(0.0, 1.0 - 1e-9)] * k,
                   constraints=[{"type": "eq", "fun": lambda g: g.sum() - 1.0}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    return np.asarray(res.x)


@pytest.mark.parametrize("k", [3, 6])
def test_semantic_graph_matches_brute_force_of_eq4_on_knn_support(k: int) -> None:
    """Whole graphs on a small batch: every row solved by brute force over its k nearest
    other samples; ``exact`` must match, and Theorem 1's closed form must match when the
    kept distances are nearly equal (where its lower bound is tight)."""
    rng = np.random.default_rng(k)
    x = torch.tensor(rng.normal(size=(7, 3)))
    d = torch.cdist(x, x).pow(2).numpy()
    brute = np.zeros((7, 7))
    for i in range(7):
        others = np.array([j for j in np.argsort(d[i], kind="stable") if j != i])[:k]
        brute[i, others] = _brute_force_row(d[i, others])
    assert np.allclose(semantic_graph(x, k, lam="exact").numpy(), brute, atol=1e-4)
    # Near-equal kept distances: Cauchy-Schwarz in the proof is (nearly) tight.
    f = torch.tensor(1.0 + 0.01 * rng.random((5, k)))
    want = np.stack([_brute_force_row(row) for row in f.numpy()])
    assert np.allclose(closed_form_weights(f).numpy(), want, atol=1e-4)
    # ... and they differ for spread-out distances, so the test above can fail.
    far = torch.tensor(rng.uniform(0.1, 3.0, (1, k)))
    assert not np.allclose(closed_form_weights(far).numpy(), _brute_force_row(far[0].numpy()),
                           atol=1e-3)


@pytest.mark.parametrize("spread", [0.02, 2.0])
def test_exact_multiplier_lies_within_theorem1_bounds(spread: float) -> None:
    """Theorem 1 bounds lambda on the kept support (all k for close distances)."""
    torch.manual_seed(3)
    f = 1.0 + spread * torch.rand(10, 6, dtype=torch.float64)
    g = exact_weights(f)
    support = g > 0
    if spread < 0.1:
        assert support.all()
    lam = 2 * f / (1 - g**2)  # from g = sqrt(1 - 2 f / lambda): one value per row
    lam_row = lam.masked_fill(~support, float("nan")).nanmean(1)
    assert torch.allclose(lam[support], lam_row[:, None].expand_as(lam)[support], rtol=1e-6)
    lo, hi = lambda_bounds(f, support)
    multi = support.sum(1) > 1
    assert (lam_row >= lo * (1 - 1e-9))[multi].all() and (lam_row < hi)[multi].all()
    assert ((2 * f >= lam_row[:, None]) | support).all()  # clipped ones: f >= lambda / 2


def test_graph_alignment_loss_is_eq6() -> None:
    torch.manual_seed(0)
    graphs = torch.stack([semantic_graph(torch.randn(9, 4), 4) for _ in range(3)])
    ref = torch.stack([((graphs[a] - graphs[b]) ** 2).sum() / 81 for a in range(3)
                       for b in range(a + 1, 3)]).sum()
    assert torch.isclose(graph_alignment_loss(graphs), 2 / 6 * ref)
    assert graph_alignment_loss(graphs[[0, 0]]) == 0
    present = torch.ones(2, 9, dtype=torch.bool)
    present[1, :3] = False  # rows of samples missing a modality are not compared
    two = graphs[:2].clone()
    two[1, :3] = 5.0
    kept = ((graphs[0, 3:] - graphs[1, 3:]) ** 2).sum() / 36
    assert torch.isclose(graph_alignment_loss(two, present), kept)


# ----- MID: the similarity surrogate ------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_similarity_surrogate_matches_brute_force(reduction: str) -> None:
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4, dtype=torch.float64)
    present = torch.ones(3, 5, dtype=torch.bool)
    present[2, 1] = False
    sims: list[torch.Tensor] = []
    diffs: list[torch.Tensor] = []
    for m in range(3):
        for n in range(3):
            for i in range(5):
                for j in range(5):
                    if m == n or not (present[m, i] and present[n, j]):
                        continue
                    s = torch.cosine_similarity(h[m, i], h[n, j], dim=0)
                    (sims if i == j else diffs).append((1 - s) ** 2 if i == j else s**2)
    reduce = torch.sum if reduction == "sum" else torch.mean
    want_sim, want_diff = reduce(torch.stack(sims)), reduce(torch.stack(diffs))
    got_sim, got_diff = similarity_surrogate(h, present, reduction)
    assert torch.isclose(got_sim, want_sim) and torch.isclose(got_diff, want_diff)


def test_similarity_surrogate_is_zero_at_identity_structure_and_optimisable() -> None:
    eye = torch.eye(4).expand(2, 4, 4)
    assert all(float(v) == 0 for v in similarity_surrogate(eye))
    torch.manual_seed(0)
    h = torch.randn(2, 6, 8, requires_grad=True)
    losses = []
    for _ in range(150):  # plain gradient descent on the features themselves
        loss = torch.stack(similarity_surrogate(h)).sum()
        (grad,) = torch.autograd.grad(loss, h)
        with torch.no_grad():
            h -= 0.5 * grad
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.01 * losses[0]


# ----- BF: diffusion attention and Dirichlet energy ---------------------------------------
def test_diffusion_coefficients_and_operator_are_row_stochastic() -> None:
    raw = diffusion_coefficients(0.3, 3, normalize=False, dtype=torch.float64)
    assert torch.isclose(raw.sum(), torch.tensor(1 - 0.7**4, dtype=torch.float64))
    assert torch.isclose(diffusion_coefficients(0.3, 3).sum(), torch.tensor(1.0))
    torch.manual_seed(0)
    x = torch.randn(20, 8)
    _, mask = fused_graph(torch.stack([semantic_graph(x, 6)]), torch.ones(20, 1))
    op = DiffusionAttention(8, 3, 0.1).operator(x, mask)
    assert (op >= 0).all() and torch.allclose(op.sum(1), torch.ones(20), atol=1e-6)
    assert torch.allclose(DiffusionAttention(8, 0, 0.1).operator(x, mask), torch.eye(20))
    att = masked_softmax(torch.randn(20, 20), mask)
    assert (att[~mask] == 0).all() and torch.allclose(att.sum(1), torch.ones(20))
    lit = masked_softmax(torch.randn(20, 20), mask, "literal")
    assert (lit[~mask] > 0).all()  # the formula as printed does not mask
    scores = torch.randn(3, 4, requires_grad=True)
    empty = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    masked_softmax(scores, empty).sum().backward()
    assert torch.isfinite(scores.grad).all()  # type: ignore[arg-type]
    coeffs = diffusion_coefficients(0.1, 3)
    expect = sum(coeffs[t] * torch.linalg.matrix_power(att, t) for t in range(4))
    assert torch.allclose(diffusion_matrix(att, coeffs), expect, atol=1e-6)


def test_dirichlet_energy_matches_definition() -> None:
    torch.manual_seed(0)
    x, g = torch.randn(7, 3), semantic_graph(torch.randn(7, 2), 3)
    ref = torch.stack([((x[i] - x[j]) ** 2).sum() for i in range(7) for j in range(7)
                       if g[i, j] > 0]).sum() / 7
    assert torch.isclose(dirichlet_energy(x, g), ref)
    wref = torch.stack([g[i, j] * ((x[i] - x[j]) ** 2).sum() for i in range(7)
                        for j in range(7)]).sum() / 7
    assert torch.isclose(dirichlet_energy(x, g, weighted=True), wref)
    assert dirichlet_energy(torch.ones(7, 3), g) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_diffusion_keeps_more_dirichlet_energy_than_gat_stacking(seed: int) -> None:
    """Table 5's claim: at equal depth T, stacked attention over-smooths (energy -> 0)
    while the diffusion series keeps a share of every hop, including hop 0."""
    torch.manual_seed(seed)
    x = torch.randn(60, 16)
    g = semantic_graph(x, 30)
    mask = g > 0
    e0 = dirichlet_energy(x, g)
    energies = {}
    with torch.no_grad():
        for t in (1, 3, 5):
            e_diff = dirichlet_energy(DiffusionAttention(16, t, 0.1)(x, mask), g) / e0
            e_gat = dirichlet_energy(GATStack(16, t)(x, mask), g) / e0
            energies[t] = (float(e_diff), float(e_gat))
            assert e_diff > 2 * e_gat
    assert energies[5][1] < 0.01 < 0.05 < energies[5][0]
    assert energies[1][1] > energies[3][1] > energies[5][1]  # stacking smooths monotonically


@pytest.mark.parametrize("propagate", [DiffusionAttention(8, 3, 0.1), GATStack(8, 3)])
def test_bank_propagation_equals_query_row_of_augmented_graph(propagate: Any) -> None:
    torch.manual_seed(0)
    bank, q = torch.randn(15, 8), torch.randn(4, 8)
    bank_mask = semantic_graph(bank, 5) > 0
    q_mask = torch.rand(4, 15) < 0.4
    q_mask[3] = False  # a query without neighbours keeps its self-loop
    full = torch.zeros(19, 19, dtype=torch.bool)
    full[:4, 4:], full[4:, 4:] = q_mask, bank_mask
    full[3, 3] = True
    with torch.no_grad():
        ref = propagate(torch.cat([q, bank]), full)[:4]
        got = propagate.query_forward(q, q_mask, propagate.bank_states(bank, bank_mask))
    assert torch.allclose(got, ref, atol=1e-5)


# ----- the network: AFR, rho, unimodal heads, loss weighting ------------------------------
def test_rho_sums_to_one_over_present_and_unimodal_heads_see_one_modality(tiny_data) -> None:  # type: ignore[no-untyped-def]
    method = _method(tiny_data).eval()
    batch = _batch(tiny_data, 12)
    batch.present["b"][:3] = False
    batch.inputs["b"][:3] = 0
    with torch.no_grad():
        out = method(batch)
        rho = out.extras["rho"]
        assert torch.allclose(rho.sum(1), torch.ones(12), atol=1e-6)
        assert (rho[:3, 1] == 0).all() and (rho[3:] > 0).all()
        other = Batch({"a": batch.inputs["a"], "b": torch.randn_like(batch.inputs["b"])},
                      batch.target, batch.present)
        changed = method(other)
    assert torch.allclose(out.unimodal_logits["a"], changed.unimodal_logits["a"])
    assert not torch.allclose(out.logits[3:], changed.logits[3:])


@pytest.mark.parametrize("detach", [True, False])
def test_unimodal_heads_are_probes_unless_undetached(tiny_data, detach: bool) -> None:  # type: ignore[no-untyped-def]
    method = _method(tiny_data, unimodal_detach=detach)
    batch = _batch(tiny_data, 20)
    method.unimodal_loss(batch, method(batch)).backward()
    enc_grad = sum(float(p.grad.abs().sum()) for p in method.net.encoders.parameters()
                   if p.grad is not None)
    assert (enc_grad == 0) == detach
    assert all(p.grad is not None for p in method.net.probes.parameters())  # type: ignore[union-attr]


def test_single_key_attention_equals_masked_multihead_attention() -> None:
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 8, batch_first=True)
    x = torch.randn(5, 3, 16)
    ref, _ = attn(x, x, x, attn_mask=~torch.eye(3, dtype=torch.bool))
    assert torch.allclose(single_key_attention(attn, x), ref, atol=1e-6)


def test_loss_weight_net_starts_uniform_and_skips_inactive_terms() -> None:
    net = LossWeightNet(3)
    active = torch.tensor([True, False, True])
    w = net(torch.tensor([100.0, 0.01, 1.0]), active)
    assert torch.allclose(w, torch.tensor([0.5, 0.0, 0.5]))


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_loss_weight_net_maps_losses_and_joint_training_favours_small_losses(
        floor: float) -> None:
    """Phi depends on the loss values; trained on ``sum phi_i L_i`` (as SCOPE does) it
    shifts weight to the smallest loss, which ``floor`` bounds from below."""
    torch.manual_seed(0)
    net = LossWeightNet(3, floor=floor)
    torch.nn.init.normal_(net.net[2].weight)
    active = torch.ones(3, dtype=torch.bool)
    a, b = net(torch.tensor([5.0, 0.1, 1.0]), active), net(torch.tensor([0.1, 5.0, 1.0]), active)
    assert not torch.allclose(a, b) and torch.allclose(a.sum(), torch.tensor(1.0))
    losses = torch.tensor([100.0, 0.002, 1.0])  # L_dis (sum), L_align, L_pred scales
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (net(losses, active) * losses).sum().backward()
        opt.step()
    w = net(losses, active).detach()
    assert w.argmax() == 1 and w[0] == w.min() and torch.isclose(w.sum(), torch.tensor(1.0))
    assert w.min() >= floor - 1e-6 and (w.min() < 0.01) == (floor == 0)


@pytest.mark.parametrize("overrides", [
    {"use_sa": False}, {"use_ca": False}, {"use_sa": False, "use_ca": False},
    {"use_mid": False}, {"use_align": False}, {"fusion": "mlp", "use_align": False},
    {"fusion": "mean"}, {"fusion": "gat_stack"}, {"loss_weighting": "fixed"},
    {"graph_lambda": "exact"}, {"attention_mask": "literal"}, {"dis_reduction": "sum"},
    {"loss_weighting": "mlp"},
    {"inference": "batch"}, {"unimodal_heads": False}, {"bank_k": "fixed", "k": None},
    {"diffusion_steps": 0, "xi": 0.5}, {"phi_floor": 0.2},
])
def test_every_switch_trains_and_is_wired(tiny_data, overrides: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    method = _method(tiny_data, **overrides)
    net, cfg = method.net, method.cfg
    terms = _step(method, _batch(tiny_data))
    assert all(torch.isfinite(v).all() for v in terms.values())
    assert (net.sa is None) != cfg.use_sa and (net.ca is None) != cfg.use_ca
    assert (net.propagate is None) == (cfg.fusion in ("mlp", "mean"))
    assert isinstance(net.propagate, GATStack) == (cfg.fusion == "gat_stack")
    assert (net.mlp is None) != (cfg.fusion == "mlp")
    assert (net.weighting is None) == (cfg.loss_weighting == "fixed")
    assert (terms["dis"] > 0) == cfg.use_mid and (terms["phi_dis"] > 0) == cfg.use_mid
    assert (terms["align"] > 0) == cfg.use_align and (terms["phi_align"] > 0) == cfg.use_align
    assert (terms["uni"] > 0) == cfg.unimodal_heads
    if not cfg.use_ca:
        assert torch.allclose(method(_batch(tiny_data)).extras["rho"], torch.full((40, 2), 0.5))
    if cfg.loss_weighting == "fixed":
        want = terms["dis"] + terms["align"] + terms["pred"] + terms["uni"]
        assert torch.isclose(terms["loss"], want)
    else:
        assert net.weighting is not None
        if cfg.loss_weighting == "normalized":
            # First step: every normalised loss is exactly 1, so Phi gets no push yet.
            net.zero_grad()
            _step(method, tiny_data.train.batch(torch.arange(40, 80)))
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in net.weighting.parameters())
    grads = [p.grad for p in net.encoders.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


_ROWS = {**{f"Table 6 {k}": v for k, v in TABLE6_ABLATIONS.items()},
         **{f"Fig. 4 {k}": v for k, v in AFR_VARIANTS.items()}}


@pytest.mark.parametrize("row", list(_ROWS))
def test_each_table6_and_fig4_row_removes_exactly_its_component(tiny_data, row: str) -> None:  # type: ignore[no-untyped-def]
    """Every ablation row as configured (not just each switch alone) trains, and its
    component is really gone: no SA/CA modules, zero L_dis, no graphs, or mean pooling."""
    over = _ROWS[row]
    method = _method(tiny_data, **over)
    net, cfg = method.net, method.cfg
    batch = _batch(tiny_data)
    terms = _step(method, batch)
    assert torch.isfinite(terms["loss"]) and terms["pred"] > 0
    assert all(p.grad is not None for p in net.head.parameters())
    assert (net.sa is not None) == over.get("use_sa", True)
    assert (net.ca is not None) == over.get("use_ca", True)
    assert (terms["dis"] == 0) == (not over.get("use_mid", True))
    assert (terms["align"] == 0) == (not over.get("use_align", True))
    method.eval()
    with torch.no_grad():
        out = method(batch)
    h, fusion = out.extras["h"], over.get("fusion", "diffusion")
    assert ("graphs" in out.extras) == cfg.use_align
    assert ("fused_graph" in out.extras) == (fusion == "diffusion")
    if fusion == "mean":  # w/o BF: mean pooling of the refined features over modalities
        assert torch.allclose(out.fused, h.mean(0), atol=1e-6)
    elif fusion == "mlp":  # w/o SCA: a standard MLP on the concatenated features
        assert net.mlp is not None
        assert torch.allclose(out.fused, net.mlp(torch.cat(list(h), 1)), atol=1e-6)
    else:  # BF: residual diffusion of the rho-weighted features
        hbar = torch.einsum("nm,mnd->nd", out.extras["rho"], h)
        assert torch.allclose(out.extras["hbar"], hbar, atol=1e-6)
        assert not torch.allclose(out.fused, hbar, atol=1e-4)


def test_ablation_tables_map_to_switches() -> None:
    assert set(TABLE6_ABLATIONS) == {"w/o AFR & MID", "w/o AFR", "w/o MID", "w/o SCA",
                                     "w/o BF", "SCOPE"}
    assert TABLE6_ABLATIONS["w/o SCA"] == {"use_align": False, "fusion": "mlp"}
    assert TABLE6_ABLATIONS["w/o BF"] == {"fusion": "mean"}
    assert {k: (v["use_sa"], v["use_ca"]) for k, v in AFR_VARIANTS.items()} == {
        "SA": (True, False), "CA": (False, True), "SA+CA": (True, True)}
    train = TrainConfig(**PAPER_PRESETS["scope-paper"].train)
    assert (train.optimizer, train.lr, train.batch_size, train.epochs) == ("adamw", 1e-4, 60, 100)
    assert Scope.Config().k == train.batch_size // 2 and Scope.Config().diffusion_steps == 3
    with pytest.raises(ValueError, match="fusion"):
        create_method("scope", load_dataset("synthetic", n_train=8, n_valid=4, n_test=4).info,
                      SMALL, fusion="gat")


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_other_tasks_train(task: str) -> None:
    data = load_dataset("synthetic", task=task, n_classes=3, dim=6, latent=3, n_train=40,
                        n_valid=8, n_test=8)
    method = _method(data)
    terms = _step(method, _batch(data, 30))
    assert torch.isfinite(terms["loss"]) and method(_batch(data, 5)).logits.shape == (
        5, data.info.num_outputs)


# ----- the reference bank: batch-independent inference ------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_data) -> tuple[Scope, list[dict[str, float]]]:  # type: ignore[no-untyped-def]
    method = _method(tiny_data)
    train = TrainConfig(epochs=2, batch_size=40, lr=3e-3, progress=False, device="cpu")
    result = Trainer(method, tiny_data, train).fit()
    return result.method, result.history


def test_bank_is_refreshed_and_dirichlet_energy_logged(trained) -> None:  # type: ignore[no-untyped-def]
    method, history = trained
    assert int(method.bank_count) == 160 and int(method.bank_k) == round(30 * 159 / 39)
    for row in history:
        assert row["train/dirichlet_in"] > row["train/dirichlet_prop"] > 0
        assert math.isfinite(row["train/dirichlet_out"])


@pytest.mark.parametrize("fusion", ["diffusion", "gat_stack"])
def test_predictions_do_not_depend_on_test_batching(tiny_data, trained, fusion: str) -> None:  # type: ignore[no-untyped-def]
    method = trained[0] if fusion == "diffusion" else _method(tiny_data, fusion=fusion)
    if fusion != "diffusion":
        method.refresh_bank(tiny_data.train, 40)
    test = tiny_data.test
    ref, uni, _ = predict_split(method, test, batch_size=256)
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    for bs in (1, 7):
        shuffled, uni_s, _ = predict_split(method, test.subset(perm), batch_size=bs)
        assert torch.allclose(shuffled, ref[perm], atol=1e-5)
        assert torch.equal(shuffled.argmax(1), ref[perm].argmax(1))
        assert torch.allclose(uni_s["b"], uni["b"][perm], atol=1e-5)


def test_in_batch_inference_does_depend_on_batching(tiny_data, trained) -> None:  # type: ignore[no-untyped-def]
    method = _method(tiny_data, inference="batch")
    method.load_state_dict(trained[0].state_dict(), strict=False)  # no bank buffers here
    full, _, _ = predict_split(method, tiny_data.test, batch_size=256)
    small, _, _ = predict_split(method, tiny_data.test, batch_size=7)
    assert not torch.allclose(full, small, atol=1e-3)


def test_bank_survives_state_dict_round_trip(tiny_data, trained) -> None:  # type: ignore[no-untyped-def]
    method = trained[0]
    twin = _method(tiny_data)
    assert int(twin.bank_count) == 0
    twin.load_state_dict(method.state_dict())
    assert int(twin.bank_count) == 160
    a, _, _ = predict_split(method, tiny_data.test)
    b, _, _ = predict_split(twin, tiny_data.test)
    assert torch.allclose(a, b, atol=1e-6)


# ----- the public contract -----------------------------------------------------------------
def test_contract_default() -> None:
    report = check_method("scope")
    assert report.last_loss < report.first_loss


def test_contract_sequences_three_modalities() -> None:
    check_method("scope", epochs=4, sequences=True, n_modalities=3)
