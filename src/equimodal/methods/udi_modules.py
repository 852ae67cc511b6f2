"""Building blocks of UDI (Wang et al.): its config, the variational estimator ``q_phi``, anchor
ranking, the dynamic controller (Eq. 13-16) and flat snapshots of branch weights in buffers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from equimodal.losses.consistency import predictive_entropy
from equimodal.losses.mi import club_nll, club_upper_bound, standardize
from equimodal.methods._shared import check_choices
from equimodal.methods.base import MethodConfig


@dataclass
class UDIConfig(MethodConfig):
    """UDI hyper-parameters (paper defaults where it states them).

    Attributes:
        anchor: Force this modality as the anchor (Appendix A.7); ``None`` selects it.
        unimodal_epochs: Epochs of the anchor-selection stage (``None``: ``train.epochs``).
        follower_epochs: Epochs of each follower stage (``None``: ``train.epochs``).
        select_best_branch: Keep each branch's own best-validation epoch of the selection
            stage (the anchor "trained to convergence"); ``False``: the engine restores all
            branches to the epoch of best summed-logit validation accuracy.
        follower_selection: Epoch kept for each follower: ``fused`` = best fused validation
            accuracy, ties broken by the follower's own accuracy (a strong anchor saturates
            the fused score); ``follower`` = the follower's own accuracy first.
        tie_tolerance: Validation accuracies within this gap count as "similar"; the lower
            predictive entropy then wins (Sec. 3.1; the paper gives no number).
        follower_init: ``reset`` (a follower restarts from its initial weights, Algorithm 1)
            or ``unimodal`` (it starts from its selection-stage weights).
        decoupled: Decoupled optimisation, "DO" of Table 2 (``False``: one joint stage).
        dynamic_controller: Dynamic controller, "DC" of Table 2 (Eq. 13-16); ``False`` uses
            the fixed ``alpha_con`` / ``alpha_com`` (Table 3).
        alpha_con: Fixed consistency weight when the controller is off (Table 2 "no DC" is
            (0, 0), the same numbers as Table 3's (0, 0) row).
        alpha_com: Fixed complementary (MI) weight when the controller is off.
        controller_eps: The ``epsilon`` of Eq. 16.
        controller_batch_size: Size of the controller's mini-batch (``None``: the training
            batch size; the paper uses one mini-batch per epoch and does not give its
            size). Measured on CG-MNIST at 30 epochs (2 seeds): 1,024 instead of 64 left the
            weights one-hot in 46 of 60 follower epochs (64 of 90 at 64) and UDI at
            96.78 ± 0.78 % against 97.01 (``docs/reproductions/cgmnist.md``).
        fusion: ``sum`` of branch logits (paper, two modalities) or ``concat`` (a linear
            head on concatenated frozen features, trained in a last stage; paper's MOSEI).
        fusion_head_epochs: Epochs of the ``fusion_head`` stage (``None``: ``train.epochs``).
        estimator_hidden: Hidden width of ``q_phi`` (``None``: the feature width).
        estimator_lr_scale: Learning-rate multiplier of the ``estimator`` group.
        estimator_inputs: What ``q_phi`` sees in Eq. 8-10: ``standardize`` (default) the
            anchor and follower features centred per feature and scaled by one batch-wide
            scale (:func:`~equimodal.losses.mi.standardize`), with ``L_MI`` and ``L_com`` per
            feature dimension (the logged ``mi_nll`` and ``com`` are then per dimension), or
            ``raw`` (the printed equations: the encoders' features as they are, sums over
            dimensions). See :class:`GaussianEstimator` for why ``raw`` diverges on CG-MNIST.
    """

    anchor: str | None = None
    unimodal_epochs: int | None = None
    follower_epochs: int | None = None
    select_best_branch: bool = True
    follower_selection: str = "fused"
    tie_tolerance: float = 0.005
    follower_init: str = "reset"
    decoupled: bool = True
    dynamic_controller: bool = True
    alpha_con: float = 0.0
    alpha_com: float = 0.0
    controller_eps: float = 1e-8
    controller_batch_size: int | None = None
    fusion: str = "sum"
    fusion_head_epochs: int | None = None
    estimator_hidden: int | None = None
    estimator_lr_scale: float = 1.0
    estimator_inputs: str = "standardize"


class GaussianEstimator(nn.Module):
    """``q_phi(y | x) = N(y; mu(x), diag(exp(logvar(x))))``, the lightweight network
    ``Q_phi`` of Eq. 8-10 (two-layer MLPs as in CLUB; ``logvar`` squashed by ``tanh`` as
    CLUB does, so a dead feature cannot drive the variance, and the NLL, to ``-inf``).

    Reading (``inputs``): Eq. 8-10 apply ``q_phi`` to the raw features and fit it by the NLL
    summed over the feature dimensions. Under the engine's SGD this diverges on CG-MNIST
    (convnet4, 512-d): the follower's features grow under the color shortcut, the NLL grows
    with their square and ``q_phi``'s SGD steps with it. Measured (``raw``, anchor gray, lr
    1e-2, 3k images): follower feature norm 1.8 -> 28 and ``L_MI`` 215 -> 1,090 within 50
    follower steps, ``q_phi``'s weight norm 29 -> 146 (the 10-epoch lr 1e-3 suite run: ``L_MI``
    223 -> 2,243, non-finite at follower epoch 5). Eq. 8 is also unbounded below in the
    follower's scale for a fixed ``q_phi`` (about ``sum_d exp(-logvar_d) cov(mu_d, y_d)``).
    ``standardize`` (default) fits and evaluates ``q_phi`` on per-feature batch-standardised
    ``x`` and ``y`` (MI is invariant to per-feature affine maps; the bound no longer depends on
    either side's scale; the ``tanh``-bounded log-variances match unit-variance targets) and
    trains it on the NLL divided by the target width (same minimiser as Eq. 10; the step no
    longer grows with the width: standardised inputs with the summed NLL still diverged, weight
    norm 26 -> 1.8e16 and non-finite at follower step 8). Measured in the same run: ``L_MI``
    1.4 -> 1.3 per dimension, weight norm constant (26.1) over 180 steps. ``L_com`` is also
    taken per dimension: summed over 512 normalised dimensions it was 30-250 (raw features
    gave 0.1-0.4 at the start), and once the controller set ``alpha_com`` ~ 1 a fresh gray
    follower (color anchor, lr 0.02) blew up in 3 steps (feature norm 8 -> 355, non-finite at
    step 10); per dimension, resumed from the same checkpoint, it trained (CE 2.31 -> 0.23
    in 200 steps, ``L_com`` 0-0.5, feature norm 2-11). ``raw`` keeps the printed form.

    Args:
        x_dim: Size of the conditioning (anchor / guide) features.
        y_dim: Size of the predicted (follower) features.
        hidden: Width of the hidden layers.
        inputs: ``standardize`` (default) or ``raw`` (the printed equations).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int, inputs: str = "standardize") -> None:
        super().__init__()
        if inputs not in ("standardize", "raw"):
            raise ValueError(f"inputs must be 'standardize' or 'raw', got {inputs!r}")
        self.inputs = inputs
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``[N, y_dim]`` of ``q_phi(. | x)``."""
        return self.mu(x), self.logvar(x)

    def _prepare(self, x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Select the ``mask`` rows, then standardise both sides (``inputs="standardize"``)."""
        if mask is not None:
            x, y = x[mask], y[mask]
        if self.inputs == "standardize" and x.shape[0] > 1:
            x, y = standardize(x), standardize(y)
        return x, y

    def nll(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """``L_MI`` of Eq. 10 (detach ``x`` and ``y`` to train ``phi`` only)."""
        x, y = self._prepare(x, y, mask)
        mu, logvar = self(x)
        nll = club_nll(y, mu, logvar)
        # Same minimiser as Eq. 10; the step no longer grows with the feature width.
        return nll / y.shape[-1] if self.inputs == "standardize" else nll

    def upper_bound(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """``I_v(x; y)`` of Eq. 8 with this ``q_phi``."""
        x, y = self._prepare(x, y, mask)
        mu, logvar = self(x)
        bound = club_upper_bound(y, mu, logvar)
        # Per dimension on normalised features: the printed sum's scale on raw features.
        return bound / y.shape[-1] if self.inputs == "standardize" else bound


def rank_branches(
    scores: Sequence[float],
    entropies: Sequence[float],
    tolerance: float = 0.0,
    forced: int | None = None,
) -> list[int]:
    """Order branches for UDI: best validation score first; among branches within
    ``tolerance`` of the best remaining score, the lower predictive entropy wins (Sec. 3.1).
    Applied repeatedly, this gives the progressive order ``a, b, c, ...`` of Appendix A.2.

    Args:
        scores: Validation score per branch (higher is better).
        entropies: Mean predictive entropy per branch on the same split.
        tolerance: Score difference still counted as "similar performance".
        forced: Branch index to put first regardless of scores (Appendix A.7).

    Returns:
        Branch indices, anchor first.

    Example:
        >>> rank_branches([0.8, 0.8, 0.5], [0.9, 0.4, 0.1])
        [1, 0, 2]
    """
    remaining = list(range(len(scores)))
    order: list[int] = []
    if forced is not None:
        order.append(forced)
        remaining.remove(forced)
    while remaining:
        best = max(scores[i] for i in remaining)
        close = [i for i in remaining if scores[i] >= best - tolerance]
        pick = min(close, key=lambda i: (entropies[i], -scores[i], i))
        order.append(pick)
        remaining.remove(pick)
    return order


def branch_scores(
    fused: Tensor, unimodal: dict[str, Tensor], target: Tensor, present: dict[str, Tensor],
    fused_names: Sequence[str] | None = None,
) -> tuple[float, list[float], list[float]]:
    """Accuracy of the fused logits, and accuracy and mean predictive entropy of each
    branch over the samples that have its modality (the anchor criteria of Sec. 3.1).

    Args:
        fused: ``[N, C]`` fused logits.
        unimodal: Modality -> ``[N, C]`` branch logits (in the order to report).
        target: ``[N]`` class labels.
        present: Modality -> ``[N]`` bool presence.
        fused_names: Score the sum of these branches' logits instead of ``fused``: the
            fused output of the branches trained so far (``y^{ab}`` of Appendix A.2), so a
            branch not yet trained cannot steer a follower's epoch selection.

    Returns:
        ``(fused_accuracy, accuracies, entropies)``; a branch without samples scores 0 with
        infinite entropy.
    """
    if fused_names is not None:
        fused = torch.stack([unimodal[n] for n in fused_names]).sum(0)
    fused_acc = float((fused.argmax(1) == target).float().mean())
    scores, entropies = [], []
    for name, logits in unimodal.items():
        mask = present[name]
        sel, y = logits[mask], target[mask]
        ok = sel.shape[0] > 0
        scores.append(float((sel.argmax(1) == y).float().mean()) if ok else 0.0)
        entropies.append(float(predictive_entropy(sel).mean()) if ok else float("inf"))
    return fused_acc, scores, entropies


def masked_cross_entropy(logits: Tensor, target: Tensor, present: Tensor) -> Tensor:
    """Cross-entropy (Eq. 3) over the samples that have the modality: an absent modality's
    zero features carry no signal."""
    if bool(present.all()):
        return torch.nn.functional.cross_entropy(logits, target)
    if not bool(present.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[present], target[present])


def mask_or_none(mask: Tensor) -> Tensor | None:
    """``None`` when every row is selected (saves the gather)."""
    return None if bool(mask.all()) else mask


def grad_inner(a: Sequence[Tensor | None], b: Sequence[Tensor | None]) -> Tensor:
    """``xi = sum_{k in K} g_a[k] . g_b[k]`` over the parameters both losses reach (Eq. 14).

    Args:
        a: Gradients per parameter (``None`` where the loss does not reach it).
        b: Gradients for the same parameters.

    Returns:
        Scalar inner product (float32).
    """
    total: Tensor | None = None
    for ga, gb in zip(a, b, strict=True):
        if ga is None or gb is None:
            continue
        term = (ga.float() * gb.float()).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def controller_weights(xi_con: Tensor, xi_com: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """ReLU (Eq. 15) and normalisation (Eq. 16) of the gradient alignments.

    Args:
        xi_con: ``<g_cls, g_con>`` (Eq. 14).
        xi_com: ``<g_cls, g_com>`` (Eq. 14).
        eps: The small ``epsilon`` of Eq. 16.

    Returns:
        ``(alpha_con, alpha_com)``, each in ``[0, 1]`` with sum ``< 1``.
    """
    pos_con, pos_com = torch.relu(xi_con), torch.relu(xi_com)
    denom = pos_con + pos_com + eps
    return pos_con / denom, pos_com / denom


def branch_tensors(modules: Sequence[nn.Module]) -> list[Tensor]:
    """Floating-point parameters and buffers of ``modules`` (a branch: encoder + head)."""
    out: list[Tensor] = []
    for mod in modules:
        out.extend(t for t in mod.state_dict(keep_vars=True).values() if t.is_floating_point())
    return out


def flatten_state(modules: Sequence[nn.Module]) -> Tensor:
    """One flat vector of a branch's floating-point state (for a snapshot buffer)."""
    tensors = branch_tensors(modules)
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


@torch.no_grad()
def load_flat_state(modules: Sequence[nn.Module], flat: Tensor) -> None:
    """Write a vector made by :func:`flatten_state` back into the branch, in place (the
    optimisers keep their parameter references)."""
    start = 0
    for t in branch_tensors(modules):
        n = t.numel()
        t.copy_(flat[start : start + n].view_as(t).to(t.dtype))
        start += n
    if start != flat.numel():
        raise ValueError(f"snapshot has {flat.numel()} values, branch needs {start}")


def validate_config(cfg: Any) -> None:
    """Raise ``ValueError`` naming the field for an invalid ``UDIConfig``."""
    choices = {"follower_init": ("reset", "unimodal"), "fusion": ("sum", "concat"),
               "follower_selection": ("fused", "follower"),
               "estimator_inputs": ("standardize", "raw")}
    check_choices("udi", cfg, choices)
    for name in ("alpha_con", "alpha_com", "tie_tolerance", "controller_eps"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"udi: {name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("unimodal_epochs", "follower_epochs", "fusion_head_epochs",
                 "controller_batch_size", "estimator_hidden"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"udi: {name} must be >= 1 or None, got {value}")
    if cfg.estimator_lr_scale <= 0:
        raise ValueError(f"udi: estimator_lr_scale must be > 0, got {cfg.estimator_lr_scale}")
