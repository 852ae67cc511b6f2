"""MISA: modality-invariant and -specific representations.

Hazarika, Zimmermann, Poria, "MISA: Modality-Invariant and -Specific Representations for
Multimodal Sentiment Analysis" (ACM MM 2020). Each modality's utterance vector ``u_m`` is
projected to ``h_m`` (Sec. 3.2) and split into an invariant part ``h_m^c = E_c(h_m)`` (one
shared encoder) and a specific part ``h_m^p = E_p^m(h_m)`` (Eq. 1-2). The loss (Eq. 3) is
``L = L_task + alpha L_sim + beta L_diff + gamma L_recon`` with

* ``L_sim`` (Eq. 4): central moment discrepancy (CMD, Zellinger et al. 2017) between the
  invariant parts of every modality pair, averaged over pairs,
* ``L_diff`` (Eq. 5): soft orthogonality ``||H_c^T H_p||_F^2`` between the invariant and the
  specific part of each modality and between the specific parts of every pair,
* ``L_recon`` (Eq. 6): MSE between ``h_m`` and its reconstruction ``D(h_m^c + h_m^p)``.

The ``2M`` vectors pass through a one-layer transformer (self-attention across the parts)
and are concatenated into the fusion MLP (Sec. 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.crossmodal import StackedBiLSTM, masked_pool, modality_masks
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

_CHOICES = {"primary_encoder": ("mean", "lstm"), "activation": ("relu", "leakyrelu", "tanh"),
            "regression_loss": ("mse", "l1")}
_ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "tanh": nn.Tanh}


@dataclass
class MISAConfig(MethodConfig):
    """MISA settings; defaults of the reference implementation on CMU-MOSI.

    Attributes:
        sim_weight: ``alpha`` of Eq. 3, weight of the CMD similarity loss (reference 1.0).
        diff_weight: ``beta``, weight of the soft-orthogonality difference loss (0.3).
        recon_weight: ``gamma``, weight of the reconstruction loss (1.0).
        cmd_moments: Central moments K matched by CMD (reference 5).
        hidden: Width of the shared space (reference 128; ``None``: ``ModelConfig.hidden``).
        dropout: Dropout of the fusion MLP (reference 0.5).
        activation: Activation of the projections and the fusion MLP (reference ``relu``).
        primary: The text-like modality (``None``: the data's first modality).
        primary_encoder: ``mean`` over valid frames (the reference's BERT variant averages
            the token features) or ``lstm`` (the stacked bi-LSTM used for the other
            modalities and for GloVe text).
        fusion_heads: Heads of the one-layer fusion transformer (reference 2).
        fusion_ff: Its feed-forward width (reference: PyTorch's default 2048).
        regression_loss: ``mse`` (reference) or ``l1``.
    """

    sim_weight: float = 1.0
    diff_weight: float = 0.3
    recon_weight: float = 1.0
    cmd_moments: int = 5
    hidden: int | None = None
    dropout: float = 0.5
    activation: str = "relu"
    primary: str | None = None
    primary_encoder: str = "mean"
    fusion_heads: int = 2
    fusion_ff: int = 2048
    regression_loss: str = "mse"


def _norm(x: Tensor) -> Tensor:
    # Euclidean norm whose gradient stays finite at 0 (identical moments, e.g. constant
    # features); the floor adds at most 1e-15 to the value.
    return x.pow(2).sum().clamp_min(1e-30).sqrt()


def cmd(x: Tensor, y: Tensor, moments: int = 5) -> Tensor:
    """Central moment discrepancy between samples ``x [N, d]`` and ``y [N', d]``.

    ``CMD_K = ||E(x) - E(y)||_2 + sum_{k=2..K} ||c_k(x) - c_k(y)||_2`` with central moments
    ``c_k(x) = E[(x - E x)^k]`` (Zellinger et al. 2017, Eq. 4 of MISA). The paper's
    ``1/|b-a|^k`` factors are 1 because MISA's encoders end in a sigmoid (``[a, b] = [0, 1]``),
    which is also why the reference code omits them.
    """
    mx, my = x.mean(0), y.mean(0)
    total = _norm(mx - my)
    cx, cy = x - mx, y - my
    for k in range(2, moments + 1):
        total = total + _norm(cx.pow(k).mean(0) - cy.pow(k).mean(0))
    return total


def soft_orthogonality(a: Tensor, b: Tensor) -> Tensor:
    """MISA's difference loss ``||A^T B||_F^2`` (Eq. 5), reference form: rows centred over the
    batch and L2-normalised (norms treated as constants), then the mean of the squared
    entries of ``A^T B``."""
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    a = a / (a.norm(dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (a.t() @ b).pow(2).mean()


class MISANet(nn.Module):
    """MISA's network for any ``M >= 2`` modalities.

    Per modality: an utterance encoder (stacked bi-LSTM, or a masked mean for the primary
    modality), a projection ``Linear -> act -> LayerNorm`` to ``h``, a private encoder
    ``Linear + sigmoid`` and the shared encoder ``Linear + sigmoid``, a reconstruction layer.
    The ``2M`` parts (privates then shareds) go through a one-layer transformer and a
    fusion MLP ``2Mh -> Mh -> out``.

    Args:
        info: Task description.
        cfg: A :class:`MISAConfig`.
        hidden: Resolved width ``h``.
    """

    def __init__(self, info: TaskInfo, cfg: MISAConfig, hidden: int) -> None:
        super().__init__()
        self.names = info.modality_names
        self.primary = cfg.primary or self.names[0]
        act = _ACTIVATIONS[cfg.activation]
        self.utter = nn.ModuleDict()
        self.project = nn.ModuleDict()
        for n, spec in info.modalities.items():
            if n == self.primary and cfg.primary_encoder == "mean":
                self.utter[n] = nn.Identity()
                width = spec.dim
            else:
                # MISA sets each LSTM's hidden size to the modality's input size.
                self.utter[n] = StackedBiLSTM(spec.dim, spec.dim)
                width = 4 * spec.dim
            self.project[n] = nn.Sequential(nn.Linear(width, hidden), act(), nn.LayerNorm(hidden))
        self.private = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid()) for n in self.names})
        self.shared = nn.Sequential(nn.Linear(hidden, hidden), nn.Sigmoid())
        self.recon = nn.ModuleDict({n: nn.Linear(hidden, hidden) for n in self.names})
        layer = nn.TransformerEncoderLayer(hidden, cfg.fusion_heads, cfg.fusion_ff,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        m = len(self.names)
        self.fusion = nn.Sequential(
            nn.Linear(2 * m * hidden, m * hidden), nn.Dropout(cfg.dropout), act(),
            nn.Linear(m * hidden, info.num_outputs))

    def forward(self, batch: Batch) -> ModelOutput:
        """Prediction; ``extras`` hold the stacked parts the MISA losses need."""
        masks = modality_masks(batch, self.names)
        orig, priv, shar = [], [], []
        for n in self.names:
            x = batch.inputs[n]
            x = x.unsqueeze(1) if x.dim() == 2 else x
            enc = self.utter[n]
            u = masked_pool(x, masks[n]) if isinstance(enc, nn.Identity) else enc(x, masks[n])
            h = self.project[n](u)
            orig.append(h)
            priv.append(self.private[n](h))
            shar.append(self.shared(h))
        h_orig, h_priv, h_shar = torch.stack(orig), torch.stack(priv), torch.stack(shar)
        present = torch.stack([batch.present[n] for n in self.names]).to(h_orig.dtype)  # [M, B]
        recon = torch.stack([self.recon[n](h_priv[i] + h_shar[i])
                             for i, n in enumerate(self.names)])
        # Absent modalities enter the fusion as zero tokens (their parts are still computed).
        tokens = torch.cat([h_priv, h_shar]) * torch.cat([present, present]).unsqueeze(-1)
        z = self.transformer(tokens.transpose(0, 1))  # [B, 2M, h]
        fused = z.flatten(1)
        logits = self.fusion(fused)
        feats = {n: torch.cat([h_priv[i], h_shar[i]], -1) for i, n in enumerate(self.names)}
        extras = {"orig": h_orig, "private": h_priv, "shared": h_shar, "recon": recon,
                  "present": present}
        return ModelOutput(logits, feats, {}, fused, extras)


@register_method("misa")
class MISA(Method):
    """MISA: invariant/specific subspaces with CMD, soft-orthogonality and recon losses.

    Hazarika et al. (ACM MM 2020), Eq. 1-6; ``L = L_task + alpha L_sim + beta L_diff +
    gamma L_recon``.
    """

    Config = MISAConfig
    capabilities = Capabilities(tasks=("regression", "classification"), min_modalities=2)
    paper = "Hazarika et al., MISA, ACM MM 2020"
    family = "objective"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate enum fields, the primary modality and the moment count."""
        super().check_task(info, cfg)
        check_choices("misa", cfg, _CHOICES)
        if cfg.primary is not None:
            info.check_modality(cfg.primary)
        if cfg.cmd_moments < 1:
            raise ValueError(f"misa: cmd_moments must be >= 1, got {cfg.cmd_moments}")

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """The MISA network at width ``hidden``."""
        return MISANet(info, cast(MISAConfig, cfg), cfg.hidden or model_cfg.hidden)

    def similarity_loss(self, shared: Tensor, present: Tensor) -> Tensor:
        """``L_sim``: CMD between the invariant parts of every modality pair (samples having
        both), averaged over pairs."""
        pairs = list(combinations(range(shared.shape[0]), 2))
        total = shared.sum() * 0
        for i, j in pairs:
            both = (present[i] > 0) & (present[j] > 0)
            if int(both.sum()) >= 2:
                total = total + cmd(shared[i][both], shared[j][both], self.cfg.cmd_moments)
        return total / max(len(pairs), 1)

    @staticmethod
    def difference_loss(private: Tensor, shared: Tensor, present: Tensor) -> Tensor:
        """``L_diff``: soft orthogonality of (private_m, shared_m) for every modality and of
        (private_i, private_j) for every pair, on the samples that have the modalities."""
        m = private.shape[0]
        total = private.sum() * 0
        for i in range(m):
            rows = present[i] > 0
            if int(rows.sum()) >= 2:
                total = total + soft_orthogonality(private[i][rows], shared[i][rows])
        for i, j in combinations(range(m), 2):
            rows = (present[i] > 0) & (present[j] > 0)
            if int(rows.sum()) >= 2:
                total = total + soft_orthogonality(private[i][rows], private[j][rows])
        return total

    @staticmethod
    def reconstruction_loss(recon: Tensor, orig: Tensor, present: Tensor) -> Tensor:
        """``L_recon``: mean squared error between ``h_m`` and its reconstruction, averaged
        over modalities (present samples)."""
        err = (recon - orig).pow(2).mean(-1)  # [M, B]
        per_mod = (err * present).sum(1) / present.sum(1).clamp_min(1.0)
        return per_mod.mean()

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: Any) -> dict[str, Tensor]:
        """Eq. 3: ``L_task + alpha L_sim + beta L_diff + gamma L_recon``."""
        cfg, ex = self.cfg, out.extras
        terms = {
            "task": self.task_loss(out.logits, batch.target),
            "sim": self.similarity_loss(ex["shared"], ex["present"]),
            "diff": self.difference_loss(ex["private"], ex["shared"], ex["present"]),
            "recon": self.reconstruction_loss(ex["recon"], ex["orig"], ex["present"]),
        }
        terms["loss"] = (terms["task"] + cfg.sim_weight * terms["sim"]
                         + cfg.diff_weight * terms["diff"] + cfg.recon_weight * terms["recon"])
        return terms

