"""InfoBridge wiring against brute-force references: the pair objective the method trains
is Eq. 1 / 7 with the N0/N1 weight and the margin (and their ablation), negatives come from
the memory buffer (or the batch when it is off), the two steps of Algorithm 1 get exactly
the gradients of -L_NCE (critic) and of Eq. 10 (encoders + classifier), sequence input,
and the Fig. 3 kernel-distance diagnostic against a double loop."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from equimodal.config import ModelConfig
from equimodal.data.dataset import MultimodalData
from equimodal.engine import seed_everything
from equimodal.eval.diagnostics_kernel import cross_modal_kernel_distances
from equimodal.methods.check import check_method
from equimodal.methods.infobridge import ABLATIONS
from equimodal.registry import create_method, load_dataset
from test_infobridge import _batch, _ctx  # one helper for both files

MODEL = ModelConfig(hidden=16, layers=1)
SMALL: dict[str, Any] = {"n_classes": 3, "dim": 8, "latent": 4, "noise": 0.5,
                         "strengths": [1.5, 1.0], "n_train": 96, "n_valid": 32, "n_test": 32}




@pytest.fixture(scope="module")
def data() -> MultimodalData:
    d: MultimodalData = load_dataset("synthetic", seed=0, **SMALL)
    return d


def _method(data: MultimodalData, **cfg: Any) -> Any:
    seed_everything(0)
    return create_method("infobridge", data.info, MODEL, **cfg)



# ----- Eq. 1 / 7 as the method computes it --------------------------------------------------
@pytest.mark.parametrize("variant", ["full", "no_margin", "one_sided"])
def test_pair_objective_is_eq1_with_prior_weight_and_margin(data: MultimodalData,
                                                            variant: str) -> None:
    """``_pair_terms`` equals a per-pair loop of Eq. 1: mean log h over positives plus
    (N0/N1) x mean log(1 - h) over the N0 = 5 negatives of each positive, with
    ``h = sigmoid(g + log(N1/N0))``; the "w/o protective margin" row drops both the margin
    and the N0/N1 weight (prior ratio 1)."""
    cfg = {"full": {}, "no_margin": ABLATIONS["no_margin"], "one_sided": {"symmetric": False}}
    method = _method(data, **cfg[variant])
    method.train()
    method.training_step(_batch(data, 0, 32), _ctx(method, data))  # fill the memory buffer
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        out = method(batch)
        plan = method._plan(batch, out)[0]
        obj, mi = method._pair_terms(plan, out.features, detach=True)
    gamma, weight = ((0.0, 1.0) if variant == "no_margin" else (-math.log(5), 5.0))
    n = plan.rows.numel()
    assert plan.idx_b.shape == (n, 5)  # N0 = 5 negatives per positive (Sec. 4.1)
    assert bool((plan.idx_b >= n).any())  # some come from the memory buffer
    crit = method.critic("a", "b")
    # The critic sees L2-normalised features (the default reading, ``normalize=True``).
    za, zb = (F.normalize(out.features[n][plan.rows], dim=-1) for n in ("a", "b"))
    pool = {"a": torch.cat([za, F.normalize(method.bank_0[plan.bank_rows], dim=-1)]),
            "b": torch.cat([zb, F.normalize(method.bank_1[plan.bank_rows], dim=-1)])}
    with torch.no_grad():
        log_h = [float(F.logsigmoid(crit(za[i], zb[i], plan.t[i]) + gamma)) for i in range(n)]

        def side(idx: torch.Tensor, ok: torch.Tensor, corrupt_b: bool) -> float:
            neg = []
            for i in range(n):
                if not bool(ok[i]):
                    continue
                for j in idx[i].tolist():
                    pa, pb = (za[i], pool["b"][j]) if corrupt_b else (pool["a"][j], zb[i])
                    neg.append(float(F.logsigmoid(-(crit(pa, pb, plan.t[i]) + gamma))))
            return sum(log_h) / n + weight * sum(neg) / len(neg)

        ref = side(plan.idx_b, plan.ok_b, True)
        if variant == "one_sided":
            assert plan.idx_a is None
        else:
            assert plan.idx_a is not None and plan.ok_a is not None
            ref = 0.5 * (ref + side(plan.idx_a, plan.ok_a, False))
    assert float(obj) == pytest.approx(ref, abs=1e-5)
    assert float(mi) == pytest.approx(sum(log_h) / n - gamma, abs=1e-5)  # Eq. 4 estimate


def test_in_batch_negatives_without_memory(data: MultimodalData) -> None:
    """``memory_size=0``: negatives are other rows of the batch, never the anchor itself."""
    method = _method(data, memory_size=0)
    method.train()
    logs = method.training_step(_batch(data), _ctx(method, data))
    assert math.isfinite(float(logs["nce"])) and float(logs["fallback"]) == 0.0
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        plan = method._plan(batch, method(batch))[0]
    assert plan.bank_rows.numel() == 0 and bool((plan.idx_b < 32).all())
    assert not bool((plan.idx_b == torch.arange(32)[:, None]).any())
    assert bool((plan.t[:, None] == plan.t[plan.idx_b]).all())  # same class (label T)


# ----- Algorithm 1: the gradients of each step ----------------------------------------------
@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_alternating_steps_follow_algorithm1_and_eq10(data: MultimodalData,
                                                      alpha: float) -> None:
    """With the negative draws fixed, the critic step's gradient is that of -L_NCE on
    detached features, and the main step's gradient (taken with the *updated* critic) is that
    of L_task - alpha * L_NCE (Eq. 10) on the encoders and the classifier."""
    method = _method(data, alpha=alpha)
    method.train()
    ctx = _ctx(method, data)
    method.training_step(_batch(data, 0, 32), ctx)  # a non-empty buffer
    batch = _batch(data, 32, 32)
    with torch.no_grad():
        plans = method._plan(batch, method(batch))
    method._plan = lambda b, o: plans  # same negatives in the step and in the reference
    main, critic = ctx.group_params["main"], ctx.group_params["critic"]
    step = ctx.step
    checked: list[str] = []

    def reference(group: str = "main") -> None:
        out = method(batch)  # dropout 0: the same features the step used
        params = main if group == "main" else critic
        if group == "main":
            nce, _ = method.nce_objective(plans, out.features, detach=False)
            task = F.cross_entropy(out.logits, batch.target)
            loss = task - alpha * nce
            # Without the information gradient the encoders would get something else.
            plain = torch.autograd.grad(task, params, retain_graph=True, allow_unused=True)
        else:
            nce, _ = method.nce_objective(plans, out.features, detach=True)
            loss = -nce
        ref = torch.autograd.grad(loss, params, allow_unused=True)
        for p, r in zip(params, ref, strict=True):
            expect = torch.zeros_like(p) if r is None else r
            got = torch.zeros_like(p) if p.grad is None else p.grad
            assert torch.allclose(got, expect, atol=1e-6, rtol=1e-4), group
        if group == "main":
            assert any(r is not None and q is not None and not torch.allclose(r, q, atol=1e-6)
                       for r, q in zip(ref, plain, strict=True))
        checked.append(group)
        step(group)

    ctx.step = reference  # type: ignore[method-assign]
    method.training_step(batch, ctx)
    assert checked == ["critic", "main"]


# ----- contract on sequence input -----------------------------------------------------------
def test_contract_on_sequences() -> None:
    report = check_method("infobridge", sequences=True)
    assert report.last_loss < report.first_loss and report.score > report.chance + 0.15


# ----- Fig. 3 diagnostic against a double loop ----------------------------------------------
def test_kernel_distances_match_a_double_loop() -> None:
    g = torch.Generator().manual_seed(5)
    n, sigma = 12, 0.7
    feats = {m: torch.randn(n, 3, generator=g) for m in ("x", "y", "z")}
    labels = torch.tensor([0, 1, 2] * 4)
    present = {m: torch.ones(n, dtype=torch.bool) for m in feats}
    present["z"][:3] = False
    res = cross_modal_kernel_distances(feats, labels, bandwidth=sigma, normalize=False,
                                       present=present)

    def loop(a: str, b: str) -> dict[str, float]:
        rows = [i for i in range(n) if present[a][i] and present[b][i]]
        buckets: dict[str, list[float]] = {"paired": [], "within_class": [],
                                           "between_class": [], "overall": []}
        for i in rows:
            for j in rows:
                d2 = float(((feats[a][i] - feats[b][j]) ** 2).sum())
                d = math.sqrt(2.0 - 2.0 * math.exp(-d2 / (2 * sigma**2)))
                buckets["overall"].append(d)
                key = ("paired" if i == j else
                       "within_class" if labels[i] == labels[j] else "between_class")
                buckets[key].append(d)
        return {k: sum(v) / len(v) for k, v in buckets.items()}

    pairs = {f"{a}-{b}": loop(a, b) for a, b in (("x", "y"), ("x", "z"), ("y", "z"))}
    for p, ref in pairs.items():
        for k, v in ref.items():
            assert res[f"{p}/{k}"] == pytest.approx(v, abs=1e-5)
    for k in ("paired", "within_class", "between_class", "overall"):
        assert res[k] == pytest.approx(sum(r[k] for r in pairs.values()) / 3, abs=1e-5)
