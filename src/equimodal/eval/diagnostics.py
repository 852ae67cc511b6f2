"""Diagnostics of a trained method: modality contributions, modality gap, Dirichlet energy.

* **Modality contribution**: the Shapley value of each modality in the cooperative game
  whose value ``v(S)`` is the method's score with only the modalities in ``S`` present
  (the others zero-filled and flagged missing, as in
  :func:`equimodal.eval.robustness.missing_modality_table`). ``sum_m phi_m = v(all) -
  v(empty)``; a lazy model shows one modality taking almost all of it.
* **Modality gap** (Liang et al., NeurIPS 2022, "Mind the Gap"): the distance between the
  centroids of each modality's L2-normalised features, ``||mean(x_a/|x_a|) -
  mean(x_b/|x_b|)||``, over samples that have both modalities.
* **Branch votes** (:mod:`equimodal.eval.votes`): for single-label classifiers with branch
  read-outs, the samples each branch gets right that the fused prediction gets wrong
  (*outvoted*) and the reverse, with the branches' logit margins: who wins a summed vote.
* **Method diagnostics**: what the method's one diagnostics hook,
  :meth:`Method.diagnostics(split) <equimodal.methods.base.Method.diagnostics>`, returns:
  Dirichlet energies (``dirichlet*`` keys, ``equimodal.losses.graphs.dirichlet_energy``,
  SCOPE's graph) and anything else the method measures (EBMC's modality contributions).

:func:`protocol_report` bundles these with the robustness protocols of
:mod:`equimodal.eval.robustness` for the bench (``--robustness``) and the CLI.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit
from equimodal.eval.robustness import (
    DEFAULT_LEVELS,
    DEFAULT_RATES,
    frame_drop_curve,
    missing_modality_table,
    noise_curve,
)
from equimodal.eval.votes import branch_votes
from equimodal.methods.inference import predict_split
from equimodal.metrics import compute_task_metrics, selection_metric
from equimodal.types import TaskInfo

if TYPE_CHECKING:
    from equimodal.methods.base import Method

PROTOCOLS = ("missing", "drop", "noise", "shapley", "gap", "dirichlet", "votes")


def shapley_values(values: Mapping[frozenset[str], float], players: Sequence[str]
                   ) -> dict[str, float]:
    """Exact Shapley values of a cooperative game.

    ``phi_i = sum_{S subset N \\ {i}} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))``.

    Args:
        values: ``v(S)`` for every subset ``S`` of ``players`` (the empty set included).
        players: The players (modalities).

    Returns:
        Player -> Shapley value.

    Raises:
        KeyError: a subset's value is missing.

    Example:
        >>> v = {frozenset(): 0.0, frozenset("a"): 1.0, frozenset("b"): 0.0,
        ...      frozenset("ab"): 2.0}
        >>> shapley_values(v, ["a", "b"])
        {'a': 1.5, 'b': 0.5}
    """
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        phi = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                phi += weight * (values[s | {p}] - values[s])
        out[p] = phi
    return out


def _constant_score(split: MultimodalSplit, info: TaskInfo, metric: str) -> float:
    # The "no modality" baseline: the best constant prediction (majority class, mean score,
    # all-negative labels), i.e. what a model that ignores its inputs can reach.
    y = split.target.cpu()
    n = y.shape[0]
    if info.kind == "classification":
        logits = torch.zeros(n, info.num_outputs)
        logits[:, int(torch.bincount(y.long(), minlength=info.num_outputs).argmax())] = 1.0
    elif info.kind == "regression":
        logits = torch.full((n, 1), float(y.float().mean()))
    else:
        logits = -torch.ones(n, info.num_outputs)
    return float(compute_task_metrics(info.kind, logits, y)[metric])


def modality_contributions(
    method: Method,
    split: MultimodalSplit,
    info: TaskInfo,
    metric: str | None = None,
    missing: dict[str, Any] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Shapley value of each modality for the method's score on ``split``.

    Args:
        method: A trained method.
        split: Evaluation split.
        info: Task description.
        metric: Metric (default: the task's selection metric); lower-is-better metrics are
            negated so a positive contribution always means "helps".
        missing: A :func:`missing_modality_table` result to reuse (skips re-evaluation).
        batch_size: Inference batch size.

    Returns:
        ``{"metric", "sign", "values": {modality: phi}, "share": {modality: phi / total},
        "subsets": {"a+b": v}, "empty": v0}``.
    """
    metric, mode = selection_metric(info.kind, metric or "auto")
    sign = -1.0 if mode == "min" else 1.0
    table = missing or missing_modality_table(method, split, info, batch_size)
    names = [n for n in info.modality_names if bool(split.present[n].any())]
    values: dict[frozenset[str], float] = {
        frozenset(r["modalities"].split("+")): sign * float(r[metric]) for r in table["rows"]}
    values[frozenset()] = sign * _constant_score(split, info, metric)
    phi = shapley_values(values, names)
    total = sum(phi.values())
    share = {k: (v / total if abs(total) > 1e-12 else math.nan) for k, v in phi.items()}
    return {"metric": metric, "sign": sign, "values": phi, "share": share,
            "subsets": {r["modalities"]: float(r[metric]) for r in table["rows"]},
            "empty": sign * values[frozenset()]}


