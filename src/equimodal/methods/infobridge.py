"""InfoBridge (Li et al., "InfoBridge: Balanced Multimodal Integration through Conditional
Dependency Modeling"): conditional cross-modal information maximisation with a protective
margin, trained by alternating a critic step and an encoder/classifier step (Algorithm 1).

Per modality pair ``(a, b)`` a critic ``h(z^a, z^b, T) = sigmoid(g(z^a, z^b, T) + gamma)``
scores pairs given a context ``T``. ``g`` estimates the pointwise conditional MI and
``gamma = log(N1 / N0)`` is the protective margin (Eq. 3-5). Positives are the two
modalities of one sample; each positive gets ``N0`` negatives (default 5) that pair it with
other samples *of the same context*, drawn from the current batch plus a FIFO memory buffer
(default 1024 samples), so negatives follow ``p(z^a | T) p(z^b | T)`` (Sec. 3). With
``symmetric`` both sides are corrupted (``N0`` negatives each; both are draws from the same
product of marginals). Every training step (Algorithm 1):

1. critic step: maximise ``L_NCE`` (Eq. 1 / 7, negatives weighted by ``N0 / N1``) over the
   ``critic`` group on detached features;
2. main step: minimise ``L_task - alpha * L_NCE`` (Eq. 10) over the ``main`` group
   (encoders + fusion/classifier) with the updated critic; ``backward(inputs=...)`` keeps
   each step's gradients out of the other group.

``M > 2`` modalities: one critic per unordered pair, ``L_NCE`` averaged over the pairs.

Context T (Table 3, ``context``): ``label`` (ground-truth class, default), ``kmeans``
(clusters of the concatenated L2-normalised features, refit in torch every epoch on the
training split, warm-started; ``n_clusters`` 5 or 10), ``similarity`` (the sample's
cross-modal cosine similarity in the critic's projection space, quantised into
``similarity_levels`` = 3 equal-mass levels over batch + buffer), ``constant``.
T is used only by the critic during training: prediction (encoders -> fusion -> logits)
never needs it, so no label is required at inference. When the critic itself is evaluated
on held-out data (:meth:`InfoBridge.cmi_estimates` in eval mode) the ``label`` context is
the predicted class (``inference_context="predicted"``) or the given target (``"target"``).

Ablations (Table 2, see :data:`ABLATIONS`): w/o CMI objective ``use_cmi=False`` (task loss
only, no critic); w/o protective margin ``protective_margin=False`` (``gamma = 0`` and the
negative term unweighted, i.e. prior ratio 1 instead of ``N0/N1``); w/o context-aware prior
``context="constant"``; w/o semantic context ``context="kmeans", n_clusters=5``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.engine.context import StepContext
from equimodal.losses.cmi import (
    assign_clusters,
    conditional_nce_objective,
    kmeans,
    nce_mi_estimate,
    protective_margin,
    quantize_similarity,
    sample_negative_indices,
)
from equimodal.methods._shared import PairwiseContrastive, check_choices, cosine
from equimodal.methods.base import Capabilities, MethodConfig, Stage
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

log = logging.getLogger(__name__)

CONTEXTS = ("label", "kmeans", "similarity", "constant")
NEGATIVES = ("context", "any")
INFERENCE_CONTEXTS = ("predicted", "target")

#: Table 2 rows as config overrides.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_cmi": {"use_cmi": False},
    "no_margin": {"protective_margin": False},
    "no_context_prior": {"context": "constant"},
    "unsupervised_context": {"context": "kmeans", "n_clusters": 5},
}

#: Table 3 rows (choices of T) as config overrides.
CONTEXT_VARIANTS: dict[str, dict[str, Any]] = {
    "retrieval_k3": {"context": "similarity", "similarity_levels": 3},
    "cluster_k5": {"context": "kmeans", "n_clusters": 5},
    "cluster_k10": {"context": "kmeans", "n_clusters": 10},
    "semantics": {"context": "label"},
}


@dataclass
class InfoBridgeConfig(MethodConfig):
    """InfoBridge hyper-parameters (paper defaults, Sec. 4.1).

    Attributes:
        alpha: Weight of ``L_NCE`` in Eq. 10 (0.1, grid-searched in the paper).
        n_negatives: ``N0``, negatives per positive pair (``N1 = 1``); margin ``log(1/N0)``.
        memory_size: Samples kept in the FIFO memory buffer of negatives (1024; 0 = in-batch).
        context: Condition T: ``label``, ``kmeans``, ``similarity`` or ``constant`` (Table 3).
        n_clusters: k of the ``kmeans`` context (the paper tries 5 and 10).
        similarity_levels: Levels of the quantised-similarity context (3).
        negatives: ``context`` draws negatives within the anchor's context (``p(z|T)``,
            Sec. 3); ``any`` draws them from the whole pool with the anchor's T given to the
            critic (then the bound is on ``I(z^a, T; z^b)``).
        use_cmi: Table 2 "w/o CMI objective" when ``False`` (no critic, task loss only).
        protective_margin: Table 2 "w/o protective margin" when ``False``.
        symmetric: Corrupt both sides of a positive (N0 negatives each); ``False``: b only.
        critic_width: Width of the critic's per-modality projections and context embedding.
        critic_hidden: Hidden width of the critic MLP.
        critic_lr_scale: Learning-rate multiplier of the ``critic`` group.
        critic_steps: Critic updates per training step (Algorithm 1: 1).
        normalize: L2-normalise features before the critic (default on; ``False`` is the
            literal unnormalised critic). Eq. 10 has the encoders *maximise* ``L_NCE`` as
            well as the critic; with raw features the cheapest way up is to scale a
            modality's features, and the weak modality's feature norm grew 7.6 -> 22 on
            mfeat mor,pix (issue 18), which shifts its split read-out ``h_m W_m + b/M`` by a
            near-constant logit offset ("mor 13 %" in README while a linear probe on the
            same frozen features read 66 %). On unit vectors the critic's score cannot be
            raised by a radial change, so the NCE gradient on ``z`` is orthogonal to ``z``
            (``tests/test_infobridge_health.py``). Measured (``benchmarks/health_feature_probe.py``,
            shared recipe, 30 epochs, seeds 0-2, literal -> normalised, concat): mfeat
            mor,pix fusion 97.42 -> 98.08 (98.00), mor norm 23.4 -> 10.2 (7.0), mor linear
            probe 69.1 -> 72.3 (71.9); synthetic 1.0/0.35 fusion 98.50 -> 98.67 (98.67),
            weak norm 8.2 -> 5.6 (3.9), probe 58.8 -> 61.2 (62.2). Norms still grow
            (tangential Adam steps), and mfeat's split read-out of mor stays at 13 %: that
            number is a read-out artifact, the probe shows the features are intact.
        kmeans_iters: Lloyd iterations per k-means refit.
        kmeans_refit_every: Refit the k-means contexts every this many epochs.
        inference_context: Label context when the critic is evaluated in eval mode:
            ``predicted`` (argmax of the fused logits) or ``target``.
    """

    alpha: float = 0.1
    n_negatives: int = 5
    memory_size: int = 1024
    context: str = "label"
    n_clusters: int = 5
    similarity_levels: int = 3
    negatives: str = "context"
    use_cmi: bool = True
    protective_margin: bool = True
    symmetric: bool = True
    critic_width: int = 64
    critic_hidden: int = 128
    critic_lr_scale: float = 1.0
    critic_steps: int = 1
    normalize: bool = True
    kmeans_iters: int = 20
    kmeans_refit_every: int = 1
    inference_context: str = "predicted"


def validate_config(cfg: InfoBridgeConfig) -> None:
    """Raise ``ValueError`` naming the offending field."""
    check_choices("infobridge", cfg, {"context": CONTEXTS, "negatives": NEGATIVES,
                                      "inference_context": INFERENCE_CONTEXTS})
    for name in ("n_negatives", "n_clusters", "similarity_levels", "critic_width",
                 "critic_hidden", "critic_steps", "kmeans_iters", "kmeans_refit_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"infobridge: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.memory_size < 0 or cfg.alpha < 0 or cfg.critic_lr_scale <= 0:
        raise ValueError("infobridge: memory_size and alpha must be >= 0, critic_lr_scale > 0")


class PairCritic(nn.Module):
    """``g(z^a, z^b, T)``: the critic's logit before the margin (a pointwise-CMI estimate).

    Linear projections ``p_a, p_b`` to a common width, an embedding ``e(T)`` of the context,
    and an MLP on ``[p_a, p_b, p_a * p_b, e(T)]``; the product term makes cross-modal
    agreement easy to express. Leading dimensions broadcast (``[N, K, D]`` negatives).

    Args:
        dim_a: Feature size of modality a. dim_b: Feature size of modality b.
        n_contexts: Number of context values. width: Projection width. hidden: MLP width.
    """

    def __init__(self, dim_a: int, dim_b: int, n_contexts: int, width: int = 64,
                 hidden: int = 128) -> None:
        super().__init__()
        self.proj_a = nn.Linear(dim_a, width)
        self.proj_b = nn.Linear(dim_b, width)
        self.context = nn.Embedding(n_contexts, width)
        self.net = nn.Sequential(nn.Linear(4 * width, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def project(self, za: Tensor, zb: Tensor) -> tuple[Tensor, Tensor]:
        """Both modalities in the critic's common space."""
        return self.proj_a(za), self.proj_b(zb)

    def forward(self, za: Tensor, zb: Tensor, t: Tensor) -> Tensor:
        """Logits ``g`` with the leading shape of ``t``."""
        pa, pb = self.project(za, zb)
        return self.net(torch.cat([pa, pb, pa * pb, self.context(t)], dim=-1)).squeeze(-1)


