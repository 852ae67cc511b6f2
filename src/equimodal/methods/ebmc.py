"""EBMC: Enhance-then-Balance Modality Collaboration (He et al., 2025).

Stage I ("enhance") trains the task loss with Modality Semantic Disentanglement (MSD,
Eq. 1-5) and Cross-modal Complementary Enhancement (CCE, Eq. 6-7). At the start of stage II
("balance") the selected stage-I network is frozen as the teacher; stage II adds
Energy-guided Modality Coordination (EMC, Eq. 8-12: energy gap + energy-gradient penalty by
double backpropagation) and Instance-aware Modality Trust Distillation (IMTD, Eq. 13-16).
The objective is Eq. 17: ``L_task + zeta L_MSD + beta L_CCE + gamma L_EMC + eta L_IMTD``.

Regression: each ``T_m`` predicts a Laplace (L1 task loss) or Gaussian (MSE) distribution
from ``(mean, log_scale)``; the scale is fitted by its negative log-likelihood with the mean
detached (added to ``L_uni``). Its entropy is ``u_m`` (Eq. 9), its variance the teacher
variance of Eq. 13-14, and the distillation divergence between the student's
``N(f, tau)`` and the teacher's ``N(mu_m, tau)`` is ``(f - mu_m)^2 / (2 tau)``.

Readings of the paper where it is ambiguous: the fused head ``f`` sees the encoder features
``z_m`` and Eq. 7's task term swaps in one enhanced ``z~_m`` at a time; ``z_m`` in Eq. 8 is
the encoder feature; energies are per-sample and ``E(m)`` is their mean; the penalty of
Eq. 12 is the mean per-sample squared gradient norm (batch-size free); L_gap sums unordered
pairs (Eq. 27); L_inv and L_dis are averaged over samples; the teacher ``T_m`` of IMTD is
the whole selected stage-I network (encoder, ``D_m^s``, ``T_m``); absent modalities get
zero trust and are left out of every per-modality average.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig, TrainConfig
from equimodal.data.dataset import MultimodalSplit
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, MethodConfig, Stage
from equimodal.methods.ebmc_losses import EBMCObjective
from equimodal.methods.ebmc_modules import (
    EBMCNet,
    FrozenSnapshot,
    modality_contribution,
    teacher_temperatures,
)
from equimodal.models.multimodal import build_multimodal_model
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

if TYPE_CHECKING:
    from equimodal.engine.context import StepContext

log = logging.getLogger(__name__)

STAGE1 = "enhance"
STAGE2 = "balance"


@dataclass
class EBMCConfig(MethodConfig):
    """EBMC hyper-parameters (paper defaults; reference-code values in brackets).

    Attributes:
        stage1_epochs: Stage-I epochs (``None``: half of ``train.epochs``; paper 100-150).
        stage2_epochs: Stage-II epochs (``None``: the rest of ``train.epochs``).
        stage2_keep_enhancement: Keep the MSD and CCE terms of Eq. 17 in stage II.
        zeta: Weight of L_MSD in Eq. 17.
        beta: Weight of L_CCE in Eq. 17.
        gamma: Weight of L_EMC in Eq. 17.
        eta: Weight of L_IMTD in Eq. 17.
        use_msd: MSD on (Table 4 "w/o MSD" = False: no D^c/D^s, no L_inv/L_dis; the
            unimodal predictors T_m stay, on z_m, because EMC and IMTD need them).
        lambda1: Weight of L_dis in Eq. 5.
        lambda2: Weight of L_uni in Eq. 5.
        nce_temperature: InfoNCE temperature of Eq. 2 (paper silent; reference 0.05).
        dis_form: ``cosine`` (Eq. 3) or ``cosine_sq`` (reference: mean pairwise cos^2).
        use_cce: CCE on (Table 4 "w/o CCE" = False).
        cce_generator: ``per_modality`` G_m over all parts (Eq. 6) or one ``shared`` network
            over [other shared part; own specific part] (reference).
        cce_gamma: Weight of the task term inside Eq. 7 (paper reuses gamma = 0.1).
        cce_task_term: ``task`` = loss of f(z~_m, z_-m) (Eq. 7) or ``head_l1`` = L1 between
            f's outputs on z_m and on z~_m (reference).
        cce_noise_std: Std of the stochastic perturbation epsilon of Eq. 6 (training only;
            the paper calls it optional and gives no value).
        cce_detach_target: Stop gradients into the reconstruction target z_m (reference).
        cce_impute_missing: Use z~_m in place of an absent modality's features.
        cce_predict: Feed z~_m of every modality to the fusion head f (train and test).
            Default False: Eq. 7 uses ``f(z~_m, z_-m)`` only inside ``L_CCE`` and Eq. 17
            trains ``L_task`` on f of the encoder features; Sec. 3.3's "provides more
            informative representations for subsequent EMC" is read as a training effect
            (through the shared encoder and D^c/D^s), not a change of the prediction path.
        cce_own_dropout: Probability of hiding a sample's own parts from G_m in training.
        use_emc: EMC on (Table 4 "w/o EMC" = False).
        use_energy_norm: The alpha ||z_m||^2 term of Eq. 8 (Table 7).
        use_energy_loss: The beta l_m term of Eq. 8 (Table 7).
        use_energy_uncertainty: The gamma u_m term of Eq. 8 (Table 7).
        energy_alpha: alpha of Eq. 8 (paper silent; reference 1).
        energy_beta: beta of Eq. 8 (paper reuses beta = 0.1; reference 1).
        energy_gamma: gamma of Eq. 8 (paper reuses gamma = 0.1; reference 1).
        delta: Weight of the energy-gradient penalty of Eq. 12 (paper silent; reference 0.01).
        grad_penalty: ``full`` = ||dE(m)/dz_m||^2 (Eq. 12) or ``norm_only`` = gradient of the
            norm term only (reference).
        sq_norm_reduction: ``sum`` (||.||_2^2, paper) or ``mean`` over features (reference)
            for Eq. 7's reconstruction and Eq. 8's norm term. Default ``mean``: summed
            over H = 64-256 features the norm term is 95-97 % of the energy, so L_gap
            balances feature norms and l_m (Table 7's most important term) is 1-2 % of it;
            stage II then stalls (train CE 1.00 vs 0.73 with mean).
        uncertainty_source: u_m from the ``student``'s T_m (Eq. 37 differentiates it) or
            the frozen ``teacher`` (reference).
        use_imtd: IMTD on (Table 4 "w/o IMTD" = False).
        tau: Distillation temperature of Eq. 16 (paper silent; reference 1).
        imtd_uncertainty: ``variance``: sigma = ||sigma^2||_1 = the teacher's predictive
            variance (Eq. 13-14); ``reference``: sigma = entropy (classification) or
            |mu_m - mean_k mu_k| (regression), spread = sigma^2.
        rho_offset: Added to log(1 + ||sigma^2||_1) in Eq. 14 (paper 0; reference 0.1).
        kl_direction: ``student_teacher`` = KL(student || teacher) (Eq. 16) or
            ``teacher_student`` (usual distillation).
        tau_sq_scale: Multiply L_IMTD by tau^2 (reference).
        teacher_calibration: ``temperature`` (default) or ``none``. At the start of stage II
            each classification teacher ``T_m`` gets one temperature ``s_m`` minimising
            its NLL on the validation split (training split if none), and IMTD, the
            uncertainty ``u_m`` and the KL targets use ``T_m / s_m``. Reading: Eq. 13-15
            treat ``p_{T_m}`` as a predictive distribution whose variance measures
            reliability, which presupposes calibrated probabilities. Measured without it
            (paper recipe, synthetic 1.0 / 0.35): teachers at 92 % / 38 % test accuracy
            but both near-flat (variance 0.67 / 0.74 of a 0.9 maximum), trust 0.54 / 0.46.
            Raising their loss weight (the ``zeta lambda2 = 0.05`` diagnosis) changes
            nothing under Adam: in stage I the heads' only gradient is L_uni and Adam's
            step does not depend on its scale (identical runs to 4 digits). With it,
            trust is 0.90 / 0.10 (per-sample std 0.14), but distilling towards the sharper
            strong teacher costs fusion at the paper recipe: 93.7 % vs 96.0 % with
            ``none`` (seeds 0-2; concat 97.0 %); shared recipe 99.2 % (concat 98.8 %).
        imtd_inference: ``off`` (default) or ``reweight``: Sec. 4.4 (Q3) says IMTD
            "estimates per-sample modality reliability at inference time" and suppresses a
            corrupted modality. Reading: at inference (stage II) each modality's input to f
            is scaled by ``alpha_m^i / abar_m`` (Eq. 15 trust from the frozen teachers over
            its running training mean ``abar_m``, clamped to ``[0, M]``), so a typical
            sample is unchanged and only samples whose modality is unusually unreliable
            are rebalanced.
        trust_momentum: Momentum of the running mean trust ``abar_m`` (per step).
        regression_loss: ``l1`` (MSA convention) or ``mse``.
        contribution_samples: Training samples used for the per-epoch contribution metric.
    """

    stage1_epochs: int | None = None
    stage2_epochs: int | None = None
    stage2_keep_enhancement: bool = True
    zeta: float = 0.5
    beta: float = 0.1
    gamma: float = 0.1
    eta: float = 0.1
    use_msd: bool = True
    lambda1: float = 0.1
    lambda2: float = 0.1
    nce_temperature: float = 0.05
    dis_form: str = "cosine"
    use_cce: bool = True
    cce_generator: str = "per_modality"
    cce_gamma: float = 0.1
    cce_task_term: str = "task"
    cce_noise_std: float = 0.1
    cce_detach_target: bool = True
    cce_impute_missing: bool = False
    cce_predict: bool = False
    cce_own_dropout: float = 0.0
    use_emc: bool = True
    use_energy_norm: bool = True
    use_energy_loss: bool = True
    use_energy_uncertainty: bool = True
    energy_alpha: float = 1.0
    energy_beta: float = 0.1
    energy_gamma: float = 0.1
    delta: float = 0.01
    grad_penalty: str = "full"
    sq_norm_reduction: str = "mean"
    uncertainty_source: str = "student"
    use_imtd: bool = True
    tau: float = 1.0
    imtd_uncertainty: str = "variance"
    rho_offset: float = 0.0
    kl_direction: str = "student_teacher"
    tau_sq_scale: bool = False
    teacher_calibration: str = "temperature"
    imtd_inference: str = "off"
    trust_momentum: float = 0.99
    regression_loss: str = "l1"
    contribution_samples: int = 1024


_CHOICES = {
    "dis_form": ("cosine", "cosine_sq"),
    "cce_generator": ("per_modality", "shared"),
    "cce_task_term": ("task", "head_l1"),
    "grad_penalty": ("full", "norm_only"),
    "sq_norm_reduction": ("sum", "mean"),
    "uncertainty_source": ("student", "teacher"),
    "imtd_uncertainty": ("variance", "reference"),
    "kl_direction": ("student_teacher", "teacher_student"),
    "regression_loss": ("l1", "mse"),
    "imtd_inference": ("off", "reweight"),
    "teacher_calibration": ("temperature", "none"),
}


def validate_config(cfg: EBMCConfig) -> None:
    """Raise ``ValueError`` naming the field for an invalid :class:`EBMCConfig`."""
    check_choices("ebmc", cfg, _CHOICES)
    for name in ("zeta", "beta", "gamma", "eta", "lambda1", "lambda2", "cce_gamma",
                 "cce_noise_std", "energy_alpha", "energy_beta", "energy_gamma", "delta",
                 "rho_offset"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"ebmc: {name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("nce_temperature", "tau"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"ebmc: {name} must be > 0, got {getattr(cfg, name)}")
    for name in ("stage1_epochs", "stage2_epochs"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ValueError(f"ebmc: {name} must be >= 0 or None, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.trust_momentum < 1.0:
        raise ValueError(f"ebmc: trust_momentum must be in [0, 1), got {cfg.trust_momentum}")
    if not 0.0 <= cfg.cce_own_dropout < 1.0:
        raise ValueError(f"ebmc: cce_own_dropout must be in [0, 1), got {cfg.cce_own_dropout}")
    if cfg.use_emc and not (cfg.use_energy_norm or cfg.use_energy_loss
                            or cfg.use_energy_uncertainty):
        raise ValueError("ebmc: use_emc needs at least one energy term (use_energy_*)")


@register_method("ebmc")
class EBMC(EBMCObjective):
    """EBMC: disentangle + enhance (stage I), energy balance + trust distillation (stage II)."""

    Config = EBMCConfig
    capabilities = Capabilities(tasks=("classification", "regression"), min_modalities=2)
    paper = "He et al., Enhance-then-Balance Modality Collaboration for Robust MSA, 2025"
    family = "objective"
    teacher_temp: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config."""
        super().check_task(info, cfg)
        validate_config(cfg)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """Generic encoders + fusion head ``f``, wrapped with MSD, ``T_m`` and CCE."""
        backbone = build_multimodal_model(info, model_cfg)
        uni_out = info.num_outputs if info.kind == "classification" else 2
        return EBMCNet(
            backbone, model_cfg.hidden, uni_out, cfg.use_msd, cfg.use_cce, cfg.cce_generator,
            cfg.cce_noise_std, cfg.cce_own_dropout, cfg.cce_impute_missing, cfg.cce_predict,
        )

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: EBMCConfig) -> None:
        super().__init__(model, info, cfg)
        # Buffers only: restored from checkpoints, in no optimiser group.
        self.teacher = FrozenSnapshot(model)
        self.family_name = "laplace" if cfg.regression_loss == "l1" else "gaussian"
        # Running mean trust per modality (IMTD test-time reweighting).
        m = len(info.modalities)
        self.register_buffer("trust_mean", torch.full((m,), 1.0 / m))
        # Per-modality teacher temperatures (teacher_calibration), fitted at stage II.
        self.register_buffer("teacher_temp", torch.ones(m))

    # ----- schedule -----------------------------------------------------------------------
    def stage_epochs(self, train: TrainConfig) -> tuple[int, int]:
        """Epochs of stage I and II (defaults split ``train.epochs`` in halves)."""
        s1 = self.cfg.stage1_epochs
        if s1 is None:
            s1 = max(1, train.epochs // 2)
        s2 = self.cfg.stage2_epochs
        if s2 is None:
            s2 = max(1, train.epochs - s1)
        return s1, s2

    def stages(self, train: TrainConfig) -> list[Stage]:
        """Stage I (MSD + CCE) then stage II (+ EMC + IMTD), each selected on validation."""
        s1, s2 = self.stage_epochs(train)
        return [Stage(STAGE1, s1), Stage(STAGE2, s2)]

    def param_groups(self, stage: Stage) -> dict[str, list[nn.Parameter]]:
        """One ``main`` group: the student network (the teacher holds buffers only)."""
        return {"main": list(self.net.parameters())}

    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """Freeze the selected stage-I network as the teacher when stage II starts (a run
        resumed inside stage II restores the teacher from its checkpoint instead)."""
        if stage.key == STAGE2 and not resumed:
            self.teacher.copy_from(self.net)
            log.info("ebmc: stage-I model frozen as the teacher")
            self.teacher_temp.fill_(1.0)
            if self.cfg.teacher_calibration == "temperature" and \
                    self.info.kind == "classification":
                split = ctx.valid_split if ctx.valid_split is not None else ctx.train_split
                self.calibrate_teachers(split)

    @torch.no_grad()
    def calibrate_teachers(self, split: MultimodalSplit, chunk: int = 1024) -> None:
        """Fit each teacher's temperature on ``split`` (see ``teacher_calibration``)."""
        self.teacher_temp.copy_(teacher_temperatures(self.teacher, split, self.info.modality_names,
                                                     chunk).to(self.teacher_temp))
        log.info("ebmc: teacher temperatures %s", self.teacher_temp.tolist())

    # ----- losses -------------------------------------------------------------------------
    def _teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        if not bool(self.teacher.ready):
            # Only reachable when stage II did not start through on_stage_start.
            log.warning("ebmc: teacher missing at stage II; snapshotting the current model")
            self.teacher.copy_from(self.net)
        out: ModelOutput = self.teacher.run(batch, unimodal_only=True)
        names = self.info.modality_names
        if self.info.kind == "regression":
            return {n: out.extras[f"t/{n}"] for n in names}
        temp = self.teacher_temp.to(out.extras[f"t/{names[0]}"].dtype)
        return {n: out.extras[f"t/{n}"] / temp[j] for j, n in enumerate(names)}

    def trust_scales(self, batch: Batch) -> dict[str, Tensor]:
        """IMTD test-time reweighting: ``alpha_m^i / abar_m`` clamped to ``[0, M]``."""
        names = self.info.modality_names
        present = torch.stack([batch.present[n] for n in names], 1)
        alpha = self._trust(self._teacher_outputs(batch), present)
        scale = (alpha / self.trust_mean.to(alpha.dtype).clamp_min(1e-6)).clamp(0.0, len(names))
        return {n: scale[:, j] for j, n in enumerate(names)}

    def predict(self, batch: Batch) -> ModelOutput:
        """Inference; with ``imtd_inference="reweight"`` and a ready teacher, each
        modality's input to ``f`` is scaled by its per-sample relative trust."""
        if self.cfg.imtd_inference == "reweight" and bool(self.teacher.ready):
            out: ModelOutput = self.net(batch, feature_scale=self.trust_scales(batch))
            return out
        return self(batch)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: StepContext) -> dict[str, Tensor]:
        """Eq. 17 for the current stage; named parts are logged."""
        cfg = self.cfg
        stage2 = getattr(ctx.stage, "key", STAGE1) == STAGE2
        parts: dict[str, Tensor] = {}
        task = self.task_loss(out.logits, batch.target)
        parts["task"] = task.detach()
        total = task
        names = self.info.modality_names
        uni = {n: self._uni_per_sample(out.extras[f"t/{n}"], batch.target) for n in names}
        terms: dict[str, tuple[float, Tensor]] = {}
        if not stage2 or cfg.stage2_keep_enhancement:
            terms["msd"] = (cfg.zeta, self._msd_loss(batch, out, uni, parts))
            if cfg.use_cce:
                terms["cce"] = (cfg.beta, self._cce_loss(batch, out, parts))
        if stage2:
            need_teacher = cfg.use_imtd or (
                cfg.use_emc and cfg.use_energy_uncertainty and cfg.uncertainty_source == "teacher"
            )
            teacher = self._teacher_outputs(batch) if need_teacher else None
            if cfg.use_emc:
                emc_teacher = teacher if cfg.uncertainty_source == "teacher" else None
                terms["emc"] = (cfg.gamma, self._emc_loss(batch, out, uni, emc_teacher, parts))
            if cfg.use_imtd and teacher is not None:
                terms["imtd"] = (cfg.eta, self._imtd_loss(batch, out, teacher, parts))
        for name, (weight, value) in terms.items():
            total = total + weight * value
            parts[name] = value.detach()
        parts["loss"] = total
        return parts

    # ----- diagnostics --------------------------------------------------------------------
    def contribution(self, batches: Iterable[Batch], max_samples: int | None = None
                     ) -> dict[str, float]:
        """Share of each modality in the fused prediction (Fig. 4); see
        :func:`~equimodal.methods.ebmc_modules.modality_contribution`."""
        return modality_contribution(self, batches, max_samples)

    def diagnostics(self, split: MultimodalSplit) -> dict[str, float]:
        """Each modality's contribution (Fig. 4) on up to ``contribution_samples`` of
        ``split``: ``contribution/<modality>`` (``{}`` when ``contribution_samples`` is 0)."""
        if self.cfg.contribution_samples <= 0:
            return {}
        shares = self.contribution(split.iter_batches(256), self.cfg.contribution_samples)
        return {f"contribution/{n}": v for n, v in shares.items()}

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Log each modality's contribution (Fig. 4) on up to ``contribution_samples``."""
        if self.cfg.contribution_samples <= 0:
            return {}
        shares = self.contribution(ctx.iter_train(), self.cfg.contribution_samples)
        return {f"contribution/{n}": v for n, v in shares.items()}
