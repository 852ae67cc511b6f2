"""Inference over a whole split: the one loop that scores a method on data.

It lives in the methods layer (not ``engine/``) because methods need it too, e.g. UDI
scores its anchor on a split while training; ``equimodal.engine.evaluate`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit

if TYPE_CHECKING:
    from equimodal.methods.base import Method


@torch.no_grad()
def predict_split(
    method: Method,
    split: MultimodalSplit,
    batch_size: int = 256,
    modalities: Iterable[str] | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Run ``method.predict`` over a split in order.

    Args:
        method: A :class:`~equimodal.methods.base.Method`.
        split: The split to predict.
        batch_size: Inference batch size.
        modalities: Keep only these modalities present (others zeroed + masked).

    Returns:
        Fused outputs ``[N, C]``, unimodal outputs per modality ``[N, C]`` (where the method
        gives them) and targets, all on CPU.
    """
    was_training = method.training
    method.eval()
    device = split.target.device
    keep = None if modalities is None else set(modalities)
    outs: list[Tensor] = []
    uni: dict[str, list[Tensor]] = {}
    idx = torch.arange(len(split), device=device)
    for start in range(0, len(split), batch_size):
        batch = split.batch(idx[start : start + batch_size])
        if keep is not None:
            batch = batch.with_modalities(keep)
        out = method.predict(batch)
        outs.append(out.logits.float().cpu())
        for name, logit in out.unimodal_logits.items():
            uni.setdefault(name, []).append(logit.float().cpu())
    method.train(was_training)
    fused = torch.cat(outs) if outs else torch.empty(0)
    return fused, {k: torch.cat(v) for k, v in uni.items()}, split.target.cpu()