@dataclass
class _PairPlan:
    """Everything one step needs for a pair besides the features (reused by both steps)."""

    a: str
    b: str
    rows: Tensor  # [n] batch rows with both modalities
    bank_rows: Tensor  # [q] buffer slots with both modalities
    t: Tensor  # [n] anchor contexts
    idx_b: Tensor  # [n, N0] pool positions of b-side negatives
    ok_b: Tensor  # [n] rows with valid b-side negatives
    idx_a: Tensor | None  # [n, N0] a-side negatives (symmetric)
    ok_a: Tensor | None
    fallback: Tensor  # [n] rows without a same-context candidate


@register_method("infobridge")
class InfoBridge(PairwiseContrastive):
    """InfoBridge: conditional cross-modal NCE with protective margin, alternating critic."""

    Config = InfoBridgeConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Li et al., InfoBridge: Balanced Multimodal Integration through Conditional "
             "Dependency Modeling, 2025")
    family = "objective"

    bank_present: Tensor
    bank_label: Tensor
    bank_index: Tensor
    bank_ptr: Tensor
    centroids: Tensor
    centroids_ready: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        validate_config(cfg)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: InfoBridgeConfig) -> None:
        super().__init__(model, info, cfg)
        self.margin = protective_margin(cfg.n_negatives) if cfg.protective_margin else 0.0
        # The negatives' weight is the prior ratio N0/N1 whose log is the margin (Eq. 2-4).
        self.prior_ratio = float(cfg.n_negatives) if cfg.protective_margin else 1.0
        self.n_contexts = {"label": info.num_outputs, "kmeans": cfg.n_clusters,
                           "similarity": cfg.similarity_levels, "constant": 1}[cfg.context]
        self.critics = nn.ModuleDict()
        if not cfg.use_cmi:
            return
        idx = {n: i for i, n in enumerate(self.names)}
        for a, b in self.pairs:
            self.critics[f"{idx[a]}_{idx[b]}"] = PairCritic(
                self.dims[a], self.dims[b], self.n_contexts, cfg.critic_width, cfg.critic_hidden)
        k, m = cfg.memory_size, len(self.names)
        for i, n in enumerate(self.names):
            self.register_buffer(f"bank_{i}", torch.zeros(k, self.dims[n]))
        self.register_buffer("bank_present", torch.zeros(k, m, dtype=torch.bool))
        self.register_buffer("bank_label", torch.zeros(k, dtype=torch.long))
        self.register_buffer("bank_index", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
        total = sum(self.dims.values())
        self.register_buffer("centroids", torch.zeros(cfg.n_clusters, total))
        self.register_buffer("centroids_ready", torch.tensor(False))

    # ----- declarations -------------------------------------------------------------------
    def critic(self, a: str, b: str) -> PairCritic:
        """The critic of pair ``(a, b)``."""
        module = self.critics[f"{self.names.index(a)}_{self.names.index(b)}"]
        assert isinstance(module, PairCritic)
        return module

    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """``main``: encoders + fusion (+ probes); ``critic``: every pair critic."""
        groups = {"main": list(self.model.parameters())}
        if self.cfg.use_cmi:
            groups["critic"] = list(self.critics.parameters())
        return groups

    def group_options(self) -> dict[str, dict[str, float]]:
        """Learning-rate scale of the critic."""
        return {"critic": {"lr_scale": self.cfg.critic_lr_scale}}

    # ----- buffer -------------------------------------------------------------------------
    def _bank(self, name: str) -> Tensor:
        bank: Tensor = getattr(self, f"bank_{self.names.index(name)}")
        return bank

    @torch.no_grad()
    def _enqueue(self, batch: Batch, feats: dict[str, Tensor]) -> None:
        """FIFO write of the batch's detached features, presence, labels and sample ids."""
        size = self.cfg.memory_size
        if size == 0:
            return
        n = min(batch.size, size)
        sel = slice(batch.size - n, batch.size)
        slots = (self.bank_ptr + torch.arange(n, device=self.bank_ptr.device)) % size
        for name in self.names:
            bank = self._bank(name)
            bank[slots] = feats[name][sel].detach().to(bank.dtype)
        self.bank_present[slots] = torch.stack([batch.present[n][sel] for n in self.names], 1)
        self.bank_label[slots] = batch.target[sel].long()
        ids = batch.index[sel] if batch.index is not None else torch.full(
            (n,), -1, dtype=torch.long, device=slots.device)
        self.bank_index[slots] = ids.long()
        self.bank_ptr.fill_(int((self.bank_ptr + n) % size))

    # ----- contexts -----------------------------------------------------------------------
    def _cluster_input(self, feats: dict[str, Tensor]) -> Tensor:
        return torch.cat([F.normalize(feats[n].detach().float(), dim=1) for n in self.names], 1)

    @torch.no_grad()
    def fit_clusters(self, features: Tensor, seed: int = 0) -> None:
        """(Re)fit the k-means contexts on ``[N, sum H]`` cluster inputs (warm start)."""
        gen = torch.Generator().manual_seed(seed)
        init = self.centroids if bool(self.centroids_ready) else None
        self.centroids.copy_(kmeans(features, self.cfg.n_clusters, self.cfg.kmeans_iters,
                                    init, gen))
        self.centroids_ready.fill_(True)

    def _sample_contexts(self, batch: Batch, out: ModelOutput) -> Tensor | None:
        """Per-sample T for the batch (``None`` for the pair-level similarity context)."""
        kind = self.cfg.context
        if kind == "label":
            if not self.training and self.cfg.inference_context == "predicted":
                return out.logits.detach().argmax(1)
            return batch.target.long()
        if kind == "kmeans":
            x = self._cluster_input(out.features)
            if not bool(self.centroids_ready):  # first step before any epoch-level refit
                self.fit_clusters(x)
            return assign_clusters(x, self.centroids)
        if kind == "constant":
            return torch.zeros(batch.size, dtype=torch.long, device=out.logits.device)
        return None

    def _bank_contexts(self) -> Tensor | None:
        kind = self.cfg.context
        if kind == "label":
            return self.bank_label
        if kind == "kmeans":
            x = self._cluster_input({n: self._bank(n) for n in self.names})
            return assign_clusters(x, self.centroids)
        if kind == "constant":
            return torch.zeros_like(self.bank_label)
        return None

    @torch.no_grad()
    def _similarity_contexts(self, a: str, b: str, za: Tensor, zb: Tensor, bank_a: Tensor,
                             bank_b: Tensor) -> tuple[Tensor, Tensor]:
        """Quantised cross-modal cosine in the critic's projection space (batch, bank)."""
        crit = self.critic(a, b)
        s_batch = cosine(*crit.project(za, zb))
        s_bank = cosine(*crit.project(bank_a, bank_b))
        ref = torch.cat([s_batch, s_bank])
        lv = self.cfg.similarity_levels
        return quantize_similarity(s_batch, lv, ref), quantize_similarity(s_bank, lv, ref)

    # ----- objective ----------------------------------------------------------------------
    def _prep(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) if self.cfg.normalize else z

    @torch.no_grad()
    def _plan(self, batch: Batch, out: ModelOutput) -> list[_PairPlan]:
        """Anchors, contexts and negative draws of every pair (shared by both steps)."""
        cfg, plans = self.cfg, []
        t_sample = self._sample_contexts(batch, out)
        t_bank_all = self._bank_contexts() if cfg.memory_size > 0 else None
        ids = batch.index if batch.index is not None else torch.arange(
            batch.size, device=batch.target.device)
        for a, b in self.pairs:
            ia, ib = self.names.index(a), self.names.index(b)
            rows = (batch.present[a] & batch.present[b]).nonzero().flatten()
            if cfg.memory_size > 0:
                bank_rows = (self.bank_present[:, ia] & self.bank_present[:, ib]).nonzero()
                bank_rows = bank_rows.flatten()
            else:
                bank_rows = rows.new_zeros(0)
            if t_sample is None:  # similarity context: needs both features of the pair
                t, t_bank = self._similarity_contexts(
                    a, b, self._prep(out.features[a][rows]), self._prep(out.features[b][rows]),
                    self._prep(self._bank(a)[bank_rows]), self._prep(self._bank(b)[bank_rows]))
            else:
                t = t_sample[rows]
                t_bank = t_bank_all[bank_rows] if t_bank_all is not None else t.new_zeros(0)
            pool_t = torch.cat([t, t_bank])
            anchor_ids = ids[rows]
            # A candidate from the anchor's own sample (in-batch self or a stale bank copy)
            # is its positive partner, never a negative.
            pool_ids = torch.cat([anchor_ids, self.bank_index[bank_rows]]) if (
                cfg.memory_size > 0) else anchor_ids
            exclude = anchor_ids[:, None] == pool_ids[None, :]
            exclude[:, : rows.numel()] |= torch.eye(rows.numel(), dtype=torch.bool,
                                                    device=exclude.device)
            same = cfg.negatives == "context"
            idx_b, ok_b, fb = sample_negative_indices(t, pool_t, cfg.n_negatives, exclude, same)
            idx_a, ok_a = None, None
            if cfg.symmetric:
                idx_a, ok_a, _ = sample_negative_indices(t, pool_t, cfg.n_negatives, exclude,
                                                         same)
            plans.append(_PairPlan(a, b, rows, bank_rows, t, idx_b, ok_b, idx_a, ok_a, fb))
        return plans

    def _pair_terms(self, plan: _PairPlan, feats: dict[str, Tensor],
                    detach: bool) -> tuple[Tensor, Tensor]:
        """``L_NCE`` (Eq. 1) and the MI estimate (Eq. 4-5) of one pair."""
        za, zb = feats[plan.a][plan.rows], feats[plan.b][plan.rows]
        if detach:
            za, zb = za.detach(), zb.detach()
        za, zb = self._prep(za), self._prep(zb)
        crit, k, n = self.critic(plan.a, plan.b), self.cfg.n_negatives, plan.rows.numel()
        t_neg = plan.t[:, None].expand(n, k)
        pos = crit(za, zb, plan.t) + self.margin
        bank_b = self._prep(self._bank(plan.b)[plan.bank_rows].to(zb.dtype))
        pool_b = torch.cat([zb, bank_b])
        neg_b = crit(za[:, None, :].expand(n, k, za.shape[1]), pool_b[plan.idx_b], t_neg)
        obj = conditional_nce_objective(pos, neg_b + self.margin, self.prior_ratio, plan.ok_b)
        if plan.idx_a is not None:
            bank_a = self._prep(self._bank(plan.a)[plan.bank_rows].to(za.dtype))
            pool_a = torch.cat([za, bank_a])
            neg_a = crit(pool_a[plan.idx_a], zb[:, None, :].expand(n, k, zb.shape[1]), t_neg)
            obj_a = conditional_nce_objective(pos, neg_a + self.margin, self.prior_ratio,
                                              plan.ok_a)
            obj = 0.5 * (obj + obj_a)
        return obj, nce_mi_estimate(pos.detach(), self.margin)

    def nce_objective(self, plans: list[_PairPlan], feats: dict[str, Tensor],
                      detach: bool) -> tuple[Tensor, Tensor]:
        """Mean over pairs of ``L_NCE`` and of the conditional-MI estimate."""
        terms = [self._pair_terms(p, feats, detach) for p in plans if p.rows.numel() > 0]
        if not terms:
            zero = next(iter(feats.values())).new_zeros(())
            return zero, zero
        return (torch.stack([o for o, _ in terms]).mean(),
                torch.stack([e for _, e in terms]).mean())

    # ----- training -----------------------------------------------------------------------
    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Algorithm 1: critic step on ``L_NCE``, then main step on Eq. 10."""
        with ctx.autocast():
            out = self(batch)
            task = self.task_loss(out.logits, batch.target)
            probe = self.probe_loss(batch, out)
        logs: dict[str, Tensor] = {"task": task.detach()}
        if not self.cfg.use_cmi:
            loss = task + probe
            ctx.backward(loss)
            ctx.step("main")
            return {"loss": loss, **logs}
        plans = self._plan(batch, out)
        for _ in range(self.cfg.critic_steps):
            with ctx.autocast():
                critic_obj, _ = self.nce_objective(plans, out.features, detach=True)
            # Features are detached and ``inputs`` names the critic only: nothing reaches
            # the encoders or the classifier from this step. (No pair with both modalities
            # present in this batch: nothing to learn, the step is a no-op.)
            if critic_obj.requires_grad:
                ctx.backward(-critic_obj, inputs=ctx.params("critic"))
            ctx.step("critic")
        with ctx.autocast():
            nce, mi = self.nce_objective(plans, out.features, detach=False)
            loss = task - self.cfg.alpha * nce + probe
        # ``inputs`` keeps Eq. 10's gradient out of the critic (it maximises L_NCE alone).
        ctx.backward(loss, inputs=ctx.params("main"))
        ctx.step("main")
        self._enqueue(batch, out.features)
        fallback = torch.cat([p.fallback for p in plans]).float()
        logs.update(nce=nce.detach(), critic_nce=critic_obj.detach(), mi_estimate=mi,
                    fallback=fallback.mean() if fallback.numel() else fallback.sum())
        return {"loss": loss, **logs}

    @torch.no_grad()
    def cmi_estimates(self, batch: Batch) -> dict[str, float]:
        """Per-pair ``L_NCE`` and MI estimate on a batch with the current critic and buffer.

        In eval mode the ``label`` context follows ``inference_context``. Consumes the
        global RNG (negative draws).
        """
        if not self.cfg.use_cmi:
            return {}
        out = self(batch)
        res: dict[str, float] = {}
        for plan in self._plan(batch, out):
            if plan.rows.numel() == 0:
                continue
            obj, mi = self._pair_terms(plan, out.features, detach=True)
            res[f"{plan.a}-{plan.b}/nce"], res[f"{plan.a}-{plan.b}/mi"] = float(obj), float(mi)
        return res

    # ----- hooks --------------------------------------------------------------------------
    @torch.no_grad()
    def on_epoch_start(self, ctx: StepContext) -> None:
        """Refit the k-means contexts on the whole training split (eval-mode features)."""
        cfg = self.cfg
        if not (cfg.use_cmi and cfg.context == "kmeans"):
            return
        if bool(self.centroids_ready) and ctx.epoch % cfg.kmeans_refit_every != 0:
            return
        was = self.training
        self.eval()
        xs = [self._cluster_input(self.net.encode(b)) for b in ctx.iter_train()]
        self.train(was)
        self.fit_clusters(torch.cat(xs), seed=ctx.train.seed)
