"""The method contract: a small ``nn.Module`` the one training loop drives.

A method owns its model and extra modules, declares parameter groups and stages, computes
named losses and may hook after backward or override a training step. It never builds an
optimiser nor calls ``.backward()``: the engine's :class:`~equimodal.engine.StepContext`
does (``ctx.backward``, ``ctx.step``, ``ctx.train_module``), so AMP, accumulation, clipping
and checkpoints stay in one place.

Every hook the engine, the evaluators, the CLI or the contract checker call is declared on
:class:`Method` with a default (the table is in ``docs/architecture.md``, "The method
contract"); nothing outside a method looks for an undeclared attribute with ``getattr``.
The engine and the evaluators type methods with :class:`Method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.losses.task import task_loss
from equimodal.models.multimodal import build_multimodal_model
from equimodal.types import Batch, ModelOutput, TaskInfo, TaskKind

if TYPE_CHECKING:
    from equimodal.data.dataset import MultimodalSplit
    from equimodal.engine.context import StepContext

ALL_TASKS: tuple[TaskKind, ...] = ("classification", "regression", "multilabel")


@dataclass(frozen=True)
class Stage:
    """One phase of a multi-stage schedule, with a typed payload for the method.

    A method dispatches on :attr:`key` and reads :attr:`index`; it never parses
    :attr:`name`, which is only the label logged in the history (``stage`` column).

    Attributes:
        name: Stage name (logged; unique within a schedule).
        epochs: Epochs of this stage (``None`` = ``TrainConfig.epochs``).
        groups: Parameter groups optimised in this stage (``None`` = every declared group).
            Parameters outside the active groups are frozen for the stage.
        select_best: Restore the best-validation weights of this stage when it ends.
        key: The kind of stage the method dispatches on (default: ``name``). Repeated
            phases share a key, e.g. UDI's ``follower`` stages or ReconBoost's ``boost``.
        index: The stage's integer payload within its kind (``None``: none), e.g. the
            follower's position in UDI's training order or the boosted modality's index
            in ReconBoost.
    """

    name: str
    epochs: int | None = None
    groups: tuple[str, ...] | None = None
    select_best: bool = True
    key: str = ""
    index: int | None = None

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)


@dataclass(frozen=True)
class Capabilities:
    """What a method supports; the contract checker and the CLI read these tags.

    Attributes:
        tasks: Supported task kinds.
        min_modalities: Fewest modalities it needs.
        max_modalities: Most modalities it handles (``None`` = any).
        missing_modalities: Whether batches with absent modalities are handled.
        sequences: Whether ``[B, T, D]`` inputs are handled.
    """

    tasks: tuple[TaskKind, ...] = ALL_TASKS
    min_modalities: int = 1
    max_modalities: int | None = None
    missing_modalities: bool = True
    sequences: bool = True


@dataclass
class MethodConfig:
    """Base config (empty); each method subclasses it with its paper's defaults."""


@dataclass
class FusionConfig(MethodConfig):
    """Config of methods whose only choice is the regression loss.

    Attributes:
        regression_loss: ``l1`` (MSA convention) or ``mse``.
    """

    regression_loss: str = "l1"


