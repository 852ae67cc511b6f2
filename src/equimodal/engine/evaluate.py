"""Inference over a split and metric computation (fused + per-modality)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit
from equimodal.types import TaskInfo


@torch.no_grad()
def predict_split(
    method: Any,
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


def evaluate(
    method: Any,
    split: MultimodalSplit,
    info: TaskInfo,
    batch_size: int = 256,
    modalities: Iterable[str] | None = None,
    unimodal: bool = True,
) -> dict[str, float]:
    """Metrics of the fused prediction plus ``<modality>/<metric>`` per modality.

    Per-modality scores come from the method's unimodal logits (split fusion layer or
    unimodal heads) when it gives them, otherwise from the fused prediction with only that
    modality present.
    """
    from equimodal.metrics import compute_task_metrics

    fused, uni, target = predict_split(method, split, batch_size, modalities)
    metrics = compute_task_metrics(info.kind, fused, target)
    if not unimodal or modalities is not None:
        return metrics
    # A method that reads only some modalities (``unimodal``) names them: a score for a
    # modality it never sees would be a meaningless number next to real ones.
    for name in getattr(method, "modalities_in_use", None) or info.modality_names:
        if name in uni:
            scores = compute_task_metrics(info.kind, uni[name], target)
        else:
            only, _, _ = predict_split(method, split, batch_size, [name])
            scores = compute_task_metrics(info.kind, only, target)
        for k, v in scores.items():
            metrics[f"{name}/{k}"] = v
    return metrics
