"""Self-MM: self-supervised unimodal label generation for multi-task MSA.

Yu, Xu, Yuan, Wu, "Learning Modality-Specific Representations with Self-Supervised
Multi-Task Learning for Multimodal Sentiment Analysis" (AAAI 2021). A fused head and one head
per modality are trained jointly; the unimodal heads regress *generated* labels ``y_s``
produced by the unimodal label generation module (ULGM, Sec. 3.3):

* class centres over the stored training features (Eq. 4-5): ``C_p^s`` / ``C_n^s`` = mean
  feature of samples whose (generated) label is positive / negative;
* relative distances (Eq. 6-8): ``alpha_s = (D_n^s - D_p^s) / (D_p^s + eps)`` with
  ``D_p^s = ||F_s - C_p^s||_2``, the same ``alpha_m`` for the fused feature;
* new label (Eq. 9-11): ``y_s = 1/2 (y_m alpha_s / alpha_m) + 1/2 (y_m + alpha_s - alpha_m)``
  clipped to ``[-H, H]``;
* momentum over epochs (Eq. 12): ``y_s^(n) = (n-1)/(n+1) y_s^(n-1) + 2/(n+1) y_s``,
  applied from the second epoch on;
* loss (Eq. 13): ``L = |y_m_hat - y_m| + sum_s w_s |y_s_hat - y_s|`` with
  ``w_s = tanh(|y_s - y_m|)``.

Classification (not in the paper) uses a one-vs-rest reading: each sample's "positive"
centre is its class centre, the "negative" one the centre of all other classes, the fused
label is ``+1`` and the generated score ``s in [-1, 1]`` gives the unimodal head a soft
target ``(1 + s)/2`` on the true class (the rest spread evenly), fitted with a KL divergence
weighted by ``tanh(|s - 1|)``; centres use the true classes for every head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equimodal.config import ModelConfig
from equimodal.methods._shared import check_choices
from equimodal.methods.base import Capabilities, Method, MethodConfig, Stage
from equimodal.models.crossmodal import LastStateLSTM, masked_pool, modality_masks
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo

if TYPE_CHECKING:
    from equimodal.engine.context import StepContext

_CHOICES = {"primary_encoder": ("mean", "first", "lstm"), "regression_loss": ("l1", "mse")}
_BANKS = ("labels", "targets", "bank_fused", "bank_uni", "centres_fused", "centres_uni")


@dataclass
class SelfMMConfig(MethodConfig):
    """Self-MM settings; defaults of the reference implementation on CMU-MOSI.

    Attributes:
        label_range: ``H``: generated labels are clipped to ``[-H, H]`` (3 for MOSI/MOSEI,
            1 for SIMS).
        exclude_zero: Positive centres use labels ``> 0`` (reference ``excludeZero``) instead
            of ``>= 0``.
        use_ulgm: Generate unimodal labels; ``False`` trains the unimodal heads on the fused
            label with weight 1 (plain multi-task baseline).
        weighted: Weight unimodal losses by ``tanh(|y_s - y_m|)`` (Eq. 13).
        eps: The ``MIN`` added to distance denominators.
        primary: The text-like modality (``None``: the data's first modality).
        primary_encoder: How the primary modality's frames become one vector: ``mean`` over
            valid frames, ``first`` frame (BERT's [CLS] when the features are BERT
            states; the paper fine-tunes BERT, which frozen features cannot) or ``lstm``.
        lstm_hidden: Hidden size of the unimodal LSTMs (reference 16 audio / 32 vision;
            ``None``: ``ModelConfig.hidden``).
        encoder_out: Output size of the LSTM encoders (reference 16 audio / 32 vision;
            ``None``: ``ModelConfig.hidden``).
        post_fusion_dim: Width of the fused feature ``F_m`` (reference 128).
        post_unimodal_dim: Width of each unimodal feature ``F_s`` (reference 32 text /
            16 audio / 32 vision).
        post_fusion_dropout: Dropout before the fused layers (reference 0.1).
        post_unimodal_dropout: Dropout before each unimodal layer (reference 0.0-0.1).
        regression_loss: ``l1`` (reference) or ``mse``.
        unimodal_tasks: Ablation (Table 3's task combinations ``M, T``, ``M, T, A`` ...,
            reference ``tasks="MTAV"``): modalities whose unimodal subtask is trained
            (``None``: every modality, the full Self-MM; ``()``: the fused task only).
    """

    label_range: float = 3.0
    exclude_zero: bool = True
    use_ulgm: bool = True
    weighted: bool = True
    eps: float = 1e-8
    primary: str | None = None
    primary_encoder: str = "mean"
    lstm_hidden: int | None = None
    encoder_out: int | None = None
    post_fusion_dim: int = 128
    post_unimodal_dim: int = 32
    post_fusion_dropout: float = 0.1
    post_unimodal_dropout: float = 0.1
    regression_loss: str = "l1"
    unimodal_tasks: tuple[str, ...] | None = None


def relative_distance(f: Tensor, pos: Tensor, neg: Tensor, eps: float = 1e-8) -> Tensor:
    """``alpha = (||f - C_n|| - ||f - C_p||) / (||f - C_p|| + eps)`` (Eq. 6-8), per row."""
    d_p = (f - pos).norm(dim=-1)
    d_n = (f - neg).norm(dim=-1)
    return (d_n - d_p) / (d_p + eps)


def generate_label(y_m: Tensor, alpha_s: Tensor, alpha_m: Tensor, bound: float,
                   eps: float = 1e-8) -> Tensor:
    """ULGM's new unimodal label (Eq. 9-11): the mean of the ratio rule
    ``y_m alpha_s / alpha_m`` and the difference rule ``y_m + alpha_s - alpha_m``, clipped
    to ``[-bound, bound]``."""
    ratio = alpha_s / (alpha_m + eps)
    return (0.5 * ratio * y_m + 0.5 * (y_m + alpha_s - alpha_m)).clamp(-bound, bound)


def momentum_update(old: Tensor, new: Tensor, epoch: int) -> Tensor:
    """Eq. 12: ``(n - 1)/(n + 1) old + 2/(n + 1) new`` at (1-based) epoch ``n``."""
    return (epoch - 1) / (epoch + 1) * old + 2 / (epoch + 1) * new


class SelfMMNet(nn.Module):
    """Self-MM's network: per-modality utterance vectors, a fused head and unimodal heads.

    The primary modality is pooled (see ``primary_encoder``), the others run through an
    LSTM (final state, Self-MM's ``AuViSubNet``). Fused: ``concat -> dropout -> Linear ->
    ReLU (= F_m) -> Linear -> ReLU -> Linear``; each modality: ``dropout -> Linear -> ReLU
    (= F_s) -> Linear -> ReLU -> Linear``.

    Args:
        info: Task description.
        cfg: A :class:`SelfMMConfig`.
        hidden: ``ModelConfig.hidden`` (default LSTM sizes).
    """

    def __init__(self, info: TaskInfo, cfg: SelfMMConfig, hidden: int) -> None:
        super().__init__()
        self.names = info.modality_names
        self.primary = cfg.primary or self.names[0]
        self.primary_encoder = cfg.primary_encoder
        lstm_hidden, enc_out = cfg.lstm_hidden or hidden, cfg.encoder_out or hidden
        self.encoders = nn.ModuleDict()
        widths = {}
        for n, spec in info.modalities.items():
            if n == self.primary and cfg.primary_encoder != "lstm":
                self.encoders[n] = nn.Identity()
                widths[n] = spec.dim
            else:
                self.encoders[n] = LastStateLSTM(spec.dim, lstm_hidden, enc_out)
                widths[n] = enc_out
        pf, pu, k = cfg.post_fusion_dim, cfg.post_unimodal_dim, info.num_outputs
        self.fusion_in = nn.Sequential(nn.Dropout(cfg.post_fusion_dropout),
                                       nn.Linear(sum(widths.values()), pf), nn.ReLU())
        self.fusion_out = nn.Sequential(nn.Linear(pf, pf), nn.ReLU(), nn.Linear(pf, k))
        self.uni_in = nn.ModuleDict({n: nn.Sequential(
            nn.Dropout(cfg.post_unimodal_dropout), nn.Linear(widths[n], pu), nn.ReLU())
            for n in self.names})
        self.uni_out = nn.ModuleDict({n: nn.Sequential(
            nn.Linear(pu, pu), nn.ReLU(), nn.Linear(pu, k)) for n in self.names})

    def forward(self, batch: Batch) -> ModelOutput:
        """Fused and unimodal predictions; ``features`` are ``F_s``, ``fused`` is ``F_m``."""
        masks = modality_masks(batch, self.names)
        reps = []
        for n in self.names:
            x = batch.inputs[n]
            x = x.unsqueeze(1) if x.dim() == 2 else x
            enc = self.encoders[n]
            if isinstance(enc, nn.Identity):
                r = x[:, 0] if self.primary_encoder == "first" else masked_pool(x, masks[n])
            else:
                r = enc(x, masks[n])
            reps.append(r * batch.present[n].to(r.dtype)[:, None])
        f_m = self.fusion_in(torch.cat(reps, dim=-1))
        feats = {n: self.uni_in[n](r) for n, r in zip(self.names, reps, strict=True)}
        uni = {n: self.uni_out[n](f) for n, f in feats.items()}
        return ModelOutput(self.fusion_out(f_m), feats, uni, f_m)


@register_method("selfmm")
class SelfMM(Method):
    """Self-MM: multi-task fused + unimodal heads on self-generated unimodal labels.

    Yu et al. (AAAI 2021), Eq. 4-13: class-centre relative distances generate unimodal
    labels, updated with epoch momentum; unimodal losses are weighted by ``tanh|y_s - y_m|``.
    """

    Config = SelfMMConfig
    capabilities = Capabilities(tasks=("regression", "classification"), min_modalities=2)
    paper = "Yu et al., Self-MM, AAAI 2021"
    family = "objective"
    # The total loss rises when the unimodal terms switch on (epoch 3: generated labels move
    # away from y_m only from epoch 2), so the contract checks the fused task term.
    contract_loss = "fused"
    labels: Tensor
    targets: Tensor
    bank_fused: Tensor
    bank_uni: Tensor
    centres_fused: Tensor
    centres_uni: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate enum fields, the primary modality and ``label_range``."""
        super().check_task(info, cfg)
        check_choices("selfmm", cfg, _CHOICES)
        if cfg.primary is not None:
            info.check_modality(cfg.primary)
        if cfg.label_range <= 0:
            raise ValueError(f"selfmm: label_range must be > 0, got {cfg.label_range}")
        if isinstance(cfg.unimodal_tasks, str):  # ``--set method.unimodal_tasks=text``
            cfg.unimodal_tasks = (cfg.unimodal_tasks,)
        for n in cfg.unimodal_tasks or ():
            info.check_modality(n)

    @classmethod
    def build_model(cls, info: TaskInfo, model_cfg: ModelConfig, cfg: Any) -> nn.Module:
        """The Self-MM network."""
        return SelfMMNet(info, cast(SelfMMConfig, cfg), model_cfg.hidden)

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: Any) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        # The label and feature banks are sized on the training split at stage start; they
        # are buffers so checkpoints (and resumed runs) keep the generated labels.
        for name in _BANKS:
            self.register_buffer(name, torch.zeros(0))

    # ----- banks --------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # Banks of a trained method have the training split's size; resize before copying.
        for name in _BANKS:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(state_dict[key],
                                                     device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def _classification(self) -> bool:
        return self.info.kind == "classification"

    def init_banks(self, target: Tensor) -> None:
        """Fresh banks for a training split with targets ``target [N]``: every unimodal label
        starts at the fused label (regression) or at full agreement ``+1`` (classification)."""
        n, m, dev = target.shape[0], len(self.names), target.device
        k = self.info.num_outputs if self._classification else 2
        net = cast(SelfMMNet, self.model)
        pf = cast(nn.Linear, net.fusion_out[0]).in_features
        pu = cast(nn.Linear, cast(nn.Sequential, net.uni_out[self.names[0]])[0]).in_features
        self.targets = target.detach().float().clone()
        self.labels = (torch.ones(m, n, device=dev) if self._classification
                       else self.targets.expand(m, n).clone())
        self.bank_fused = torch.zeros(n, pf, device=dev)
        self.bank_uni = torch.zeros(m, n, pu, device=dev)
        self.centres_fused = torch.zeros(k, pf, device=dev)
        self.centres_uni = torch.zeros(m, k, pu, device=dev)

    def _groups(self, labels: Tensor) -> Tensor:
        """Centre membership ``[K, N]`` of the bank rows for one label vector."""
        if self._classification:
            k = self.info.num_outputs
            return labels.long()[None, :] == torch.arange(k, device=labels.device)[:, None]
        pos = labels > 0 if self.cfg.exclude_zero else labels >= 0
        return torch.stack([labels < 0, pos])  # row 0: negative, row 1: positive

    @staticmethod
    def _means(bank: Tensor, groups: Tensor) -> Tensor:
        w = groups.to(bank.dtype)
        # An empty group keeps a zero centre instead of the reference's NaN mean.
        return (w @ bank) / w.sum(1, keepdim=True).clamp_min(1.0)

    def update_centres(self) -> None:
        """Class centres over the whole bank (Eq. 4-5): the fused head groups by the true
        labels; unimodal heads by their generated labels (regression) or true classes."""
        self.centres_fused = self._means(self.bank_fused, self._groups(self.targets))
        for i in range(len(self.names)):
            lab = self.targets if self._classification else self.labels[i]
            self.centres_uni[i] = self._means(self.bank_uni[i], self._groups(lab))

    def _alpha(self, f: Tensor, centres: Tensor, y: Tensor, counts: Tensor | None) -> Tensor:
        if not self._classification:
            return relative_distance(f, centres[1], centres[0], self.cfg.eps)
        assert counts is not None
        cls = y.long()
        pos = centres[cls]
        # One-vs-rest negative centre: the mean of every other class's rows.
        total = (centres * counts[:, None]).sum(0, keepdim=True)
        rest = (counts.sum() - counts[cls]).clamp_min(1.0)[:, None]
        neg = (total - pos * counts[cls][:, None]) / rest
        return relative_distance(f, pos, neg, self.cfg.eps)

    @torch.no_grad()
    def update_labels(self, idx: Tensor, f_fused: Tensor, f_uni: dict[str, Tensor],
                      present: dict[str, Tensor], epoch: int) -> None:
        """ULGM step for the rows ``idx``: new labels (Eq. 9-11) from the current centres,
        merged with momentum (Eq. 12). ``epoch`` is 1-based."""
        y = self.targets[idx]
        counts = self._groups(self.targets).float().sum(1) if self._classification else None
        y_m = torch.ones_like(y) if self._classification else y
        bound = 1.0 if self._classification else self.cfg.label_range
        a_m = self._alpha(f_fused, self.centres_fused, y, counts)
        for i, n in enumerate(self.names):
            a_s = self._alpha(f_uni[n], self.centres_uni[i], y, counts)
            new = generate_label(y_m, a_s, a_m, bound, self.cfg.eps)
            merged = momentum_update(self.labels[i, idx], new, epoch)
            self.labels[i, idx] = torch.where(present[n].bool(), merged, self.labels[i, idx])

    @torch.no_grad()
    def update_banks(self, batch: Batch, out: ModelOutput, epoch: int) -> None:
        """After backward: labels (from epoch 2), stored features, then centres, as the
        reference trainer does after every batch."""
        if batch.index is None or self.labels.numel() == 0 or out.fused is None:
            return
        idx = batch.index
        f_fused = out.fused.detach().float()
        f_uni = {n: out.features[n].detach().float() for n in self.names}
        if epoch > 1:
            self.update_labels(idx, f_fused, f_uni, batch.present, epoch)
        self.bank_fused[idx] = f_fused
        for i, n in enumerate(self.names):
            keep = batch.present[n].bool()
            self.bank_uni[i, idx[keep]] = f_uni[n][keep]
        self.update_centres()

    # ----- contract -----------------------------------------------------------------------
    def on_stage_start(self, stage: Stage, ctx: StepContext, resumed: bool = False) -> None:
        """Initialise the label bank with the training targets (``init_labels``); a run
        resumed inside the stage keeps the checkpoint's banks."""
        if not resumed:
            self.init_banks(ctx.train_split.target.to(ctx.device))

    def unimodal_targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Generated labels ``[M, B]`` of the batch and their loss weights ``[M, B]``."""
        m, target = len(self.names), batch.target
        if self._classification:
            labels = torch.ones(m, batch.size, device=target.device)
        else:
            labels = target.float().expand(m, -1)
        if self.cfg.use_ulgm and batch.index is not None and self.labels.numel():
            labels = self.labels[:, batch.index]
        if not (self.cfg.use_ulgm and self.cfg.weighted):
            return labels, torch.ones_like(labels)
        ref = torch.ones_like(labels) if self._classification else target.float().expand(m, -1)
        return labels, torch.tanh((labels - ref).abs())

    def _unimodal_loss(self, logits: Tensor, target: Tensor, label: Tensor) -> Tensor:
        if not self._classification:
            pred = logits.reshape(-1)
            diff = pred - label
            return diff.abs() if self.cfg.regression_loss == "l1" else diff.pow(2)
        k = logits.shape[-1]
        onehot = F.one_hot(target.long(), k).to(logits.dtype)
        p_true = ((1 + label) / 2)[:, None]
        soft = onehot * p_true + (1 - onehot) * (1 - p_true) / max(k - 1, 1)
        # KL rather than cross-entropy: zero at a perfect fit whatever the target's entropy.
        return (torch.special.xlogy(soft, soft) - soft * F.log_softmax(logits, -1)).sum(-1)

    def compute_loss(self, batch: Batch, out: ModelOutput, ctx: Any) -> dict[str, Tensor]:
        """Eq. 13: fused task loss + weighted unimodal losses on generated labels (only the
        ``unimodal_tasks`` subtasks when the ablation restricts them)."""
        terms = {"fused": self.task_loss(out.logits, batch.target)}
        labels, weights = self.unimodal_targets(batch)
        uni = out.logits.sum() * 0
        tasks = self.cfg.unimodal_tasks
        for i, n in enumerate(self.names):
            if tasks is not None and n not in tasks:
                continue
            w = weights[i] * batch.present[n].to(weights.dtype)
            per = self._unimodal_loss(out.unimodal_logits[n], batch.target, labels[i])
            term = (w * per).sum() / batch.present[n].sum().clamp_min(1)
            terms[f"uni_{n}"] = term
            uni = uni + term
        terms["uni"] = uni
        terms["loss"] = terms["fused"] + uni
        return terms

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Forward, backward, ULGM bank update (labels, features, centres), step."""
        with ctx.autocast():
            out = self(batch)
            losses = self.compute_loss(batch, out, ctx)
        ctx.backward(losses["loss"])
        if self.cfg.use_ulgm:
            self.update_banks(batch, out, ctx.epoch + 1)
        ctx.step()
        return losses

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """Mean ``|y_s - y_m|`` per modality (how far the generated labels moved)."""
        if not self.labels.numel():
            return {}
        ref = torch.ones_like(self.targets) if self._classification else self.targets
        return {f"label_gap/{n}": float((self.labels[i] - ref).abs().mean())
                for i, n in enumerate(self.names)}
