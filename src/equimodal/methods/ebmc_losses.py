"""EBMC's loss terms (Eq. 5-16), split from :mod:`equimodal.methods.ebmc` to keep files short.

:class:`EBMCObjective` is the part of the method that computes MSD (Eq. 1-5), CCE (Eq. 6-7),
EMC (Eq. 8-12) and IMTD (Eq. 13-16); :class:`~equimodal.methods.ebmc.EBMC` adds the
schedule, the teacher snapshot and Eq. 17. The readings of the paper are documented there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from equimodal.losses.distill import (
    categorical_kl,
    regression_entropy,
    regression_scale_nll,
    weighted_distillation,
)
from equimodal.losses.energy import (
    categorical_entropy,
    energy_gap_loss,
    energy_gradient_penalty,
    masked_mean,
    modality_energy,
    squared_norm,
)
from equimodal.losses.nce import info_nce
from equimodal.methods.base import Method
from equimodal.methods.ebmc_modules import EBMCNet, instance_trust
from equimodal.types import Batch, ModelOutput


def _log_scale(t: Tensor) -> Tensor:
    """The log-scale output of a regression ``T_m``, clamped so ``exp`` stays finite."""
    return t[..., 1].clamp(-10.0, 10.0)



class EBMCObjective(Method):
    """EBMC's loss terms; the registered :class:`~equimodal.methods.ebmc.EBMC` subclasses it.

    Attributes:
        family_name: ``laplace`` (L1 task loss) or ``gaussian`` (MSE): the regression
            ``T_m``'s predictive distribution.
        trust_mean: ``[M]`` running mean trust per modality (IMTD test-time reweighting).
    """

    cfg: Any
    family_name: str
    trust_mean: Tensor

    @property
    def net(self) -> EBMCNet:
        """The student network (``self.model``, typed)."""
        net: EBMCNet = self.model  # type: ignore[assignment]
        return net

    def _uni_per_sample(self, t: Tensor, target: Tensor) -> Tensor:
        """Per-sample task loss of a ``T_m`` output (regression: on its mean)."""
        if self.info.kind == "regression":
            return self.task_loss(t[:, :1], target, reduction="none")
        return self.task_loss(t, target, reduction="none")

    def _uncertainty(self, t: Tensor) -> Tensor:
        """``u_m`` per sample: entropy of ``T_m``'s predictive distribution (Eq. 9)."""
        if self.info.kind == "regression":
            return regression_entropy(_log_scale(t), self.family_name)
        return categorical_entropy(t)

    def _msd_loss(self, batch: Batch, out: ModelOutput, uni: dict[str, Tensor],
                  parts: dict[str, Tensor]) -> Tensor:
        """Eq. 5: ``L_inv + lambda1 L_dis + lambda2 L_uni`` (only L_uni without MSD)."""
        cfg, names = self.cfg, self.info.modality_names
        pres = {n: batch.present[n] for n in names}
        l_uni = out.logits.new_zeros(())
        for n in names:
            l_uni = l_uni + masked_mean(uni[n], pres[n])
            if self.info.kind == "regression":
                t = out.extras[f"t/{n}"]
                nll = regression_scale_nll(t[:, 0], _log_scale(t), batch.target,
                                           self.family_name)
                l_uni = l_uni + masked_mean(nll, pres[n])
        l_uni = l_uni / len(names)
        parts["msd/uni"] = l_uni.detach()
        if not cfg.use_msd:
            return cfg.lambda2 * l_uni
        zc = {n: out.extras[f"zc/{n}"] for n in names}
        zs = {n: out.extras[f"zs/{n}"] for n in names}
        w = torch.stack([pres[n].to(out.logits.dtype) for n in names], 1)  # [B, M]
        agg = sum((zc[n] * w[:, j : j + 1] for j, n in enumerate(names)),
                  torch.zeros_like(zc[names[0]])) / w.sum(1, keepdim=True).clamp_min(1.0)
        # Eq. 2: each modality's shared part against the aggregated shared anchor.
        l_inv = torch.stack([info_nce(zc[n], agg, cfg.nce_temperature, mask=pres[n])
                             for n in names]).mean()
        # Eq. 3: similarity of specific parts over ordered pairs of different modalities,
        # each pair averaged over the samples that have both.
        unit = F.normalize(torch.stack([zs[n] for n in names], 1), dim=-1, eps=1e-8)
        cos = unit @ unit.transpose(1, 2)  # [B, M, M]
        cos = cos.pow(2) if cfg.dis_form == "cosine_sq" else cos
        eye = torch.eye(len(names), dtype=torch.bool, device=cos.device)
        both = (w[:, :, None] * w[:, None, :]).masked_fill(eye, 0.0)
        l_dis = ((cos * both).sum(0) / both.sum(0).clamp_min(1.0)).sum()
        parts["msd/inv"], parts["msd/dis"] = l_inv.detach(), l_dis.detach()
        return l_inv + cfg.lambda1 * l_dis + cfg.lambda2 * l_uni

    def _cce_loss(self, batch: Batch, out: ModelOutput, parts: dict[str, Tensor]) -> Tensor:
        """Eq. 7 averaged over modalities: reconstruction + ``cce_gamma`` x task term."""
        cfg, names = self.cfg, self.info.modality_names
        total = out.logits.new_zeros(())
        for n in names:
            zt, z = out.extras[f"zt/{n}"], out.features[n]
            target = z.detach() if cfg.cce_detach_target else z
            rec = masked_mean(squared_norm(zt - target, cfg.sq_norm_reduction), batch.present[n])
            feats = dict(out.features)
            feats[n] = zt
            swapped = self.net.backbone.fuse(batch, feats).logits
            if cfg.cce_task_term == "task":
                aux = self.task_loss(swapped, batch.target)
            else:
                aux = (swapped - out.logits).abs().mean()
            total = total + rec + cfg.cce_gamma * aux
            parts[f"cce/rec/{n}"] = rec.detach()
        return total / len(names)

    def _emc_loss(self, batch: Batch, out: ModelOutput, uni: dict[str, Tensor],
                  teacher: dict[str, Tensor] | None, parts: dict[str, Tensor]) -> Tensor:
        """Eq. 12: ``L_gap + delta sum_m mean_i ||d e_m^i / d z_m^i||^2``."""
        cfg, names = self.cfg, self.info.modality_names
        energies, per_sample, zs = [], [], []
        for n in names:
            z, t = out.features[n], out.extras[f"t/{n}"]
            u = None
            if cfg.use_energy_uncertainty:
                u = self._uncertainty(teacher[n] if teacher is not None else t)
            e = modality_energy(
                z if cfg.use_energy_norm else None, uni[n] if cfg.use_energy_loss else None, u,
                cfg.energy_alpha, cfg.energy_beta, cfg.energy_gamma, cfg.sq_norm_reduction,
            )
            per_sample.append(e)
            zs.append(z)
            if bool(batch.present[n].any()):
                energies.append(masked_mean(e, batch.present[n]))
                parts[f"energy/{n}"] = energies[-1].detach()
        gap = energy_gap_loss(torch.stack(energies))
        pen = out.logits.new_zeros(())
        if cfg.delta > 0 and zs[0].requires_grad:
            if cfg.grad_penalty == "full":
                targets = per_sample
            else:  # gradient of the norm term only
                targets = [cfg.energy_alpha * squared_norm(z, cfg.sq_norm_reduction)
                           if cfg.use_energy_norm else z.sum(1) * 0.0 for z in zs]
            g2 = energy_gradient_penalty(targets, zs, create_graph=True)
            for n, g in zip(names, g2, strict=True):
                pen = pen + masked_mean(g, batch.present[n])
        parts["emc/gap"], parts["emc/penalty"] = gap.detach(), pen.detach()
        return gap + cfg.delta * pen

    def _trust(self, teacher: dict[str, Tensor], present: Tensor) -> Tensor:
        """Eq. 13-15 trust ``[B, M]`` from the teachers' outputs (both tasks)."""
        return instance_trust(teacher, present, self.info.modality_names, self.info.kind,
                              self.cfg, self.family_name)

    @torch.no_grad()
    def _update_trust_mean(self, alpha: Tensor, present: Tensor) -> None:
        """Running mean of each modality's trust over the samples that have it."""
        w = present.to(alpha.dtype)
        batch_mean = (alpha * w).sum(0) / w.sum(0).clamp_min(1.0)
        has = w.sum(0) > 0
        mom = self.cfg.trust_momentum
        upd = mom * self.trust_mean + (1.0 - mom) * batch_mean.to(self.trust_mean.dtype)
        self.trust_mean.copy_(torch.where(has, upd, self.trust_mean))

    def _imtd_loss(self, batch: Batch, out: ModelOutput, teacher: dict[str, Tensor],
                   parts: dict[str, Tensor]) -> Tensor:
        """Eq. 16: trust-weighted divergence between the fused student and each teacher."""
        cfg, names = self.cfg, self.info.modality_names
        present = torch.stack([batch.present[n] for n in names], 1)
        t = torch.stack([teacher[n] for n in names], 1)  # [B, M, K]
        if self.info.kind == "regression":
            div = (out.logits.reshape(-1, 1) - t[..., 0]).pow(2) / (2.0 * cfg.tau)
        else:
            cols = []
            for j in range(len(names)):
                if cfg.kl_direction == "student_teacher":
                    cols.append(categorical_kl(out.logits, t[:, j], cfg.tau))
                else:
                    cols.append(categorical_kl(t[:, j], out.logits, cfg.tau))
            div = torch.stack(cols, 1)
        alpha = self._trust(teacher, present)
        if self.training and torch.is_grad_enabled():
            self._update_trust_mean(alpha, present)
        loss = weighted_distillation(div, alpha)
        if cfg.tau_sq_scale:
            loss = loss * cfg.tau**2
        for j, n in enumerate(names):
            parts[f"trust/{n}"] = alpha[:, j].mean().detach()
        return loss