class Method(nn.Module):
    """Base class of all methods: the complete contract, every hook with its default.

    Subclasses set ``Config`` (a dataclass of paper defaults), ``capabilities``, ``paper``
    and ``family``; they override what they need among :meth:`build_model`,
    :meth:`param_groups`, :meth:`stages`, :meth:`compute_loss`, :meth:`on_after_backward`,
    :meth:`training_step`, :meth:`predict`, :meth:`modality_features`,
    :attr:`modalities_in_use`, :meth:`diagnostics`, :meth:`on_stage_start`,
    :meth:`on_epoch_start` and :meth:`on_epoch_end`. A paper's training recipe
    (optimiser, learning rate, batch size, epochs) is not part of a method: it lives in
    :data:`equimodal.presets.PAPER_PRESETS` (``--preset <method>-paper``).

    Attributes:
        contract_loss: The logged loss term that :func:`~equimodal.methods.check.check_method`
            requires to go down over the first stage (default ``"loss"``; Self-MM names
            ``"fused"`` because its objective gains terms as training goes).

    Args:
        model: The network built by :meth:`build_model`.
        info: Task description.
        cfg: An instance of ``Config``.
    """

    Config: ClassVar[type] = FusionConfig
    capabilities: ClassVar[Capabilities] = Capabilities()
    paper: ClassVar[str] = ""
    family: ClassVar[str] = "fusion"
    name: ClassVar[str] = "method"
    contract_loss: ClassVar[str] = "loss"

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: Any) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.cfg = cfg

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Build the network (default: generic encoders + ``model_cfg.fusion``)."""
        return build_multimodal_model(info, model_cfg)

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Raise ``ValueError`` if the task is outside this method's capabilities."""
        caps = cls.capabilities
        m = len(info.modalities)
        if info.kind not in caps.tasks:
            raise ValueError(f"method {cls.name!r} does not support {info.kind} tasks")
        if m < caps.min_modalities or (caps.max_modalities is not None and m > caps.max_modalities):
            raise ValueError(
                f"method {cls.name!r} needs {caps.min_modalities}-{caps.max_modalities or 'any'} "
                f"modalities, dataset {info.name!r} has {m}"
            )
        if not caps.sequences and any(s.is_sequence for s in info.modalities.values()):
            raise ValueError(f"method {cls.name!r} does not take sequence inputs")

    # ----- declarations -------------------------------------------------------------------
    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """Parameter groups the engine builds optimisers for (default: one ``main`` group)."""
        return {"main": list(self.parameters())}

    def group_options(self) -> dict[str, dict[str, float]]:
        """Per-group optimiser overrides, e.g. ``{"critic": {"lr_scale": 2.0}}``."""
        return {}

    def stages(self, train: TrainConfig) -> list[Stage]:
        """Training schedule (default: one joint stage of ``train.epochs``)."""
        return [Stage("joint", train.epochs)]

    # ----- computation --------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        """Run the network."""
        out: ModelOutput = self.model(batch)
        return out

    def task_loss(self, logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The supervised loss for this task (regression loss from ``cfg.regression_loss``)."""
        reg = getattr(self.cfg, "regression_loss", "l1")
        return task_loss(logits, target, self.info.kind, reg, reduction)

    def unimodal_loss(self, batch: Batch, out: ModelOutput) -> Tensor:
        """Sum over ``out.unimodal_logits`` of each head's task loss on the samples that
        have its modality (:meth:`masked_task_loss`); zero without unimodal logits.

        The shared form of the probe / unimodal-head loss (SCOPE, DecAlign).
        """
        total = out.logits.sum() * 0
        for name, logit in out.unimodal_logits.items():
            total = total + self.masked_task_loss(logit, batch.target, batch.present[name])
        return total

    def masked_task_loss(self, logits: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        """Mean task loss over the rows where ``mask`` holds (zero when none does).

        Unimodal heads / probes are trained only on samples that have their modality; a
        missing modality is zero-filled, and its logits must not teach anything.
        """
        if mask is None or bool(mask.all()):
            return self.task_loss(logits, target)
        per = self.task_loss(logits, target, reduction="none")
        w = mask.to(per.dtype)
        return (per * w).sum() / w.sum().clamp_min(1.0)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """Named loss terms; ``"loss"`` is the one optimised."""
        return {"loss": self.task_loss(out.logits, batch.target)}

    def on_after_backward(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> None:
        """Hook between backward and the optimiser step (gradient modulation)."""

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """One optimisation step; override for critic alternation or gradient surgery."""
        with ctx.autocast():
            out = self(batch)
            losses = self.compute_loss(batch, out, ctx)
        ctx.backward(losses["loss"])
        self.on_after_backward(batch, out, ctx)
        ctx.step()
        return losses

    def predict(self, batch: Batch) -> ModelOutput:
        """Inference output (default: :meth:`forward`)."""
        return self(batch)

    def modality_features(self, batch: Batch) -> dict[str, Tensor]:
        """Frozen per-modality features ``[B, H]`` that the linear probe reads.

        Default: ``predict(batch).features`` (each modality's encoder / representation
        feature). Override to return the representation the method calls its modality's own
        (or ``{}`` when its features mix modalities, so no probe is reported rather than a
        misleading one). Called under ``torch.no_grad`` in eval mode.
        """
        return dict(self.predict(batch).features)

    @property
    def modalities_in_use(self) -> list[str]:
        """Modalities the method reads (default: all of the data's, in order).

        Evaluation reports a per-modality score and a linear probe only for these: a
        unimodal baseline names its one modality, so no meaningless number for a modality
        it never sees stands next to real ones.
        """
        return list(self.info.modality_names)

    def diagnostics(self, split: MultimodalSplit) -> dict[str, float]:
        """Method-specific diagnostic numbers of the trained method on ``split``.

        The one diagnostics hook: ``equimodal diagnose`` (the ``dirichlet`` protocol of
        :func:`~equimodal.eval.diagnostics.protocol_report`) and ``equimodal train`` print
        what it returns. Keys starting with ``dirichlet`` are Dirichlet energies (SCOPE's
        graph); ``contribution/<modality>`` are modality shares (EBMC, Fig. 4).

        Args:
            split: A split on the method's device.

        Returns:
            Name -> value (default: ``{}``, no diagnostics).
        """
        return {}

    # ----- hooks --------------------------------------------------------------------------
    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """Called when a stage starts, before its first epoch.

        Args:
            stage: The stage (its optimisers are already built in ``ctx``).
            ctx: The step context.
            resumed: ``False`` when the stage starts fresh (a run resumed at a stage
                boundary starts the stage fresh too); ``True`` when a run resumes inside
                the stage from a checkpoint. State computed once per stage (a teacher
                snapshot, an estimate) is in the restored state dict then, so most methods
                return early; rebuild here what a checkpoint does not hold.
        """

    def on_epoch_start(self, ctx: StepContext) -> None:
        """Called before each training epoch."""

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Called after each training epoch; returned numbers are logged."""
        return {}


@dataclass
class MethodCard:
    """Facts about a method for tables and ``equimodal list``."""

    name: str
    summary: str
    paper: str
    family: str
    tasks: tuple[str, ...] = field(default_factory=tuple)
    modalities: str = ""


def method_card(cls: type[Method]) -> MethodCard:
    """Describe a registered method class."""
    caps = cls.capabilities
    mods = f"{caps.min_modalities}+" if caps.max_modalities is None else (
        f"{caps.min_modalities}-{caps.max_modalities}"
    )
    doc = (cls.__doc__ or "").strip().splitlines()
    return MethodCard(cls.name, doc[0] if doc else "", cls.paper, cls.family, caps.tasks, mods)
