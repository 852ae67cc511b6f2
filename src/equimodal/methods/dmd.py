"""DMD: decoupled multimodal distillation.

Li, Wang, Cui, "Decoupled Multimodal Distilling for Emotion Recognition" (CVPR 2023).
Each modality's projected sequence ``X_m`` is decoupled by one shared encoder into a
homogeneous (modality-irrelevant) part ``X_m^com`` and by a private encoder into a
heterogeneous (modality-exclusive) part ``X_m^prt`` (Sec. 3.1). The decoupling loss is

    ``L_dec = L_rec + L_cyc + gamma (L_mar + L_ort)``

(reconstruction ``||X_m - D_m([X^prt, X^com])||^2``, cycle ``||X^prt - E^prt(D_m(...))||^2``,
a margin loss pulling same-label homogeneous features together across samples and
modalities, and a soft orthogonality ``max(0, cos(X^com, X^prt))``). Two graph distillation
units (Sec. 3.2) then distil between modalities: HomoGD on the homogeneous features, HeteroGD
on the heterogeneous ones after MulT cross-modal attention. A GD unit learns an edge weight
``w_{i->j} = softmax(alpha f([z_j, z_i]))`` per sample from the logits and representations
of student ``j`` and teacher ``i``; the distillation loss is
``sum_{i != j} (w_{i->j} + prior_{i->j}) |y_j - sg(y_i)|`` (``sg``: stop-gradient, so the
knowledge flows from teacher ``i`` to student ``j``) plus a regulariser keeping the mean
edge weights near a prior that favours the text-like modality as teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.crossmodal import (
    CrossmodalEncoder,
    MulTStreams,
    ResidualHead,
    TemporalProjection,
    masked_pool,
    modality_masks,
)
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

_CHOICES = {"pooling": ("last", "mean"), "input_projection": ("when_needed", "always"),
            "edge_norm": ("graph", "incoming"), "hetero_repr_metric": ("min_cosine", "l1"),
            "regression_loss": ("l1", "mse")}


@dataclass
class DMDConfig(MethodConfig):
    """DMD settings; defaults of the reference implementation on CMU-MOSI.

    Attributes:
        d_model: Width ``d`` (reference 50; ``None``: ``ModelConfig.hidden``).
        heads: Attention heads, must divide ``d`` (reference 10; ``None``: ``ModelConfig.heads``).
        layers: Transformer layers (reference ``nlevels`` 4; ``None``: ``ModelConfig.layers``).
        mem_layers: Layers of the heterogeneous memory transformers (``None``: the
            reference's ``max(layers, 3)``).
        proj_kernel: Temporal Conv1d kernel (reference 5, ``same`` padding here).
        input_projection: ``when_needed`` (reference) or ``always``.
        attn_dropout: Attention dropout for the primary modality (reference 0.3).
        attn_dropout_other: Attention dropout for the others (reference 0.2 audio, 0 vision).
        relu_dropout: FFN dropout (reference 0.0).
        res_dropout: Residual dropout (reference 0.0).
        embed_dropout: Embedding dropout inside the transformers (reference 0.2).
        text_dropout: Dropout on the primary modality's input (reference 0.5).
        output_dropout: Dropout inside the residual output blocks (reference 0.5).
        primary: The text-like modality (``None``: the data's first modality); the edge
            prior favours it as teacher.
        pooling: ``last`` valid step (reference) or ``mean`` of the transformer outputs.
        causal: The reference's future attention mask (not described in the paper).
        dec_weight: Weight of ``L_dec`` (reference 0.1).
        gamma: Weight of ``L_mar + L_ort`` inside ``L_dec`` (reference 0.1).
        margin: Margin scale of ``L_mar``: ``margin * |y_i - y_k|`` for regression labels,
            ``margin`` for two different classes (reference 0.15).
        gd_weight: Weight of each GD unit's loss (reference 0.05).
        gd_reg: Weight of the edge-prior regulariser (reference 10).
        gd_alpha: Scale of the edge logits before the softmax (reference 1/8).
        gd_prior_temperature: Temperature of the prior softmax (reference 0.25).
        gd_size_homo: Hidden size of HomoGD's edge network (reference 64).
        gd_size_hetero: Hidden size of HeteroGD's edge network (reference 32).
        gd_repr_weight: Weight of the representation term in a GD unit (reference 10).
        homo_repr: Include HomoGD's representation term (the reference computes it but
            leaves it out of the loss).
        hetero_repr_metric: HeteroGD representation term: ``min_cosine`` (reference: mean
            ``max(0, cos(student, sg(teacher)))``) or ``l1``.
        edge_norm: Softmax over all directed edges of the graph (``graph``, reference) or
            over each student's incoming edges (``incoming``).
        use_decoupling: Ablation: ``False`` drops ``L_dec``.
        use_homo_gd: Ablation: ``False`` drops HomoGD.
        use_hetero_gd: Ablation: ``False`` drops HeteroGD.
        regression_loss: ``l1`` (reference) or ``mse``.
    """

    d_model: int | None = None
    heads: int | None = None
    layers: int | None = None
    mem_layers: int | None = None
    proj_kernel: int = 5
    input_projection: str = "when_needed"
    attn_dropout: float = 0.3
    attn_dropout_other: float = 0.2
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    embed_dropout: float = 0.2
    text_dropout: float = 0.5
    output_dropout: float = 0.5
    primary: str | None = None
    pooling: str = "last"
    causal: bool = False
    dec_weight: float = 0.1
    gamma: float = 0.1
    margin: float = 0.15
    gd_weight: float = 0.05
    gd_reg: float = 10.0
    gd_alpha: float = 0.125
    gd_prior_temperature: float = 0.25
    gd_size_homo: int = 64
    gd_size_hetero: int = 32
    gd_repr_weight: float = 10.0
    homo_repr: bool = False
    hetero_repr_metric: str = "min_cosine"
    edge_norm: str = "graph"
    use_decoupling: bool = True
    use_homo_gd: bool = True
    use_hetero_gd: bool = True
    regression_loss: str = "l1"


def edge_pairs(m: int) -> list[tuple[int, int]]:
    """Directed edges ``(student j, teacher i)``, ``i != j``, students in the outer loop (the
    reference's edge order)."""
    return [(j, i) for j in range(m) for i in range(m) if i != j]


def normalise_edges(scores: Tensor, m: int, mode: str = "graph") -> Tensor:
    """Softmax of edge scores ``[E, B]``: over all edges (``graph``) or over each student's
    ``m - 1`` incoming edges (``incoming``)."""
    if mode == "graph":
        return scores.softmax(0)
    return scores.reshape(m, m - 1, -1).softmax(1).reshape(scores.shape)


class GraphDistillationUnit(nn.Module):
    """A GD unit: per-sample edge weights from logits and representations, and the weighted
    distillation losses along the edges.

    Args:
        m: Number of modalities (graph vertices).
        n_outputs: Logit size.
        repr_dim: Representation size.
        gd_size: Hidden size of the edge network.
        alpha: Scale of the edge logits before the softmax.
        primary: Index of the modality favoured as teacher by the prior.
        prior_temperature: Temperature of the prior softmax.
        edge_norm: ``graph`` or ``incoming`` (see :func:`normalise_edges`).
    """

    students: Tensor
    teachers: Tensor
    prior: Tensor

    def __init__(self, m: int, n_outputs: int, repr_dim: int, gd_size: int, alpha: float,
                 primary: int = 0, prior_temperature: float = 0.25, edge_norm: str = "graph"
                 ) -> None:
        super().__init__()
        self.m, self.alpha, self.edge_norm = m, alpha, edge_norm
        self.w_logit = nn.Linear(n_outputs, gd_size)
        self.w_repr = nn.Linear(repr_dim, gd_size)
        self.w_edge = nn.Linear(4 * gd_size, 1)
        pairs = edge_pairs(m)
        self.register_buffer("students", torch.tensor([j for j, _ in pairs]), persistent=False)
        self.register_buffer("teachers", torch.tensor([i for _, i in pairs]), persistent=False)
        # Reference prior: softmax([1 if the teacher is the text modality else 0] / 0.25).
        logits = torch.tensor([1.0 if i == primary else 0.0 for _, i in pairs])
        prior = normalise_edges((logits / prior_temperature)[:, None], m, edge_norm)[:, 0]
        self.register_buffer("prior", prior, persistent=False)

    def forward(self, logits: Tensor, reprs: Tensor) -> Tensor:
        """Edge weights ``[E, B]`` from ``logits [M, B, K]`` and ``reprs [M, B, D]``."""
        z = torch.cat([self.w_logit(logits), self.w_repr(reprs)], dim=-1)  # [M, B, 2g]
        pair = torch.cat([z[self.students], z[self.teachers]], dim=-1)  # [E, B, 4g]
        return normalise_edges(self.alpha * self.w_edge(pair).squeeze(-1), self.m,
                               self.edge_norm)

    def regulariser(self, edges: Tensor) -> Tensor:
        """``sum_e (mean_b w_e - prior_e)^2``."""
        return (edges.mean(1) - self.prior).pow(2).sum()

    def distill(self, student: Tensor, teacher: Tensor, edges: Tensor, present: Tensor,
                metric: str = "l1") -> Tensor:
        """``sum_e mean_b (w_e + prior_e) dist(student_j, sg(teacher_i))`` over the edges.

        Args:
            student: ``[M, B, D]`` values of each vertex as student.
            teacher: ``[M, B, D]`` values as teacher (detached here: no gradient reaches the
                teacher through this term).
            edges: ``[E, B]`` edge weights.
            present: ``[M, B]`` modality present (edges touching an absent one are dropped).
            metric: ``l1`` (per-sample L1 distance) or ``min_cosine`` (the reference's
                ``max(0, cos)`` averaged over the batch, times the mean edge weight).
        """
        s, t = student[self.students], teacher.detach()[self.teachers]  # [E, B, D]
        w = (edges + self.prior[:, None]) * present[self.students] * present[self.teachers]
        if metric == "l1":
            return ((s - t).abs().sum(-1) * w).mean(1).sum()
        cos = F.cosine_similarity(s, t, dim=-1).clamp_min(0).mean(1)  # [E]
        return (cos * w.mean(1)).sum()


def margin_loss(feats: Tensor, ids: Tensor, scale: float = 0.15, ordinal: bool = True,
                chunk: int = 128) -> Tensor:
    """DMD's hinge loss on homogeneous features (reference ``HingeLoss``).

    For every anchor ``a``, positive ``p`` (same label, ``p != a``) and negative ``n``
    (different label): ``max(0, margin_an - cos(a, p) + cos(a, n))`` with
    ``margin_an = scale |y_a - y_n|`` (``ordinal``) or ``scale``; averaged over each anchor's
    pairs, then over anchors that have both.

    Args:
        feats: ``[N, d]`` features (all modalities of all samples).
        ids: ``[N]`` labels.
        scale: Margin scale.
        ordinal: Margins grow with the label distance (regression scores).
        chunk: Anchors per chunk (bounds the ``chunk x N x N`` memory).
    """
    n = feats.shape[0]
    z = F.normalize(feats, dim=-1, eps=1e-8)
    cos = z @ z.t()
    eye = torch.eye(n, dtype=torch.bool, device=feats.device)
    same = (ids[:, None] == ids[None, :]) & ~eye
    diff = ids[:, None] != ids[None, :]
    gap = (ids[:, None] - ids[None, :]).abs().to(feats.dtype) if ordinal else (
        diff.to(feats.dtype))
    total, count = feats.sum() * 0, 0
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        hinge = (scale * gap[sl, None, :] - cos[sl, :, None] + cos[sl, None, :]).clamp_min(0)
        valid = same[sl, :, None] & diff[sl, None, :]
        pairs = valid.sum((1, 2))
        keep = pairs > 0
        per = (hinge * valid).sum((1, 2)) / pairs.clamp_min(1)
        total = total + per[keep].sum()
        count += int(keep.sum())
    return total / max(count, 1)


class DMDNet(nn.Module):
    """DMD's network for any ``M >= 2`` modalities.

    Projection (Conv1d) -> private ``E_m^prt`` and shared ``E^com`` 1x1 Conv1d encoders ->
    decoders ``D_m`` (reconstruction) -> homogeneous branch (self-attention per modality,
    last steps concatenated, residual head ``logits_c``; per-modality homogeneous heads on the
    masked mean of ``X_m^com``, where the reference flattens a fixed-length sequence) and
    heterogeneous branch (MulT streams over the private sequences, per-modality residual
    heads) -> sigmoid-gated concatenation of the heterogeneous heads' residual outputs and of
    the homogeneous fusion -> residual head.

    Args:
        info: Task description.
        cfg: A :class:`DMDConfig`.
        dim: Width ``d``.
        heads: Attention heads.
        layers: Transformer layers.
    """

    def __init__(self, info: TaskInfo, cfg: DMDConfig, dim: int, heads: int, layers: int
                 ) -> None:
        super().__init__()
        self.names = info.modality_names
        self.primary = cfg.primary or self.names[0]
        self.cfg = cfg
        m, k = len(self.names), info.num_outputs
        self.proj = TemporalProjection(info, dim, cfg.proj_kernel,
                                       cfg.input_projection == "when_needed")
        self.private = nn.ModuleDict({n: nn.Conv1d(dim, dim, 1, bias=False) for n in self.names})
        self.shared = nn.Conv1d(dim, dim, 1, bias=False)
        self.decoder = nn.ModuleDict(
            {n: nn.Conv1d(2 * dim, dim, 1, bias=False) for n in self.names})
        self.align = nn.ModuleDict({n: nn.Linear(dim, dim) for n in self.names})

        def drop(n: str) -> float:
            return cfg.attn_dropout if n == self.primary else cfg.attn_dropout_other

        self.homo_attn = nn.ModuleDict({n: CrossmodalEncoder(
            dim, heads, layers, drop(n), cfg.relu_dropout, cfg.res_dropout, cfg.embed_dropout,
            cfg.causal) for n in self.names})
        self.homo_heads = nn.ModuleDict(
            {n: ResidualHead(dim, k, cfg.output_dropout) for n in self.names})
        self.homo_fused = ResidualHead(m * dim, k, cfg.output_dropout)
        mem = cfg.mem_layers if cfg.mem_layers is not None else max(layers, 3)
        self.streams = MulTStreams(self.names, dim, heads, layers, mem, cfg.attn_dropout,
                                   cfg.attn_dropout_other, cfg.relu_dropout, cfg.res_dropout,
                                   cfg.embed_dropout, self.primary, cfg.causal)
        hdim = self.streams.out_dim
        self.hetero_heads = nn.ModuleDict(
            {n: ResidualHead(hdim, k, cfg.output_dropout) for n in self.names})
        self.gate = nn.ModuleDict({n: nn.Linear(hdim, hdim) for n in self.names})
        self.gate_c = nn.Linear(m * dim, m * dim)
        self.head = ResidualHead(m * hdim + m * dim, k, cfg.output_dropout)
        self.dim, self.hetero_dim = dim, hdim

    @staticmethod
    def _conv(conv: nn.Module, x: Tensor) -> Tensor:
        out: Tensor = conv(x.transpose(1, 2)).transpose(1, 2)
        return out

    def forward(self, batch: Batch) -> ModelOutput:
        """Prediction; ``extras`` hold everything the DMD losses need (stacked ``[M, ...]``,
        sequences zero-padded to the longest modality)."""
        cfg, names = self.cfg, self.names
        masks = modality_masks(batch, names)
        present = torch.stack([batch.present[n] for n in names]).float()  # [M, B]
        proj, priv, com, recon, cyc = {}, {}, {}, {}, {}
        for n in names:
            x = batch.inputs[n]
            if n == self.primary:
                x = F.dropout(x, cfg.text_dropout, self.training)
            mk = masks[n].unsqueeze(-1).to(x.dtype)
            proj[n] = self.proj(x, masks[n], n)
            priv[n] = self._conv(self.private[n], proj[n]) * mk
            com[n] = self._conv(self.shared, proj[n]) * mk
            recon[n] = self._conv(self.decoder[n], torch.cat([priv[n], com[n]], -1)) * mk
            cyc[n] = self._conv(self.private[n], recon[n]) * mk
        pooled_c = {n: masked_pool(com[n], masks[n]) for n in names}
        c_sim = torch.stack([self.align[n](pooled_c[n]) for n in names])
        homo = [self.homo_heads[n](pooled_c[n]) for n in names]
        c_att = [masked_pool(self.homo_attn[n](com[n], masks[n]), masks[n], cfg.pooling)
                 for n in names]
        c_fusion = torch.cat([c * present[i, :, None] for i, c in enumerate(c_att)], -1)
        _, _, logits_c = self.homo_fused(c_fusion)
        memory = self.streams(priv, masks)
        last = [masked_pool(memory[n], masks[n], cfg.pooling) * present[i, :, None]
                for i, n in enumerate(names)]
        hetero = [self.hetero_heads[n](h) for n, h in zip(names, last, strict=True)]
        # The reference gates each heterogeneous head's residual output (``hs_proj_*_high``),
        # not the raw memory step, before the final concatenation.
        gated = [torch.sigmoid(self.gate[n](h[1])) for n, h in zip(names, hetero, strict=True)]
        fused = torch.cat(gated + [torch.sigmoid(self.gate_c(c_fusion))], -1)
        _, _, logits = self.head(fused)

        t_max = max(v.shape[1] for v in proj.values())

        def stack(d: dict[str, Tensor]) -> Tensor:
            return torch.stack([F.pad(d[n], (0, 0, 0, t_max - d[n].shape[1])) for n in names])

        frame = torch.stack([F.pad(masks[n], (0, t_max - masks[n].shape[1])) for n in names])
        extras = {
            "proj": stack(proj), "private": stack(priv), "common": stack(com),
            "recon": stack(recon), "cycle": stack(cyc), "frame": frame, "present": present,
            "c_sim": c_sim, "logits_c": logits_c,
            "homo_logits": torch.stack([h[2] for h in homo]),
            "homo_repr": torch.stack([h[0] for h in homo]),
            "hetero_logits": torch.stack([h[2] for h in hetero]),
            "hetero_repr": torch.stack([h[1] for h in hetero]),
        }
        feats = {n: torch.cat([masked_pool(priv[n], masks[n]), pooled_c[n]], -1) for n in names}
        unimodal = {n: homo[i][2] for i, n in enumerate(names)}
        return ModelOutput(logits, feats, unimodal, fused, extras)


@register_method("dmd")
class DMD(Method):
    """DMD: homogeneous/heterogeneous decoupling with graph distillation units (GD).

    Li et al. (CVPR 2023): ``L = L_task + L_dec + L_HomoGD + L_HeteroGD``; the task loss
    covers the fused, homogeneous, heterogeneous and per-modality outputs (reference code).
    """

    Config = DMDConfig
    capabilities = Capabilities(tasks=("regression", "classification"), min_modalities=2)
    paper = "Li et al., DMD, CVPR 2023"
    family = "objective"

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate enum fields and the primary modality."""
        super().check_task(info, cfg)
        check_choices("dmd", cfg, _CHOICES)
        if cfg.primary is not None:
            info.check_modality(cfg.primary)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """The DMD network at width ``d_model``."""
        return DMDNet(info, cast(DMDConfig, cfg), cfg.d_model or model_cfg.hidden,
                      cfg.heads or model_cfg.heads, cfg.layers or model_cfg.layers)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: Any) -> None:
        super().__init__(model, info, cfg)
        net = cast(DMDNet, model)
        m, k = len(info.modalities), info.num_outputs
        primary = info.modality_names.index(net.primary)
        self.homo_gd = GraphDistillationUnit(m, k, net.dim, cfg.gd_size_homo, cfg.gd_alpha,
                                             primary, cfg.gd_prior_temperature, cfg.edge_norm)
        self.hetero_gd = GraphDistillationUnit(m, k, net.hetero_dim, cfg.gd_size_hetero,
                                               cfg.gd_alpha, primary, cfg.gd_prior_temperature,
                                               cfg.edge_norm)

    def decoupling_loss(self, ex: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """``L_rec``, ``L_cyc`` (masked MSEs summed over modalities), ``L_ort`` and ``L_mar``."""
        fm = ex["frame"].unsqueeze(-1).float()
        denom = (ex["frame"].sum((1, 2)).float() * ex["proj"].shape[-1]).clamp_min(1.0)  # [M]
        rec = (((ex["recon"] - ex["proj"]) * fm).pow(2).sum((1, 2, 3)) / denom).sum()
        cyc = (((ex["cycle"] - ex["private"]) * fm).pow(2).sum((1, 2, 3)) / denom).sum()
        # Soft orthogonality: max(0, cos) of each sample's flattened private / common parts.
        cos = F.cosine_similarity((ex["private"] * fm).flatten(2), (ex["common"] * fm).flatten(2),
                                  dim=-1, eps=1e-8).clamp_min(0)  # [M, B]
        present = ex["present"]
        ort = ((cos * present).sum(1) / present.sum(1).clamp_min(1.0)).sum()
        rows = present.t().reshape(-1) > 0  # samples-major, like the reference's feats list
        feats = ex["c_sim"].transpose(0, 1).reshape(-1, ex["c_sim"].shape[-1])[rows]
        ids = target.float()[:, None].expand(-1, present.shape[0]).reshape(-1)[rows]
        mar = margin_loss(feats, ids, self.cfg.margin, self.info.kind != "classification")
        return {"rec": rec, "cyc": cyc, "ort": ort, "mar": mar}

    def gd_loss(self, unit: GraphDistillationUnit, logits: Tensor, reprs: Tensor,
                present: Tensor, use_repr: bool, repr_metric: str) -> dict[str, Tensor]:
        """Edge weights and the unit's ``reg``, ``logit`` and ``repr`` terms."""
        edges = unit(logits, reprs)
        out = {"reg": unit.regulariser(edges),
               "logit": unit.distill(logits, logits, edges, present, "l1")}
        out["repr"] = (self.cfg.gd_repr_weight * unit.distill(reprs, reprs, edges, present,
                                                              repr_metric)
                       if use_repr else logits.sum() * 0)
        return out

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: Any) -> dict[str, Tensor]:
        """Task losses on all heads + ``dec_weight L_dec`` + ``gd_weight`` x each GD unit."""
        cfg, ex, y = self.cfg, out.extras, batch.target
        present = ex["present"]
        zero = out.logits.sum() * 0
        terms = {"task": self.task_loss(out.logits, y), "task_c": self.task_loss(ex["logits_c"], y)}
        aux = zero
        for i in range(len(self.info.modalities)):
            for kind in ("homo_logits", "hetero_logits"):
                aux = aux + self.masked_task_loss(ex[kind][i], y, present[i])
        terms["task_uni"] = aux
        total = terms["task"] + terms["task_c"] + aux
        if cfg.use_decoupling:
            dec = self.decoupling_loss(ex, y)
            terms.update(dec)
            terms["dec"] = dec["rec"] + dec["cyc"] + cfg.gamma * (dec["mar"] + dec["ort"])
            total = total + cfg.dec_weight * terms["dec"]
        for name, unit, use, logits, reprs, use_repr, metric in (
            ("homo", self.homo_gd, cfg.use_homo_gd, ex["homo_logits"], ex["homo_repr"],
             cfg.homo_repr, "l1"),
            ("hetero", self.hetero_gd, cfg.use_hetero_gd, ex["hetero_logits"],
             ex["hetero_repr"], True, cfg.hetero_repr_metric),
        ):
            if not use:
                continue
            gd = self.gd_loss(unit, logits, reprs, present, use_repr, metric)
            terms.update({f"{name}_{k}": v for k, v in gd.items()})
            terms[f"{name}_gd"] = gd["logit"] + gd["repr"] + cfg.gd_reg * gd["reg"]
            total = total + cfg.gd_weight * terms[f"{name}_gd"]
        terms["loss"] = total
        return terms
