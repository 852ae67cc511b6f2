"""ReconBoost: boosting can achieve modality reconcilement (Hua, Xu, Bao, Yang, Huang;
ICML 2024).

Each modality has a learner ``f_m = head(phi_m(x_m))`` (a head shared by all modalities, the
reference's ``common_space``); the ensemble is ``F = b * sum_{m in E} f_m`` with a learnable
boost rate ``b`` over the learners ``E`` added so far.

Schedule (engine stages, derived from ``train.epochs``): stage ``k`` picks modality
``k mod M`` in the data's order and runs

1. ``boost`` for ``boost_epochs`` epochs: only learner ``m`` (its encoder and the shared head)
   is updated with the reconcilement objective (Eq. 6-8; KL reconcilement with the ensemble of
   the *other* learners, which is equivalent to gradient boosting):
   ``L = mean_i [-(w1 - w2 * p_{-m}(y_i|x_i)) log p_m(y_i|x_i)] / C``
   with ``p_{-m} = softmax(F_{-m})`` (``= 1`` while no other learner is in the ensemble, as
   the reference code does), so samples the others already get right count less; from the
   second stage on, plus the memory consolidation term
   ``memory_weight * MSE(softmax(f_m), softmax(f_prev))`` toward the previously updated
   learner (detached);
2. learner ``m`` joins (or replaces its old self in) the ensemble;
3. ``rectify`` for ``rectify_epochs`` epochs, the global rectification scheme: every learner,
   the head and ``b`` are trained on ``CE(F)``.

Predictions use ``F`` over the added learners (plus the learner being boosted), each counted
only on samples where its modality is present. Every stage gets fresh optimisers (the
reference re-creates its SGD optimisers per phase); only the last stage selects its best
validation epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.engine.context import StepContext
from equimodal.methods.base import Capabilities, Method, MethodConfig, Stage
from equimodal.models.multimodal import build_encoders
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

BOOST = "boost"
RECTIFY = "rectify"


@dataclass
class ReconBoostConfig(MethodConfig):
    """ReconBoost hyper-parameters (defaults of the reference code).

    Attributes:
        boost_epochs: Epochs of each modality's boosting phase (``epochs_per_stage``).
        rectify_epochs: Epochs of global rectification after each phase (``correct_epoch``;
            0 disables the scheme).
        boost_weight: ``w1``, weight of the learner's own log-likelihood.
        reconcile_weight: ``w2``, weight of the reconcilement term ``p_{-m} log p_m``.
        memory_weight: Weight of the memory consolidation term (the reference's ``alpha``).
        shared_head: One head shared by all learners (the reference's ``common_space``);
            ``False``: one head per learner.
    """

    boost_epochs: int = 4
    rectify_epochs: int = 4
    boost_weight: float = 5.0
    reconcile_weight: float = 1.0
    memory_weight: float = 0.5
    shared_head: bool = True


class BoostEnsemble(nn.Module):
    """Per-modality encoders, learner heads (shared or not) and the boost rate ``b``.

    Args:
        encoders: Modality -> encoder ``[B, H]``.
        heads: One head (shared) or one per modality, ``H -> H -> C`` MLPs.
    """

    def __init__(self, encoders: nn.ModuleDict, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.encoders = encoders
        self.heads = heads
        self.boost_rate = nn.Parameter(torch.tensor(1.0))

    def head(self, name: str) -> nn.Module:
        """The head of learner ``name``."""
        return self.heads[name] if name in self.heads else self.heads["shared"]

    def learner(self, batch: Batch, name: str) -> Tensor:
        """Logits ``f_m`` of learner ``name`` ``[B, C]``."""
        h = self.encoders[name](batch.inputs[name], batch.lengths.get(name))
        h = h * batch.present[name].to(h.dtype).unsqueeze(1)
        out: Tensor = self.head(name)(h)
        return out

    def ensemble(self, batch: Batch, logits: dict[str, Tensor], members: list[str]) -> Tensor:
        """``b * sum_m f_m`` over ``members``, each where its modality is present."""
        ref = next(iter(logits.values()))
        total = torch.zeros_like(ref)
        for n in members:
            total = total + logits[n] * batch.present[n].to(ref.dtype).unsqueeze(1)
        return self.boost_rate * total


def _mlp(hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


@register_method("reconboost")
class ReconBoost(Method):
    """ReconBoost: alternating per-modality boosting with KL reconcilement + rectification.

    Hua et al., "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024.
    Implements the modality-alternating stages, the KL-reconcilement (gradient-boosting)
    objective ``-(w1 - w2 p_{-m}(y)) log p_m(y)``, the memory consolidation term and the global
    rectification stages; see the module docstring for the schedule.
    """

    Config = ReconBoostConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = "Hua et al., ReconBoost: Boosting Can Achieve Modality Reconcilement, ICML 2024"
    family = "optimisation"

    added: Tensor
    current: Tensor
    boost_stages_done: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        if cfg.boost_epochs < 1 or cfg.rectify_epochs < 0:
            raise ValueError("boost_epochs must be >= 1 and rectify_epochs >= 0")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders, MLP learner head(s) and the boost rate."""
        encoders = build_encoders(info, model_cfg)
        keys = ["shared"] if cfg.shared_head else info.modality_names
        heads = nn.ModuleDict({k: _mlp(model_cfg.hidden, info.num_outputs) for k in keys})
        return BoostEnsemble(encoders, heads)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: ReconBoostConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        self.register_buffer("added", torch.zeros(len(self.names), dtype=torch.bool))
        self.register_buffer("current", torch.tensor(-1))

    @property
    def net(self) -> BoostEnsemble:
        """The learners and the ensemble."""
        return cast(BoostEnsemble, self.model)

    # ----- schedule -----------------------------------------------------------------------
    def stages(self, train: TrainConfig) -> list[Stage]:
        """``boost`` / ``rectify`` stages cycling over the modalities, cut at ``train.epochs``."""
        cfg, left, k, out = self.cfg, train.epochs, 0, []
        while left > 0:
            e = min(cfg.boost_epochs, left)
            m = k % len(self.names)
            out.append(Stage(f"boost{k}_m{m}", e, groups=("learner",), select_best=False,
                             key=BOOST, index=m))
            left -= e
            if left > 0 and cfg.rectify_epochs > 0:
                e = min(cfg.rectify_epochs, left)
                out.append(Stage(f"rectify{k}", e, groups=("ensemble",), select_best=False,
                                 key=RECTIFY))
                left -= e
            k += 1
        out[-1] = replace(out[-1], select_best=True)
        return out

    def _learner_params(self, index: int) -> list[nn.Parameter]:
        name = self.names[index]
        return (list(self.net.encoders[name].parameters())
                + list(self.net.head(name).parameters()))

    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """``learner``: the boosted modality's encoder and head; ``ensemble``: everything."""
        if stage.key == BOOST and stage.index is not None:
            return {"learner": self._learner_params(stage.index)}
        return {"ensemble": list(self.parameters())}

    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """A boosting stage names its learner (``stage.index``); the learner joins the
        ensemble when the following stage starts (the reference adds it between its two
        phases). A resumed stage keeps the checkpoint's ensemble state."""
        if resumed:
            return
        if int(self.current) >= 0:
            self.added[int(self.current)] = True
        if stage.key == BOOST and stage.index is not None:
            self.current.fill_(stage.index)

    def members(self) -> list[str]:
        """Learners in the ensemble, plus the one being boosted."""
        cur = int(self.current)
        return [n for i, n in enumerate(self.names) if bool(self.added[i]) or i == cur]

    # ----- computation --------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        """Every learner's logits; the fused output is the ensemble ``F``."""
        uni = {n: self.net.learner(batch, n) for n in self.names}
        members = self.members() or list(self.names)
        return ModelOutput(self.net.ensemble(batch, uni, members), {}, uni)

    def boost_loss(self, batch: Batch, index: int) -> dict[str, Tensor]:
        """Reconcilement objective of learner ``index`` (+ memory consolidation)."""
        cfg = self.cfg
        name = self.names[index]
        mask = batch.present[name].bool()
        f_m = self.net.learner(batch, name)
        others = [n for i, n in enumerate(self.names) if bool(self.added[i]) and i != index]
        y = batch.target.view(-1, 1)
        with torch.no_grad():
            if others:
                f_rest = {n: self.net.learner(batch, n) for n in others}
                p_rest = torch.softmax(self.net.ensemble(batch, f_rest, others).float(), -1)
                p_join = p_rest.gather(1, y).squeeze(1)
            else:
                p_join = torch.ones(batch.size, device=f_m.device)
        logp = torch.log_softmax(f_m.float(), -1).gather(1, y).squeeze(1)
        per = -(cfg.boost_weight - cfg.reconcile_weight * p_join) * logp / f_m.shape[1]
        boost = per[mask].mean() if mask.any() else f_m.sum() * 0.0
        out = {"boost": boost.detach()}
        prev = (index - 1) % len(self.names)
        loss = boost
        if cfg.memory_weight > 0 and bool(self.added[prev]) and prev != index and mask.any():
            with torch.no_grad():
                p_prev = torch.softmax(self.net.learner(batch, self.names[prev]).float(), -1)
            mem = F.mse_loss(torch.softmax(f_m.float(), -1)[mask], p_prev[mask])
            out["memory"] = mem.detach()
            loss = loss + cfg.memory_weight * mem
        out["loss"] = loss
        return out

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Boosting stages: the reconcilement objective; rectify stages: CE of the ensemble."""
        stage = ctx.stage
        with ctx.autocast():
            if stage.key == BOOST and stage.index is not None:
                losses = self.boost_loss(batch, stage.index)
            else:
                out = self(batch)
                losses = {"loss": self.task_loss(out.logits, batch.target)}
        ctx.backward(losses["loss"])
        ctx.step()
        return losses

    def modality_features(self, batch: Batch) -> dict[str, Tensor]:
        """Each learner's encoder output (the ensemble's logits carry no shared features)."""
        model = cast(BoostEnsemble, self.model)
        return {n: model.encoders[n](batch.inputs[n], batch.lengths.get(n))
                for n in model.encoders if n in batch.inputs}
