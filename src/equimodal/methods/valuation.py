"""Sample-level modality valuation (Wei, Feng, Wang & Hu, "Enhancing Multimodal Cooperation
via Sample-level Modality Valuation", CVPR 2024).

1. Valuate: after each epoch (from ``warmup - 1`` on), every training sample's modalities
   are scored by their Shapley value for the fused prediction,
   ``phi^m(x) = sum_{S subset N \\ {m}} |S|! (M - |S| - 1)! / M! [v(S u {m}) - v(S)]`` with
   ``v(S) = |S| * 1[f(x^S) = y]`` (``v(empty) = 0``; a prediction from the modalities ``S``
   only, the others zero-filled and absent). A fully cooperative modality scores 1; with two
   modalities ``phi^a = (v_a + v_all - v_b) / 2``, as in the official code.
2. Enhance: after the warm-up, the low-contributing modality is re-trained on the samples
   where it contributes little: each sample is repeated ``n(phi^m)`` more times with every
   modality but ``m`` dropped, ``n = 1`` for ``0.4 < phi < 0.9``, ``2`` for
   ``-0.1 < phi <= 0.4``, ``3`` below (official code's thresholds); the loss is the
   cross-entropy of the fused prediction over originals and copies.

The official code rebuilds the training set each epoch with the copies; here the engine's
loader is kept and each mini-batch is extended with its own samples' copies, so an epoch
sees the same multiset of examples (copies share their original's mini-batch).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from equimodal.engine.context import StepContext
from equimodal.methods.base import Capabilities, Method, MethodConfig
from equimodal.models.multimodal import MultimodalModel
from equimodal.registry import register_method
from equimodal.types import Batch, ModelOutput, TaskInfo


def shapley_values(correct: dict[tuple[int, ...], Tensor], m: int) -> Tensor:
    """Per-sample Shapley values of ``m`` modalities with ``v(S) = |S| * correct_S``.

    Args:
        correct: Non-empty subset (sorted modality indices) -> ``[B]`` bool: whether the
            prediction from that subset alone is right.
        m: Number of modalities.

    Returns:
        ``[B, m]`` contributions; they sum to ``v(N) = m * correct_N`` per sample.
    """
    ref = next(iter(correct.values()))

    def value(subset: tuple[int, ...]) -> Tensor:
        if not subset:
            return torch.zeros(ref.shape[0], device=ref.device)
        return len(subset) * correct[subset].float()

    out = torch.zeros(ref.shape[0], m, device=ref.device)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for s in itertools.combinations(others, size):
                with_i = tuple(sorted((*s, i)))
                out[:, i] += weight * (value(with_i) - value(s))
    return out


def extra_copies(contrib: Tensor, thresholds: tuple[float, float, float]) -> Tensor:
    """Copies per (sample, modality): 0 at ``phi >= t0``, 1 in ``(t1, t0)``, 2 in
    ``(t2, t1]``, 3 at ``phi <= t2`` (official thresholds ``(0.9, 0.4, -0.1)``)."""
    t0, t1, t2 = thresholds
    n = torch.zeros_like(contrib, dtype=torch.long)
    n = torch.where(contrib < t0, torch.ones_like(n), n)
    n = torch.where(contrib <= t1, torch.full_like(n, 2), n)
    return torch.where(contrib <= t2, torch.full_like(n, 3), n)


@dataclass
class ValuationConfig(MethodConfig):
    """Sample-level valuation hyper-parameters (official code defaults).

    Attributes:
        warmup: Epochs of plain training before re-sampling (``None``:
            ``max(1, round(epochs * 5 / 60))``, the code's ``--warmup 5`` of 60 epochs).
        thresholds: Contribution thresholds ``(t0, t1, t2)`` giving 0 / 1 / 2 / 3 copies.
        max_modalities_exact: Exact Shapley values need ``2^M - 1`` subset predictions; the
            method refuses more modalities than this.
    """

    warmup: int | None = None
    thresholds: tuple[float, float, float] = (0.9, 0.4, -0.1)
    max_modalities_exact: int = 6


@register_method("valuation")
class Valuation(Method):
    """Sample-level modality valuation: Shapley contributions, re-train weak-modality copies.

    Wei, Feng, Wang & Hu, CVPR 2024. ``phi^m(x)`` = Shapley value of modality ``m`` with
    ``v(S) = |S| 1[f(x^S) = y]``; after the warm-up each sample adds ``n(phi^m)`` copies in
    {0, 1, 2, 3} that keep modality ``m`` only; the loss is the fused cross-entropy.
    """

    Config = ValuationConfig
    capabilities = Capabilities(tasks=("classification",), min_modalities=2)
    paper = ("Wei et al., Enhancing Multimodal Cooperation via Sample-level Modality "
             "Valuation, CVPR 2024")
    family = "data"

    contrib: Tensor
    ready: Tensor

    @classmethod
    def check_task(cls, info: TaskInfo, cfg: Any) -> None:
        """Also validate the config and the number of modalities."""
        super().check_task(info, cfg)
        if len(info.modalities) > cfg.max_modalities_exact:
            raise ValueError(f"valuation: {len(info.modalities)} modalities exceed "
                             f"max_modalities_exact={cfg.max_modalities_exact}")
        t0, t1, t2 = cfg.thresholds
        if not t0 > t1 > t2:
            raise ValueError("valuation: thresholds must be decreasing")

    def __init__(self, model: nn.Module, info: TaskInfo, cfg: ValuationConfig) -> None:
        super().__init__(model, info, cfg)
        self.names = info.modality_names
        m = len(self.names)
        self.subsets = [s for k in range(1, m + 1) for s in itertools.combinations(range(m), k)]
        # Contributions of every training sample (resized on first use / when loading).
        self.register_buffer("contrib", torch.ones(0, m))
        self.register_buffer("ready", torch.tensor(False))
        self._epochs = 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # The contribution table is sized by the training split, unknown at construction.
        key = prefix + "contrib"
        if key in state_dict and state_dict[key].shape != self.contrib.shape:
            self.contrib = torch.empty_like(state_dict[key], device=self.contrib.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- valuation ----------------------------------------------------------------------
    def _fuse_subset(self, batch: Batch, feats: dict[str, Tensor], keep: tuple[int, ...]
                     ) -> Tensor:
        """Fused logits from the modalities ``keep`` only (the others zeroed and absent)."""
        net = cast(MultimodalModel, self.model)
        kept = {self.names[i] for i in keep}
        present = {n: p & (n in kept) for n, p in batch.present.items()}
        masked = {n: f * present[n].to(f.dtype).unsqueeze(1) for n, f in feats.items()}
        return net.fuse(replace(batch, present=present), masked).logits

    @torch.no_grad()
    def contributions(self, batch: Batch) -> Tensor:
        """``[B, M]`` Shapley contributions of a batch (eval-mode predictions)."""
        net = cast(MultimodalModel, self.model)
        feats = net.encode(batch)
        correct = {s: self._fuse_subset(batch, feats, s).argmax(1) == batch.target
                   for s in self.subsets}
        return shapley_values(correct, len(self.names))

    @torch.no_grad()
    def valuate(self, ctx: StepContext) -> Tensor:
        """Score every training sample; stores and returns the ``[N, M]`` table."""
        was = self.training
        self.eval()
        table = torch.cat([self.contributions(b) for b in
                           ctx.iter_train()])
        self.train(was)
        self.contrib = table.to(self.ready.device)
        self.ready.fill_(True)
        return table

    # ----- schedule -----------------------------------------------------------------------
    def stages(self, train: Any) -> list[Any]:
        """One joint stage; remembers the run length for the derived warm-up."""
        self._epochs = int(train.epochs)
        return super().stages(train)

    def warmup(self) -> int:
        """Warm-up epochs."""
        if self.cfg.warmup is not None:
            return int(self.cfg.warmup)
        return max(1, round(self._epochs * 5 / 60))

    def on_epoch_end(self, ctx: StepContext) -> dict[str, float]:
        """From epoch ``warmup - 1`` on, re-valuate the training set for the next epoch."""
        if ctx.stage_epoch < self.warmup() - 1:
            return {}
        table = self.valuate(ctx)
        copies = extra_copies(table, tuple(self.cfg.thresholds))
        row = {f"contrib_{n}": float(table[:, i].mean()) for i, n in enumerate(self.names)}
        row.update({f"copies_{n}": float(copies[:, i].sum()) for i, n in enumerate(self.names)})
        return row

    # ----- training -----------------------------------------------------------------------
    def resampled(self, batch: Batch, ctx: StepContext) -> tuple[ModelOutput, Tensor]:
        """Fused output over the batch and its weak-modality copies, with their targets."""
        net = cast(MultimodalModel, self.model)
        feats = net.encode(batch)
        use = (bool(self.ready) and ctx.stage_epoch >= self.warmup() and batch.index is not None
               and self.contrib.shape[0] > int(batch.index.max()))
        if not use:
            return net.fuse(batch, feats), batch.target
        assert batch.index is not None
        copies = extra_copies(self.contrib[batch.index], tuple(self.cfg.thresholds))
        rows, present = [torch.arange(batch.size, device=batch.target.device)], []
        present.append(batch.present)
        for i, n in enumerate(self.names):
            r = torch.repeat_interleave(torch.arange(batch.size, device=copies.device),
                                        copies[:, i])
            if r.numel() == 0:
                continue
            rows.append(r)
            # A copy keeps modality n only: the others are dropped (zeroed and absent).
            present.append({k: p[r] & (k == n) for k, p in batch.present.items()})
        idx = torch.cat(rows)
        pres = {k: torch.cat([p[k] for p in present]) for k in batch.present}
        all_feats = {k: f[idx] * pres[k].to(f.dtype).unsqueeze(1) for k, f in feats.items()}
        big = replace(batch, present=pres, target=batch.target[idx], index=None,
                      inputs={k: v[idx] for k, v in batch.inputs.items()},
                      lengths={k: v[idx] for k, v in batch.lengths.items()})
        return net.fuse(big, all_feats), big.target

    def training_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """Cross-entropy over the batch and its re-sampled unimodal copies."""
        with ctx.autocast():
            out, target = self.resampled(batch, ctx)
            loss = self.task_loss(out.logits, target)
        ctx.backward(loss)
        ctx.step()
        return {"loss": loss.detach(), "n_rows": torch.tensor(float(target.shape[0]))}
