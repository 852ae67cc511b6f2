"""Networks of EBMC (He et al., "Enhance-then-Balance Modality Collaboration"): the
disentangler of MSD (Eq. 1), the unimodal predictors ``T_m`` (Eq. 4), the enhancement
networks ``G_m`` of CCE (Eq. 6), the full student network and the frozen teacher snapshot.

This module registers nothing; :mod:`equimodal.methods.ebmc` is the method.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.losses.distill import (
    categorical_variance,
    fit_temperature,
    regression_variance,
    trust_weights,
)
from equimodal.losses.energy import categorical_entropy
from equimodal.models.multimodal import MultimodalModel
from equimodal.types import Batch, ModelOutput


def two_layer_mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """``Linear-ReLU-Linear-LayerNorm``: the lightweight sub-network used by MSD."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
    )


def others_mean(x: dict[str, Tensor], present: dict[str, Tensor], name: str) -> Tensor:
    """Mean of ``x[k]`` over the other modalities ``k != name`` present in each sample.

    Args:
        x: Modality -> ``[B, H]``.
        present: Modality -> ``[B, 1]`` float presence weights.
        name: The modality left out.

    Returns:
        ``[B, H]`` (zeros for samples with no other modality present).
    """
    others = [k for k in x if k != name]
    num = torch.zeros_like(x[name])
    den = torch.zeros_like(present[name])
    for k in others:
        num = num + x[k] * present[k]
        den = den + present[k]
    return num / den.clamp_min(1.0)


