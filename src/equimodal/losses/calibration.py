"""Confidence calibration across modality subsets (CML, Ma et al., ICML 2023) as pure functions.

CML asks that a prediction made from fewer modalities is never more confident than the one
made from more of them: ``Conf(x^{T'}) <= Conf(x^T)`` for ``T' subset T``, with
``Conf = max_k softmax_k`` (the predicted-class probability).
"""

from __future__ import annotations

import torch
from torch import Tensor


def max_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted-class probability and predicted class.

    Args:
        logits: ``[B, C]``.

    Returns:
        ``(conf [B], pred [B])`` with ``conf = max_k softmax(logits)_k``.
    """
    conf, pred = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return conf, pred


def cml_rank_penalty(
    conf_more: Tensor,
    pred_more: Tensor,
    conf_less: Tensor,
    pred_less: Tensor,
    target: Tensor,
    epsilon: float = 0.0,
    both_wrong: bool = True,
    reduction: str = "sum",
) -> Tensor:
    """CML's ranking penalty between a prediction and one made with a modality removed.

    ``max(0, Conf(x^{T'}) - Conf(x^T) - epsilon)`` where the fuller prediction ``x^T`` is
    correct (the official code's "trick 1": a correct fuller prediction must be at least as
    confident as any reduced one). With ``both_wrong`` ("trick 2") the penalty also applies
    where both predictions are wrong, but only pushes the reduced prediction's confidence
    down (the fuller one is detached). Where only the reduced prediction is correct, gaining
    confidence after the removal is allowed and nothing is penalised.

    Args:
        conf_more: ``[B]`` confidence with more modalities (``T``).
        pred_more: ``[B]`` its predicted classes.
        conf_less: ``[B]`` confidence with a modality removed (``T' subset T``).
        pred_less: ``[B]`` its predicted classes.
        target: ``[B]`` labels.
        epsilon: Tolerance margin (the code's ``--epsilon``, 0).
        both_wrong: Apply "trick 2".
        reduction: ``sum`` (the official code), ``mean`` or ``none`` (``[B]``).

    Returns:
        The penalty; zero when removing the modality never raises the confidence.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 0])
        >>> c = lambda *v: torch.tensor(v)
        >>> float(cml_rank_penalty(c(0.9, 0.9), y, c(0.6, 0.95), y, y))  # only row 2 rises
        0.05...
    """
    correct_more = pred_more == target
    wrong_both = (pred_more != target) & (pred_less != target)
    hinge = torch.relu((conf_less - conf_more) - epsilon)
    per = torch.where(correct_more, hinge, torch.zeros_like(hinge))
    if both_wrong:
        hinge2 = torch.relu((conf_less - conf_more.detach()) - epsilon)
        per = per + torch.where(wrong_both, hinge2, torch.zeros_like(hinge2))
    if reduction == "none":
        return per
    if reduction == "mean":
        return per.mean()
    if reduction != "sum":
        raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")
    return per.sum()


def removal_masks(present: dict[str, Tensor], generator: torch.Generator | None = None
                  ) -> list[dict[str, Tensor]]:
    """Per-sample chains of nested modality subsets, removing one modality at a time.

    Each sample draws a random removal order (the official code shuffles the order per
    sample); step ``j`` (``0 .. M-1``) keeps all but the first ``j`` modalities of that
    order, so step 0 is the full input and step ``M-1`` keeps one modality.

    Args:
        present: Modality -> ``[B]`` bool presence of the batch.
        generator: Optional generator for the random orders (default: the global RNG).

    Returns:
        ``M`` presence dicts (modality -> ``[B]`` bool), each a subset of the previous.
    """
    names = list(present)
    ref = present[names[0]]
    b, m = ref.shape[0], len(names)
    noise = torch.rand(b, m, generator=generator) if generator is not None else torch.rand(b, m)
    rank = noise.argsort(dim=1).argsort(dim=1).to(ref.device)  # position of each modality
    steps = []
    for j in range(m):
        keep = rank >= j  # modality removed once its position in the order is < j
        steps.append({n: present[n] & keep[:, i] for i, n in enumerate(names)})
    return steps
