"""Inference over a split and metric computation (fused + per-modality)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit
from equimodal.methods.inference import predict_split
from equimodal.types import TaskInfo

__all__ = ["evaluate", "predict_split"]

if TYPE_CHECKING:
    from equimodal.methods.base import Method


def evaluate(
    method: Method,
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
    for name in method.modalities_in_use:
        if name in uni:
            scores = compute_task_metrics(info.kind, uni[name], target)
        else:
            only, _, _ = predict_split(method, split, batch_size, [name])
            scores = compute_task_metrics(info.kind, only, target)
        for k, v in scores.items():
            metrics[f"{name}/{k}"] = v
    return metrics


@torch.no_grad()
def split_features(
    method: Method, split: MultimodalSplit, batch_size: int = 256
) -> dict[str, tuple[Tensor, Tensor]]:
    """Frozen per-modality features of a split from :meth:`Method.modality_features`.

    Returns:
        Modality -> ``(features [N_m, H], targets [N_m])`` on CPU, over the samples that
        have the modality (absent ones are zero-filled inputs and would teach nothing).
    """
    was_training = method.training
    method.eval()
    device = split.target.device
    feats: dict[str, list[Tensor]] = {}
    targets: dict[str, list[Tensor]] = {}
    idx = torch.arange(len(split), device=device)
    for start in range(0, len(split), batch_size):
        batch = split.batch(idx[start : start + batch_size])
        got = method.modality_features(batch)
        for name, f in got.items():
            if f.dim() != 2 or f.shape[0] != batch.size:
                continue
            keep = batch.present[name].bool() if name in batch.present else None
            rows = f if keep is None else f[keep]
            tgt = batch.target if keep is None else batch.target[keep]
            feats.setdefault(name, []).append(rows.float().cpu())
            targets.setdefault(name, []).append(tgt.cpu())
    method.train(was_training)
    return {n: (torch.cat(v), torch.cat(targets[n])) for n, v in feats.items()}


def probe_metrics(
    method: Method, data: Any, info: TaskInfo, batch_size: int = 256, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Linear-probe metrics per modality for valid and test (see :mod:`equimodal.metrics.probe`).

    Keys: ``<modality>/probe_accuracy`` and ``<modality>/probe_macro_f1`` (classification)
    or ``<modality>/probe_mae`` (regression). A modality the method gives no features for
    (or does not use) gets no key rather than a wrong number; multilabel tasks get none.
    """
    from equimodal.metrics.probe import linear_probe

    if info.kind not in ("classification", "regression"):
        return {}, {}
    tr = split_features(method, data.train, batch_size)
    va = split_features(method, data.valid, batch_size)
    te = split_features(method, data.test, batch_size)
    valid: dict[str, float] = {}
    test: dict[str, float] = {}
    for name in method.modalities_in_use:
        if name not in tr or name not in va or name not in te:
            continue
        res = linear_probe(info.kind, tr[name], va[name], te[name], info.num_outputs, seed=seed)
        if res is None:
            continue
        valid.update({f"{name}/probe_{k}": v for k, v in res.valid.items()})
        test.update({f"{name}/probe_{k}": v for k, v in res.test.items()})
    return valid, test