class Disentangler(nn.Module):
    """Shared / specific sub-networks ``D_m^c``, ``D_m^s`` per modality (Eq. 1).

    Args:
        names: Modality names.
        hidden: Feature size of ``z_m`` and of both parts.
    """

    def __init__(self, names: list[str], hidden: int) -> None:
        super().__init__()
        self.shared = nn.ModuleDict({n: two_layer_mlp(hidden, hidden) for n in names})
        self.specific = nn.ModuleDict({n: two_layer_mlp(hidden, hidden) for n in names})

    def forward(
        self, z: dict[str, Tensor], present: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``z_m^c = D_m^c(z_m)``, ``z_m^s = D_m^s(z_m)``, zeroed where ``m`` is absent."""
        zc = {n: self.shared[n](z[n]) * present[n] for n in z}
        zs = {n: self.specific[n](z[n]) * present[n] for n in z}
        return zc, zs


class Enhancer(nn.Module):
    """Cross-modal complementary enhancement networks (Eq. 6).

    ``per_modality`` (the paper): one ``G_m`` per modality over
    ``[z_m^c ; mean_{-m} z^c ; z_m^s ; mean_{-m} z^s]``. ``shared`` (the reference code): a
    single network over ``[mean_{-m} z^c ; z_m^s]``. Both are ``Linear-ReLU-Linear``.

    Args:
        names: Modality names.
        hidden: Feature size H.
        mode: ``per_modality`` or ``shared``.
    """

    def __init__(self, names: list[str], hidden: int, mode: str = "per_modality") -> None:
        super().__init__()
        self.mode = mode
        if mode == "per_modality":
            self.nets = nn.ModuleDict({n: self._net(4 * hidden, hidden) for n in names})
        elif mode == "shared":
            self.net = self._net(2 * hidden, hidden)
        else:
            raise ValueError(f"cce_generator must be 'per_modality' or 'shared', got {mode!r}")

    @staticmethod
    def _net(in_dim: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(
        self,
        zc: dict[str, Tensor],
        zs: dict[str, Tensor],
        present: dict[str, Tensor],
        noise_std: float = 0.0,
        own_dropout: float = 0.0,
    ) -> dict[str, Tensor]:
        """Enhanced features ``z~_m`` for every modality (also for absent ones: imputation).

        Args:
            zc: Shared parts ``[B, H]``.
            zs: Specific parts ``[B, H]``.
            present: ``[B, 1]`` float presence weights.
            noise_std: Std of the Gaussian perturbation ``epsilon`` added to the input.
            own_dropout: Probability of hiding a sample's own parts (teaches imputation).
        """
        out = {}
        for n in zc:
            own = present[n]
            if own_dropout > 0:
                keep = torch.rand_like(own) >= own_dropout
                own = own * keep.to(own.dtype)
            oc, os_ = others_mean(zc, present, n), others_mean(zs, present, n)
            if self.mode == "per_modality":
                x = torch.cat([zc[n] * own, oc, zs[n] * own, os_], dim=1)
                net = self.nets[n]
            else:
                x = torch.cat([oc, zs[n] * own], dim=1)
                net = self.net
            if noise_std > 0:
                x = x + noise_std * torch.randn_like(x)
            out[n] = net(x)
        return out


class EBMCNet(nn.Module):
    """Backbone encoders + MSD + ``T_m`` + CCE + the fusion head ``f``.

    The fused prediction is ``f(z_1, ..., z_M)`` on the encoder features; with
    ``impute_missing`` an absent modality's ``z_m`` is replaced by ``z~_m`` from CCE.

    Args:
        backbone: Generic encoders + fusion (``model.fuse`` is the head ``f``).
        hidden: Feature size H of the encoders.
        uni_out: Output size of each ``T_m`` (classes, or 2 = mean and log-scale).
        use_msd: Build ``D^c`` / ``D^s`` (else both parts are ``z_m`` itself).
        use_cce: Build the enhancement networks.
        cce_generator: ``per_modality`` or ``shared``.
        cce_noise_std: Std of ``epsilon`` in training.
        cce_own_dropout: Probability of hiding own parts from ``G_m`` in training.
        impute_missing: Use ``z~_m`` for absent modalities in the fused prediction.
        cce_predict: Feed ``z~_m`` (not ``z_m``) of every modality to ``f``.
    """

    def __init__(
        self,
        backbone: MultimodalModel,
        hidden: int,
        uni_out: int,
        use_msd: bool = True,
        use_cce: bool = True,
        cce_generator: str = "per_modality",
        cce_noise_std: float = 0.0,
        cce_own_dropout: float = 0.0,
        impute_missing: bool = False,
        cce_predict: bool = False,
    ) -> None:
        super().__init__()
        names = backbone.modalities
        self.backbone = backbone
        self.disentangler = Disentangler(names, hidden) if use_msd else None
        self.predictors = nn.ModuleDict({n: nn.Linear(hidden, uni_out) for n in names})
        self.enhancer = Enhancer(names, hidden, cce_generator) if use_cce else None
        self.cce_noise_std = cce_noise_std
        self.cce_own_dropout = cce_own_dropout
        self.impute_missing = impute_missing and use_cce
        self.cce_predict = cce_predict and use_cce

    @property
    def modalities(self) -> list[str]:
        """Modality names in the data's order."""
        return self.backbone.modalities

    def forward(self, batch: Batch, unimodal_only: bool = False,
                feature_scale: dict[str, Tensor] | None = None) -> ModelOutput:
        """Run everything; ``extras`` holds ``zc/<m>``, ``zs/<m>``, ``t/<m>`` (``T_m``
        outputs) and ``zt/<m>`` (enhanced features). ``unimodal_only`` stops after ``T_m``
        (what a teacher needs); ``logits`` is then empty. ``feature_scale`` (modality ->
        ``[B]``) multiplies each modality's input to ``f`` (IMTD test-time reweighting)."""
        z = self.backbone.encode(batch)
        ref = next(iter(z.values()))
        pres = {n: batch.present[n].to(ref.dtype).unsqueeze(1) for n in z}
        if self.disentangler is not None:
            zc, zs = self.disentangler(z, pres)
        else:
            zc, zs = z, z
        extras: dict[str, Tensor] = {}
        for n in z:
            extras[f"zc/{n}"] = zc[n]
            extras[f"zs/{n}"] = zs[n]
            extras[f"t/{n}"] = self.predictors[n](zs[n])
        if unimodal_only:
            return ModelOutput(ref.new_zeros(0), z, {}, None, extras)
        h = dict(z)
        if self.enhancer is not None:
            train = self.training
            zt = self.enhancer(
                zc, zs, pres, self.cce_noise_std if train else 0.0,
                self.cce_own_dropout if train else 0.0,
            )
            for n in z:
                extras[f"zt/{n}"] = zt[n]
                if self.cce_predict:
                    h[n] = zt[n]
                elif self.impute_missing:
                    h[n] = pres[n] * z[n] + (1.0 - pres[n]) * zt[n]
        if feature_scale is not None:
            h = {n: h[n] * feature_scale[n].to(h[n].dtype)[:, None] for n in h}
        fused = self.backbone.fuse(batch, h)
        return ModelOutput(fused.logits, z, fused.unimodal_logits, fused.fused, extras)


@torch.no_grad()
def teacher_temperatures(teacher: FrozenSnapshot, split: Any, names: list[str],
                         chunk: int = 1024) -> Tensor:
    """Per-modality temperature of each classification teacher ``T_m`` fitted by NLL on
    ``split`` (:func:`~equimodal.losses.distill.fit_temperature`); 1 where absent."""
    logits: dict[str, list[Tensor]] = {n: [] for n in names}
    keep: dict[str, list[Tensor]] = {n: [] for n in names}
    targets = []
    for start in range(0, len(split), chunk):
        idx = torch.arange(start, min(start + chunk, len(split)), device=split.target.device)
        batch = split.batch(idx)
        out = teacher.run(batch, unimodal_only=True)
        for n in names:
            logits[n].append(out.extras[f"t/{n}"].float())
            keep[n].append(batch.present[n])
        targets.append(batch.target)
    y = torch.cat(targets)
    temp = torch.ones(len(names))
    for j, n in enumerate(names):
        mask = torch.cat(keep[n])
        if bool(mask.any()):
            temp[j] = fit_temperature(torch.cat(logits[n])[mask], y[mask])
    return temp


def instance_trust(teacher: dict[str, Tensor], present: Tensor, names: list[str], kind: str,
                   cfg: Any, family: str) -> Tensor:
    """Eq. 13-15 trust ``[B, M]`` from the teachers' outputs (``cfg.imtd_uncertainty``:
    ``variance`` = predictive variance; ``reference`` = entropy or deviation from the
    teachers' mean, spread = its square)."""
    t = torch.stack([teacher[n] for n in names], 1)
    if kind == "regression":
        mu = t[..., 0]
        if cfg.imtd_uncertainty == "variance":
            sigma = regression_variance(t[..., 1].clamp(-10.0, 10.0), family)
            return trust_weights(sigma, sigma, present, cfg.rho_offset)
        w = present.to(mu.dtype)
        mean = (mu * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        sigma = (mu - mean).abs()
        return trust_weights(sigma, sigma.pow(2), present, cfg.rho_offset)
    if cfg.imtd_uncertainty == "variance":
        sigma = torch.stack([categorical_variance(t[:, j], cfg.tau) for j in range(len(names))],
                            1)
        return trust_weights(sigma, sigma, present, cfg.rho_offset)
    sigma = torch.stack([categorical_entropy(t[:, j], cfg.tau) for j in range(len(names))], 1)
    return trust_weights(sigma, sigma.pow(2), present, cfg.rho_offset)


def _freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` (in place) into a buffer of the same name."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            del sub._parameters[name]
            sub.register_buffer(name, None if param is None else param.detach().clone())
    return module


class FrozenSnapshot(nn.Module):
    """A frozen copy of another module, its weights held as buffers.

    Buffers are saved and restored with the method's state dict (so a resumed run keeps its
    teacher) but are no parameters: they are in no optimiser group and the contract's
    "undeclared parameters never change" check does not see them.

    Args:
        source: The module to copy (its current weights until :meth:`copy_from` is called).
    """

    ready: Tensor

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.module = _freeze_as_buffers(copy.deepcopy(source)).requires_grad_(False)
        self.register_buffer("ready", torch.tensor(False))

    def state(self) -> dict[str, Tensor]:
        """Name (as in the source's state dict) -> frozen tensor."""
        return dict(self.module.state_dict())

    @torch.no_grad()
    def copy_from(self, source: nn.Module) -> None:
        """Overwrite the snapshot with ``source``'s current weights and mark it ready."""
        self.module.load_state_dict(source.state_dict())
        self.ready.fill_(True)

    @torch.no_grad()
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the frozen copy in eval mode (whatever mode its owner is in), without grad."""
        self.module.eval()
        return self.module(*args, **kwargs)


@torch.no_grad()
def modality_contribution(
    method: Any, batches: Iterable[Batch], max_samples: int | None = None
) -> dict[str, float]:
    """Share of each modality in a method's fused prediction (the quantity of EBMC Fig. 4).

    With a splittable fusion (concat / sum / late) it is the mean norm of each modality's
    centred unimodal logits divided by the sum over modalities; otherwise the drop in
    true-class probability (regression: the rise in absolute error) when the modality is
    masked, clipped at zero and normalised to sum to one.

    Args:
        method: Anything with ``predict(batch) -> ModelOutput`` and ``info``.
        batches: Batches to measure on.
        max_samples: Stop after this many samples.
    """
    was_training = method.training
    method.eval()
    info = method.info
    names = info.modality_names
    uni: dict[str, list[Tensor]] = {n: [] for n in names}
    drops = dict.fromkeys(names, 0.0)
    seen = 0
    for batch in batches:
        out = method.predict(batch)
        if out.unimodal_logits:
            for n in names:
                uni[n].append(out.unimodal_logits[n].float())
        else:
            full = _fit_score(out.logits, batch.target, info.kind)
            for n in names:
                part = method.predict(batch.with_modalities([k for k in names if k != n]))
                drops[n] += float((full - _fit_score(part.logits, batch.target, info.kind)).sum())
        seen += batch.size
        if max_samples is not None and seen >= max_samples:
            break
    method.train(was_training)
    if all(uni[n] for n in names):
        raw = {}
        for n in names:
            u = torch.cat(uni[n])
            raw[n] = float((u - u.mean(0, keepdim=True)).norm(dim=1).mean())
    else:
        raw = {n: max(drops[n], 0.0) for n in names}
    total = sum(raw.values())
    return {n: (v / total if total > 0 else 1.0 / len(names)) for n, v in raw.items()}


def _fit_score(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample true-class probability (regression: minus the absolute error)."""
    if kind == "regression":
        return -(logits.reshape(-1) - target).abs()
    return F.softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
