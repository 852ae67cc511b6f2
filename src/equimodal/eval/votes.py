"""Who decides a late-fusion prediction: each branch's vote against the fused one.

In a model whose fused logits are the sum of its branches' logits (``fusion="sum"``), a
branch that is right can still be outvoted by a confidently wrong one. :func:`branch_votes`
counts, per branch, the samples it gets right that the fused prediction gets wrong
(*outvoted*) and the reverse (*rescued*), with the branch's top-1 margin (top logit minus
the runner-up) overall and on the outvoted samples, and its logit scale. How far one
branch's margins exceed the other's on the same samples says who wins the sum.
:func:`weighted_sum_accuracy` re-fuses the branch logits with other weights, e.g. to
measure how much a follower branch costs at half its vote.

Both are pure functions of logits (what :func:`equimodal.methods.inference.predict_split`
returns), for single-label classification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def top1_margin(logits: Tensor) -> Tensor:
    """Top logit minus the runner-up, per row of ``[N, C]`` logits (``C >= 2``)."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def outvoted(fused: Tensor, branch: Tensor, target: Tensor) -> Tensor:
    """``[N]`` bool: the samples ``branch``'s logits get right and ``fused``'s get wrong."""
    return (branch.argmax(1) == target) & (fused.argmax(1) != target)


def _check(unimodal: Mapping[str, Tensor], target: Tensor, fused: Tensor | None = None
           ) -> None:
    if not unimodal:
        raise ValueError("branch_votes: no unimodal logits (the method gives no branch "
                         "read-outs; fusion with a joint head has no branch votes)")
    n = target.shape[0]
    if target.dim() != 1:
        raise ValueError(f"target: expected class indices [N], got shape {tuple(target.shape)}")
    named = dict(unimodal) if fused is None else {**unimodal, "fused": fused}
    for name, logits in named.items():
        if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
            raise ValueError(f"{name}: expected logits [N={n}, C>=2], got shape "
                             f"{tuple(logits.shape)}")


def branch_votes(fused: Tensor, unimodal: Mapping[str, Tensor], target: Tensor
                 ) -> dict[str, Any]:
    """Each branch's vote against the fused prediction.

    Args:
        fused: Fused logits ``[N, C]``.
        unimodal: Branch name -> its own logits ``[N, C]``.
        target: Class indices ``[N]``.

    Returns:
        ``{"n", "fused_accuracy", "branches": {name: {"accuracy", "outvoted", "rescued",
        "median_margin", "median_margin_outvoted", "logit_std"}}}``: accuracies in [0, 1];
        ``outvoted`` / ``rescued`` are sample counts (branch right and fused wrong /
        branch wrong and fused right); ``median_margin_outvoted`` is NaN when nothing was
        outvoted; ``logit_std`` is the mean over samples of the std of a row's logits.

    Raises:
        ValueError: no branches, or shapes that do not match.
    """
    _check(unimodal, target, fused)
    fused_right = fused.argmax(1) == target
    branches: dict[str, dict[str, float]] = {}
    for name, logits in unimodal.items():
        right = logits.argmax(1) == target
        lost = outvoted(fused, logits, target)
        margin = top1_margin(logits.float())
        branches[name] = {
            "accuracy": right.float().mean().item(),
            "outvoted": int(lost.sum()),
            "rescued": int((~right & fused_right).sum()),
            "median_margin": margin.median().item(),
            "median_margin_outvoted": (margin[lost].median().item()
                                       if bool(lost.any()) else float("nan")),
            "logit_std": logits.float().std(dim=1).mean().item(),
        }
    return {"n": int(target.shape[0]), "fused_accuracy": fused_right.float().mean().item(),
            "branches": branches}


def weighted_sum_accuracy(unimodal: Mapping[str, Tensor], target: Tensor,
                          weights: Mapping[str, float]) -> float:
    """Accuracy of ``sum_m weights[m] * logits_m`` (a branch left out of ``weights`` counts 1).

    Raises:
        ValueError: shapes that do not match, or a weight for a branch that is not there.
    """
    _check(unimodal, target)
    unknown = set(weights) - set(unimodal)
    if unknown:
        raise ValueError(f"weights: unknown branch(es) {sorted(unknown)}; branches are "
                         f"{sorted(unimodal)}")
    total = torch.stack([weights.get(k, 1.0) * v.float() for k, v in unimodal.items()]).sum(0)
    return (total.argmax(1) == target).float().mean().item()