@torch.no_grad()
def collect_embeddings(
    method: Method,
    split: MultimodalSplit,
    limit: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Per-modality features and fused representations of the first ``limit`` samples.

    Returns:
        ``{"features": {m: [N, H]}, "fused": [N, F] | None, "target": [N],
        "present": {m: [N] bool}}`` on CPU.
    """
    was = method.training
    method.eval()
    n = len(split) if limit is None else min(limit, len(split))
    idx = torch.arange(n, device=split.target.device)
    feats: dict[str, list[Tensor]] = {}
    fused: list[Tensor] = []
    for start in range(0, n, batch_size):
        batch = split.batch(idx[start:start + batch_size])
        out = method.predict(batch)  # type: ignore[operator]
        for k, v in out.features.items():
            feats.setdefault(k, []).append(v.float().cpu())
        if out.fused is not None:
            fused.append(out.fused.float().reshape(out.fused.shape[0], -1).cpu())
    method.train(was)
    sub = split.subset(idx)
    return {"features": {k: torch.cat(v) for k, v in feats.items()},
            "fused": torch.cat(fused) if fused else None,
            "target": sub.target.cpu(),
            "present": {k: v.cpu().bool() for k, v in sub.present.items()}}


def modality_gap(features: Mapping[str, Tensor],
                 present: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """Centroid distance of L2-normalised features for every pair of modalities.

    Args:
        features: Modality -> ``[N, H]`` features of the same samples.
        present: Modality -> ``[N]`` mask; only samples with both modalities count.

    Returns:
        ``"a|b" -> gap`` for pairs of equal feature size (others are not comparable).

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> modality_gap({"a": x, "b": -x})
        {'a|b': 2.0}
    """
    out = {}
    for a, b in itertools.combinations(list(features), 2):
        xa, xb = features[a], features[b]
        if xa.shape != xb.shape:
            continue
        keep = torch.ones(xa.shape[0], dtype=torch.bool)
        if present is not None:
            keep = present[a].bool() & present[b].bool()
        if not bool(keep.any()):
            continue
        ca = torch.nn.functional.normalize(xa[keep].double(), dim=1).mean(0)
        cb = torch.nn.functional.normalize(xb[keep].double(), dim=1).mean(0)
        out[f"{a}|{b}"] = float((ca - cb).norm())
    return out


@torch.no_grad()
def method_diagnostics(method: Method, split: MultimodalSplit) -> dict[str, float]:
    """The method's own diagnostics on ``split`` (:meth:`Method.diagnostics`), in eval mode."""
    was = method.training
    method.eval()
    try:
        return {k: float(v) for k, v in method.diagnostics(split).items()}
    finally:
        method.train(was)


def dirichlet_diagnostics(method: Method, split: MultimodalSplit) -> dict[str, float]:
    """Dirichlet energies among the method's diagnostics (``{}`` when it reports none)."""
    return {k: v for k, v in method_diagnostics(method, split).items()
            if k.startswith("dirichlet")}


def _branch_votes(method: Method, split: MultimodalSplit, info: TaskInfo
                  ) -> dict[str, Any] | None:
    """:func:`branch_votes` on the samples with every modality (None without read-outs)."""
    fused, unimodal, target = predict_split(method, split)
    if not unimodal:
        return None
    full = torch.ones(len(split), dtype=torch.bool)
    for name in info.modality_names:
        full &= split.present[name].cpu().bool()
    if not bool(full.any()):
        return None
    return branch_votes(fused[full], {k: v[full] for k, v in unimodal.items()},
                        target[full].long())


def protocol_report(
    method: Method,
    split: MultimodalSplit,
    info: TaskInfo,
    protocols: Sequence[str] = PROTOCOLS,
    rates: Sequence[float] = DEFAULT_RATES,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    gap_samples: int = 1000,
) -> dict[str, Any]:
    """Robustness protocols and diagnostics of one trained method on one split.

    Args:
        method: A trained method.
        split: Evaluation split (usually test).
        info: Task description.
        protocols: Any of ``missing`` (every modality subset), ``drop`` (frame drop curve,
            sequence data only), ``noise`` (Gaussian feature noise curve), ``shapley``,
            ``gap``, ``dirichlet``, ``votes``.
        rates: Frame-drop rates.
        levels: Noise levels.
        seed: Seed of the corruptions.
        gap_samples: Samples used for the modality gap.

    Returns:
        ``{"missing": ..., "frame_drop": ..., "noise": ..., "diagnostics": {...}}`` with the
        protocols that apply (``frame_drop`` only with sequence modalities). The
        ``dirichlet`` protocol runs the method's diagnostics hook once: its ``dirichlet*``
        entries under ``diagnostics["dirichlet"]``, the others under
        ``diagnostics["method"]``. ``votes`` (:func:`branch_votes` over the samples that
        have every modality) applies to single-label classification with branch read-outs.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; valid: {PROTOCOLS}")
    out: dict[str, Any] = {}
    diag: dict[str, Any] = {}
    missing = None
    if "missing" in protocols or "shapley" in protocols:
        missing = missing_modality_table(method, split, info)
        if "missing" in protocols:
            out["missing"] = missing
    has_seq = any(split.inputs[n].dim() == 3 for n in info.modality_names)
    if "drop" in protocols and has_seq:
        out["frame_drop"] = frame_drop_curve(method, split, info, rates, seed)
    if "noise" in protocols:
        out["noise"] = noise_curve(method, split, info, levels, seed)
    if "shapley" in protocols and len(info.modality_names) > 1:
        diag["shapley"] = modality_contributions(method, split, info, missing=missing)
    if "gap" in protocols:
        emb = collect_embeddings(method, split, gap_samples)
        diag["modality_gap"] = modality_gap(emb["features"], emb["present"])
    if "dirichlet" in protocols:
        found = method_diagnostics(method, split)
        energy = {k: v for k, v in found.items() if k.startswith("dirichlet")}
        if energy:
            diag["dirichlet"] = energy
        other = {k: v for k, v in found.items() if k not in energy}
        if other:
            diag["method"] = other
    if "votes" in protocols and info.kind == "classification":
        votes = _branch_votes(method, split, info)
        if votes is not None:
            diag["votes"] = votes
    if diag:
        out["diagnostics"] = diag
    return out
