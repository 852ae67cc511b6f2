"""UDI: Unidirectional Dynamic Interaction (Wang, Zhang, Liang, Qian, Hu; "Balanced Multimodal
Learning: An Unidirectional Dynamic Interaction Perspective").

Schedule with decoupled optimisation (the default):

1. ``unimodal``: every branch (encoder ``psi^m`` + linear head ``W^m``, Eq. 1-2) trains alone
   on its cross-entropy (Eq. 3), each with its own optimiser: "in parallel" on one device.
   After each epoch the branches are scored on validation, each keeps its best epoch, and
   they are ranked (best accuracy; lower predictive entropy among similar scores, Sec. 3.1).
   The first is the anchor unless ``anchor`` forces one (Appendix A.7).
2. ``follower_k`` (k = 1 .. M-1, Appendix A.2): branch ``order[k]`` (re-initialised) trains
   with ``L_cls^m + alpha_con L_con + alpha_com L_com`` (Eq. 12 / 27), earlier branches
   frozen: ``L_con`` = JS divergence to their fused output (Eq. 5 / 26), ``L_com`` = CLUB bound
   on ``I(f^g; f^m)`` averaged over them (Eq. 8, 11, 26). Each ``q_phi(f^m | f^g)`` is fitted
   by its NLL (Eq. 10) on the ``estimator`` group before the follower update (Algorithm 1).
   The controller (Eq. 13-16) sets the alphas once per epoch on one sampled mini-batch from
   ``grad L_cls`` (loss of the summed logits of the branches trained so far) against
   ``grad L_con`` / ``grad L_com`` on the follower's parameters, ReLU, normalisation.
3. ``fusion_head`` (``fusion="concat"``, the paper's MOSEI setting; the paper does not say
   how its head is trained): after every follower, one linear layer on the concatenated
   features of all branches, trained by cross-entropy for ``fusion_head_epochs`` with every
   branch frozen (eval mode); the engine keeps its best validation epoch. The branch heads
   stay and give the unimodal outputs. Otherwise (``sum``) the branch logits are summed.

``decoupled=False`` (Table 2 without DO): one ``joint`` stage trains all branches on the
cross-entropy of the summed logits (the Sum baseline) plus, per follower of the current
ranking, the same directed terms (earlier branches' outputs detached).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine.context import StepContext
from equimodal.losses.consistency import js_divergence
from equimodal.methods.base import Capabilities, Method, Stage
from equimodal.methods.inference import predict_split
from equimodal.methods.udi_modules import (
    GaussianEstimator,
    UDIConfig,
    branch_scores,
    controller_weights,
    flatten_state,
    grad_inner,
    load_flat_state,
    mask_or_none,
    masked_cross_entropy,
    rank_branches,
    validate_config,
)
from equimodal.models.fusion import SumFusion
from equimodal.models.multimodal import MultimodalModel, build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

log = logging.getLogger(__name__)

UNIMODAL = "unimodal"
FOLLOWER = "follower_"
FOLLOWER_KEY = "follower"
JOINT = "joint"
FUSION_HEAD = "fusion_head"


@register_method("udi")
class UDI(Method):
    """UDI: anchor trained alone, followers guided by JS consistency + CLUB MI, dynamic weights.

    Public state: :attr:`anchor`, :attr:`order_names`, :meth:`alpha`. Each follower keeps its
    own best validation epoch (``follower_selection``); with ``train.patience`` a follower
    stage cut short is restored at the next stage's start (not after the last stage).
    """

    Config = UDIConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Wang et al., Balanced Multimodal Learning: An Unidirectional Dynamic "
             "Interaction Perspective, 2025")
    family = "optimisation"

    order: Tensor
    branch_score: Tensor
    branch_entropy: Tensor
    alphas: Tensor
    head_ready: Tensor
    follower_best: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config and a forced anchor's name."""
        super().check_task(info, cfg)
        validate_config(cfg)
        if cfg.anchor is not None:
            info.check_modality(cfg.anchor)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders + one linear head per modality (``sum`` fusion = Eq. 2 heads)."""
        return build_multimodal_model(info, replace(model_cfg, fusion="sum", unimodal_heads=False))

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: UDIConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        m = len(self.names)
        dims = [cast(nn.Linear, self._heads[n]).in_features for n in self.names]
        # q_phi(f^j | f^i) for every ordered pair: the ranking is only known at run time.
        self.estimators = nn.ModuleDict({
            f"{i}_{j}": GaussianEstimator(dims[i], dims[j], cfg.estimator_hidden or dims[j],
                                          cfg.estimator_inputs)
            for i in range(m) for j in range(m) if i != j
        })
        self.concat_head: nn.Linear | None = (
            nn.Linear(sum(dims), info.num_outputs) if cfg.fusion == "concat" else None
        )
        forced = self.names.index(cfg.anchor) if cfg.anchor is not None else None
        self.register_buffer("order", torch.tensor(rank_branches([0.0] * m, [0.0] * m, 0.0,
                                                                 forced)))
        self.register_buffer("branch_score", torch.full((m,), float("-inf")))
        self.register_buffer("branch_entropy", torch.full((m,), float("inf")))
        self.register_buffer("alphas", torch.tensor([[cfg.alpha_con, cfg.alpha_com]] * m))
        self.register_buffer("head_ready", torch.tensor(False))
        # Best (key, key) of the current follower stage, see ``follower_selection``.
        self.register_buffer("follower_best", torch.full((2,), float("-inf")))
        # Per-branch best weights: selection stage, then the follower being trained.
        self._keep_branch_best = cfg.decoupled and cfg.select_best_branch
        if cfg.decoupled:
            for i, n in enumerate(self.names):
                self.register_buffer(f"snapshot_{i}", flatten_state(self._branch(n)))
        # Initial weights for ``follower_init="reset"``: not in the state dict (the same seed
        # rebuilds them), kept on CPU so they cost no accelerator memory.
        self._init_state = {i: flatten_state(self._branch(n)).clone()
                            for i, n in enumerate(self.names)}

    # ----- structure ----------------------------------------------------------------------
    @property
    def _net(self) -> MultimodalModel:
        return cast(MultimodalModel, self.model)

    @property
    def _heads(self) -> nn.ModuleDict:
        """The per-modality linear heads ``W^m, b^m`` of Eq. 2."""
        return cast(SumFusion, self._net.fusion).fcs

    def _branch(self, name: str) -> list[nn.Module]:
        return [self._net.encoders[name], self._heads[name]]

    def _branch_params(self, names: list[str]) -> list[nn.Parameter]:
        return [p for n in names for mod in self._branch(n) for p in mod.parameters()]

    @property
    def order_names(self) -> list[str]:
        """Modalities in training order: the anchor, then followers (Appendix A.2)."""
        return [self.names[i] for i in self.order.tolist()]

    @property
    def anchor(self) -> str:
        """The anchor modality (selected or forced)."""
        return self.order_names[0]

    def alpha(self, modality: str) -> tuple[float, float]:
        """Current ``(alpha_con, alpha_com)`` of a follower (Eq. 16 or the fixed values)."""
        a = self.alphas[self.names.index(modality)]
        return float(a[0]), float(a[1])

    def _branch_groups(self) -> tuple[str, ...]:
        return tuple(f"branch_{i}" for i in range(len(self.names)))

    @staticmethod
    def _stage_follower(stage: Stage) -> int:
        """Position of the stage's follower in the training order (its payload)."""
        assert stage.index is not None, f"stage {stage.name!r} has no follower"
        return stage.index

    def stages(self, train: TrainConfig) -> list[Stage]:
        """Selection + one stage per follower (or one joint stage) [+ concat head]."""
        cfg, e = self.cfg, train.epochs

        def pick(value: int | None) -> int:
            return value if value is not None else e

        if cfg.decoupled:
            # One optimiser per branch: independent training (clipping included).
            out = [Stage(UNIMODAL, pick(cfg.unimodal_epochs), groups=self._branch_groups(),
                         select_best=not cfg.select_best_branch)]
            # Followers keep their own best epoch (``follower_selection``), not the engine's.
            out += [Stage(f"{FOLLOWER}{k}", pick(cfg.follower_epochs),
                          groups=("follower", "estimator"), select_best=False,
                          key=FOLLOWER_KEY, index=k)
                    for k in range(1, len(self.names))]
        else:
            out = [Stage(JOINT, e, groups=("main", "estimator"))]
        if cfg.fusion == "concat":
            out.append(Stage(FUSION_HEAD, pick(cfg.fusion_head_epochs), groups=("fusion_head",)))
        return out

    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """``branch_<i>``: one branch each (selection stage); ``main``: every branch (joint
        stage); ``follower``: the stage's follower; ``estimator``: every ``q_phi``;
        ``fusion_head``: the concat head."""
        est = list(self.estimators.parameters())
        if stage.key == UNIMODAL:
            return {g: self._branch_params([n])
                    for g, n in zip(self._branch_groups(), self.names, strict=True)}
        if stage.key == JOINT:
            return {"main": self._branch_params(self.names), "estimator": est}
        if stage.key == FUSION_HEAD:
            assert self.concat_head is not None
            return {"fusion_head": list(self.concat_head.parameters())}
        follower = self.order_names[self._stage_follower(stage)]
        return {"follower": self._branch_params([follower]), "estimator": est}

    def group_options(self) -> dict[str, dict[str, float]]:
        """Learning-rate scale of the estimator group."""
        return {"estimator": {"lr_scale": self.cfg.estimator_lr_scale}}

    # ----- forward ------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        """Branch logits in ``unimodal_logits``; fused = their sum (or the trained concat head)."""
        feats = self._net.encode(batch)
        out: ModelOutput = self._net.fuse(batch, feats)
        if self.concat_head is not None and bool(self.head_ready):
            logits = self.concat_head(torch.cat([feats[n] for n in self.names], dim=1))
            out = ModelOutput(logits, out.features, out.unimodal_logits, out.fused)
        return out

    # ----- losses -------------------------------------------------------------------------
    def _pairs(self, follower: str, guides: list[str]) -> list[tuple[str, GaussianEstimator]]:
        j = self.names.index(follower)
        return [(g, cast(GaussianEstimator, self.estimators[f"{self.names.index(g)}_{j}"]))
                for g in guides]

    def _estimator_nll(self, out: ModelOutput, batch: Batch,
                       plan: list[tuple[str, list[str]]]) -> Tensor:
        """Sum of Eq. 10 over every (guide, follower) estimator; features detached."""
        total = torch.zeros((), device=batch.target.device)
        for follower, guides in plan:
            hf = out.features[follower].detach()
            for g, est in self._pairs(follower, guides):
                mask = mask_or_none(batch.present[follower] & batch.present[g])
                total = total + est.nll(out.features[g].detach(), hf, mask)
        return total

    def _guidance(self, out: ModelOutput, batch: Batch, follower: str,
                  guides: list[str]) -> tuple[Tensor, Tensor]:
        """``L_con`` (Eq. 5 / 26, JS to the detached fused guide output) and ``L_com``
        (Eq. 11 / 26, mean CLUB bound to each guide's detached features)."""
        pres = batch.present[follower]
        guide_logits = torch.stack([out.unimodal_logits[g] for g in guides]).sum(0).detach()
        any_guide = torch.stack([batch.present[g] for g in guides]).any(0)
        con = js_divergence(guide_logits, out.unimodal_logits[follower],
                            mask_or_none(pres & any_guide))
        hf = out.features[follower]
        coms = [est.upper_bound(out.features[g].detach(), hf,
                                mask_or_none(pres & batch.present[g]))
                for g, est in self._pairs(follower, guides)]
        return con, torch.stack(coms).mean()

    def _plan(self, stage: Stage) -> list[tuple[str, list[str]]]:
        """(follower, guides) pairs trained in this stage, in training order."""
        order = self.order_names
        if stage.key == JOINT:
            return [(order[k], order[:k]) for k in range(1, len(order))]
        k = self._stage_follower(stage)
        return [(order[k], order[:k])]

    def _cls_names(self, stage: Stage) -> list[str]:
        """Branches of the multimodal task loss ``L_cls`` of Eq. 13 (trained so far)."""
        if stage.key != FOLLOWER_KEY:
            return list(self.names)
        return self.order_names[: self._stage_follower(stage) + 1]

    # ----- training -----------------------------------------------------------------------
    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Dispatch on the stage: unimodal CEs, follower / joint guidance, concat head."""
        name = ctx.stage.key
        if name == UNIMODAL:
            return self._unimodal_step(batch, ctx)
        if name == FUSION_HEAD:
            return self._head_step(batch, ctx)
        return self._guided_step(batch, ctx)

    def _unimodal_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        with ctx.autocast():
            out = self(batch)
            ces = {n: masked_cross_entropy(out.unimodal_logits[n], batch.target, batch.present[n])
                   for n in self.names}
            # Disjoint parameters: the sum gives every branch exactly its own Eq. 3 gradient.
            loss = torch.stack(list(ces.values())).sum()
        ctx.backward(loss)
        for group in self._branch_groups():
            ctx.step(group)
        return {"loss": loss, **{f"ce/{n}": v for n, v in ces.items()}}

    def _head_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        assert self.concat_head is not None
        with ctx.autocast():
            with torch.no_grad():
                feats = self._net.encode(batch)
            logits = self.concat_head(torch.cat([feats[n] for n in self.names], dim=1))
            loss = self.task_loss(logits, batch.target)
        ctx.backward(loss)
        ctx.step(FUSION_HEAD)
        return {"loss": loss}

    def _guided_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        name = ctx.stage.key
        plan = self._plan(ctx.stage)
        with ctx.autocast():
            out = self(batch)
            nll = self._estimator_nll(out, batch, plan)
        # Algorithm 1 line 14: fit q_phi first, then use it in L_com.
        ctx.backward(nll)
        ctx.step("estimator")
        logs: dict[str, Tensor] = {"mi_nll": nll.detach()}
        with ctx.autocast():
            if name == JOINT:
                loss = self.task_loss(
                    torch.stack([out.unimodal_logits[n] for n in self.names]).sum(0),
                    batch.target)
                logs["ce"] = loss.detach()
            else:
                follower = plan[0][0]
                loss = masked_cross_entropy(out.unimodal_logits[follower], batch.target,
                                            batch.present[follower])
                logs["ce"] = loss.detach()
            for follower, guides in plan:
                con, com = self._guidance(out, batch, follower, guides)
                a = self.alphas[self.names.index(follower)].to(con.dtype)
                loss = loss + a[0] * con + a[1] * com
                suffix = "" if name != JOINT else f"/{follower}"
                logs[f"con{suffix}"], logs[f"com{suffix}"] = con.detach(), com.detach()
        group = "main" if name == JOINT else "follower"
        # ``inputs`` keeps L_com's gradient out of q_phi: phi learns from Eq. 10 only.
        ctx.backward(loss, inputs=ctx.params(group))
        ctx.step(group)
        return {"loss": loss, **logs}

    def _run_controller(self, ctx: StepContext) -> None:
        """Eq. 13-16 on one sampled mini-batch (once per epoch, Sec. 3.3)."""
        name = ctx.stage.key
        group = "main" if name == JOINT else "follower"
        params = ctx.params(group)
        batch = ctx.sample_batch(self.cfg.controller_batch_size)
        with ctx.autocast():
            out = self(batch)
            l_cls = self.task_loss(
                torch.stack([out.unimodal_logits[n] for n in self._cls_names(ctx.stage)]).sum(0),
                batch.target)
        g_cls = ctx.grad(l_cls, params, retain_graph=True)
        for follower, guides in self._plan(ctx.stage):
            with ctx.autocast():
                con, com = self._guidance(out, batch, follower, guides)
            xi_con = grad_inner(g_cls, ctx.grad(con, params, retain_graph=True))
            xi_com = grad_inner(g_cls, ctx.grad(com, params, retain_graph=True))
            weights = controller_weights(xi_con, xi_com, self.cfg.controller_eps)
            self.alphas[self.names.index(follower)] = torch.stack(weights).detach()

    # ----- hooks --------------------------------------------------------------------------
    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """Prepare a fresh stage (restore kept weights, reset a follower); a run resumed
        inside the stage has the prepared state in its checkpoint already."""
        if not resumed:
            self._prepare_stage(stage)

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Freeze modes, run the controller."""
        name = ctx.stage.key
        if name == FOLLOWER_KEY:
            active = self.order_names[self._stage_follower(ctx.stage)]
            # Frozen branches act as fixed teachers: no dropout noise, no statistics updates.
            for n in self.names:
                if n != active:
                    for mod in self._branch(n):
                        mod.eval()
        elif name == FUSION_HEAD:
            self.model.eval()
        if name in (FOLLOWER_KEY, JOINT) and self.cfg.dynamic_controller:
            self._run_controller(ctx)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # Weights saved before the engine called on_stage_start(resumed=...) carry the old
        # "prepared" flag buffer; it is no longer state.
        state_dict.pop(prefix + "prepared", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _snapshot(self, name: str) -> Tensor:
        buf: Tensor = getattr(self, f"snapshot_{self.names.index(name)}")
        return buf

    def _restore_follower(self, name: str) -> None:
        """Load the kept epoch of a follower (no-op before it was scored)."""
        if torch.isfinite(self.follower_best).all():
            load_flat_state(self._branch(name), self._snapshot(name))

    def _prepare_stage(self, stage: Stage) -> None:
        name = stage.key
        order = self.order_names
        if name == FUSION_HEAD:
            if self.cfg.decoupled:
                # Also covers a last follower stage cut short by early stopping.
                self._restore_follower(order[-1])
            self.head_ready.fill_(True)
            return
        if name != FOLLOWER_KEY:
            return
        k = self._stage_follower(stage)
        if k == 1:
            if self._keep_branch_best:
                for i, n in enumerate(self.names):
                    if torch.isfinite(self.branch_score[i]):
                        load_flat_state(self._branch(n), self._snapshot(n))
            log.info("udi: anchor %s, order %s, validation accuracy %s", self.anchor,
                     order, [round(float(s), 4) for s in self.branch_score])
        else:
            self._restore_follower(order[k - 1])
        self.follower_best.fill_(float("-inf"))
        if self.cfg.follower_init == "reset":
            load_flat_state(self._branch(order[k]), self._init_state[self.names.index(order[k])])

    @torch.no_grad()
    def _score_branches(self, ctx: StepContext) -> tuple[float, list[float], list[float]]:
        """Validation accuracy of the branches trained so far, fused (Appendix A.2), and
        accuracy and mean predictive entropy per branch."""
        split = ctx.valid_split
        if split is None:
            log.warning("udi: no validation split in the step context; ranking on training data")
            split = ctx.train_split
        fused_logits, uni, target = predict_split(self, split)
        present = {n: split.present[n].cpu() for n in self.names}
        return branch_scores(fused_logits, {n: uni[n] for n in self.names}, target, present,
                             self._cls_names(ctx.stage))

    @torch.no_grad()
    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Rank branches (selection / joint stage) or keep the follower's best epoch; log
        the controller weights."""
        name = ctx.stage.key
        logs: dict[str, float] = {}
        if name == FUSION_HEAD:
            return logs
        fused, scores, entropies = self._score_branches(ctx)
        if name in (UNIMODAL, JOINT):
            for i, n in enumerate(self.names):
                better = scores[i] > float(self.branch_score[i])
                if not self._keep_branch_best or better:
                    self.branch_score[i] = scores[i]
                    self.branch_entropy[i] = entropies[i]
                    if self._keep_branch_best:
                        self._snapshot(n).copy_(flatten_state(self._branch(n)))
                logs[f"{n}/select_accuracy"] = scores[i]
            forced = self.names.index(self.cfg.anchor) if self.cfg.anchor is not None else None
            order = rank_branches(self.branch_score.tolist(), self.branch_entropy.tolist(),
                                  self.cfg.tie_tolerance, forced)
            self.order.copy_(torch.tensor(order, device=self.order.device))
            logs["anchor_index"] = float(order[0])
        if name == FOLLOWER_KEY:
            follower = self.order_names[self._stage_follower(ctx.stage)]
            own = scores[self.names.index(follower)]
            key = (fused, own) if self.cfg.follower_selection == "fused" else (own, fused)
            if key > tuple(self.follower_best.tolist()):
                self.follower_best.copy_(torch.tensor(key))
                self._snapshot(follower).copy_(flatten_state(self._branch(follower)))
            if ctx.is_last_epoch:
                self._restore_follower(follower)
        if name in (FOLLOWER_KEY, JOINT):
            for follower, _ in self._plan(ctx.stage):
                con, com = self.alpha(follower)
                suffix = "" if name != JOINT else f"/{follower}"
                logs[f"alpha_con{suffix}"], logs[f"alpha_com{suffix}"] = con, com
        return logs
