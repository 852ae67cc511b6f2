"""Robustness protocols shared by every method: missing modalities, frame drop, feature noise.

Each protocol evaluates a trained method (anything with ``predict(batch)``) on corrupted
copies of a split through :func:`equimodal.engine.evaluate` and returns plain data:
``{"rows": [dict, ...], "average": dict}``, where each row holds the condition and the
metrics, ready for a table writer.

Corruptions are deterministic given ``seed``, and the same uniform draws are reused for
every rate / level, so a higher drop rate removes a superset of the frames a lower one
removes and noise grows linearly with the level.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit
from equimodal.engine.evaluate import evaluate
from equimodal.types import TaskInfo

if TYPE_CHECKING:
    from equimodal.methods.base import Method

#: The frame-drop rates of EBMC's intra-modality missingness protocol (Tab. 5).
DEFAULT_RATES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
#: Gaussian noise levels, in units of each feature's standard deviation.
DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)


def modality_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, by size then in the given order.

    Example:
        >>> modality_subsets(["a", "b"])
        [('a',), ('b',), ('a', 'b')]
    """
    names = list(names)
    return [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def _average(rows: Iterable[dict[str, Any]], skip: set[str]) -> dict[str, float]:
    rows = list(rows)
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(sum(float(r[k]) for r in rows) / len(rows)) for k in keys}


def _valid_frames(split: MultimodalSplit, name: str) -> Tensor:
    """``[N, T]`` bool: frames inside the sample's length, for present samples."""
    x = split.inputs[name]
    n, t = x.shape[0], x.shape[1]
    if name in split.lengths:
        valid = torch.arange(t, device=x.device)[None, :] < split.lengths[name][:, None]
    else:
        valid = torch.ones(n, t, dtype=torch.bool, device=x.device)
    return valid & split.present[name].to(torch.bool)[:, None]


def _targets(split: MultimodalSplit, modalities: Iterable[str] | None) -> list[str]:
    names = list(split.inputs) if modalities is None else list(modalities)
    unknown = [n for n in names if n not in split.inputs]
    if unknown:
        raise KeyError(f"unknown modalities {unknown}; known: {list(split.inputs)}")
    return names


def _with_inputs(split: MultimodalSplit, inputs: dict[str, Tensor]) -> MultimodalSplit:
    return MultimodalSplit(inputs, split.target, split.present, split.lengths)


def missing_modality_table(
    method: Method,
    split: MultimodalSplit,
    info: TaskInfo,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate with every non-empty subset of the modalities present in ``split``.

    Modalities outside a subset are zeroed and flagged absent (the ``{A}``, ``{T}``,
    ``{A,V}`` ... conditions of EBMC Tab. 3).

    Args:
        method: A trained method.
        split: The split to evaluate (usually test).
        info: Task description.
        batch_size: Inference batch size.

    Returns:
        ``{"rows": [...], "average": {...}}``; each row has ``modalities`` (names joined by
        ``+``), ``n_modalities``, ``complete`` and the fused metrics; ``average`` is the mean
        over the incomplete conditions (the paper's "Avg." column).
    """
    names = [n for n in info.modality_names if bool(split.present[n].any())]
    rows = []
    for subset in modality_subsets(names):
        metrics = evaluate(method, split, info, batch_size, modalities=subset)
        rows.append({"modalities": "+".join(subset), "n_modalities": len(subset),
                     "complete": len(subset) == len(names), **metrics})
    skip = {"modalities", "n_modalities", "complete"}
    return {"rows": rows, "average": _average((r for r in rows if not r["complete"]), skip)}


def drop_frames(
    split: MultimodalSplit,
    rate: float,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
) -> tuple[MultimodalSplit, dict[str, float]]:
    """Zero each valid frame of the sequence modalities independently with probability ``rate``.

    Vector modalities are left alone. The draw depends only on ``seed`` and the split's
    shapes (it is made on the CPU), so it is the same on every device.

    Args:
        split: Clean split.
        rate: Drop probability in ``[0, 1]``.
        seed: Seed of the Bernoulli draws.
        modalities: Modalities to corrupt (default: all sequence modalities).

    Returns:
        The corrupted split (a copy) and, per corrupted modality, the fraction of its valid
        frames that was dropped.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    gen = torch.Generator().manual_seed(seed)
    targets = set(_targets(split, modalities))
    inputs = dict(split.inputs)
    dropped: dict[str, float] = {}
    # Draw for every sequence modality in the split's order, so a modality's draws do not
    # depend on which others are corrupted.
    for name, x in split.inputs.items():
        if x.dim() != 3:
            continue
        u = torch.rand(x.shape[0], x.shape[1], generator=gen)
        if name not in targets:
            continue
        valid = _valid_frames(split, name)
        drop = (u.to(x.device) < rate) & valid
        inputs[name] = x * (~drop).unsqueeze(-1).to(x.dtype)
        dropped[name] = float(drop.sum()) / max(int(valid.sum()), 1)
    return _with_inputs(split, inputs), dropped


def frame_drop_curve(
    method: Method,
    split: MultimodalSplit,
    info: TaskInfo,
    rates: Sequence[float] = DEFAULT_RATES,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Intra-modality missingness: evaluate with frames dropped at each rate (EBMC Tab. 5).

    Args:
        method: A trained method.
        split: The split to evaluate.
        info: Task description.
        rates: Drop probabilities (paper: 0, 0.1, ..., 0.9).
        seed: Seed of the drops (the same draws serve every rate).
        modalities: Sequence modalities to corrupt (default: all).
        batch_size: Inference batch size.

    Returns:
        ``{"rows": [...], "average": {...}}``; each row has ``rate``, ``dropped_fraction``
        (measured over all corrupted frames) and the fused metrics; ``average`` is the mean
        over rates, the number the paper reports.

    Raises:
        ValueError: if no targeted modality is a sequence (use :func:`noise_curve`).
    """
    targets = _targets(split, modalities)
    seqs = [n for n in targets if split.inputs[n].dim() == 3]
    if not seqs:
        raise ValueError(
            f"frame_drop_curve needs sequence modalities; {targets} are vectors "
            "(use noise_curve or missing_modality_table)"
        )
    total = sum(int(_valid_frames(split, n).sum()) for n in seqs)
    rows = []
    for rate in rates:
        corrupted, frac = drop_frames(split, rate, seed, seqs)
        count = sum(frac[n] * int(_valid_frames(split, n).sum()) for n in seqs)
        metrics = evaluate(method, corrupted, info, batch_size, unimodal=False)
        rows.append({"rate": float(rate), "dropped_fraction": count / max(total, 1), **metrics})
    return {"rows": rows, "average": _average(rows, {"rate", "dropped_fraction"})}


def add_noise(
    split: MultimodalSplit,
    level: float,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
    relative: bool = True,
) -> MultimodalSplit:
    """Add Gaussian noise ``level * s_d * N(0, 1)`` to valid frames of present samples.

    Args:
        split: Clean split.
        level: Noise level (``0`` returns the clean features).
        seed: Seed of the draws (the same draws serve every level).
        modalities: Modalities to corrupt (default: all).
        relative: ``s_d`` = each feature's standard deviation over the split's valid
            entries; otherwise ``s_d = 1``.

    Returns:
        A corrupted copy (padding and absent modalities stay zero).
    """
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    gen = torch.Generator().manual_seed(seed)
    targets = set(_targets(split, modalities))
    inputs = dict(split.inputs)
    for name, x in split.inputs.items():
        eps = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
        if name not in targets:
            continue
        if x.dim() == 3:
            valid = _valid_frames(split, name).unsqueeze(-1)
        else:
            valid = split.present[name].to(torch.bool).unsqueeze(-1)
        scale = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype)
        if relative:
            flat = x[valid.expand_as(x)].reshape(-1, x.shape[-1])
            if flat.shape[0] > 1:
                scale = flat.std(0, unbiased=False)
        inputs[name] = x + level * scale * eps * valid.to(x.dtype)
    return _with_inputs(split, inputs)


def noise_curve(
    method: Method,
    split: MultimodalSplit,
    info: TaskInfo,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    modalities: Iterable[str] | None = None,
    relative: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate with Gaussian feature noise at each level.

    Args:
        method: A trained method.
        split: The split to evaluate.
        info: Task description.
        levels: Noise levels (in feature standard deviations when ``relative``).
        seed: Seed of the noise.
        modalities: Modalities to corrupt (default: all).
        relative: Scale noise by each feature's standard deviation.
        batch_size: Inference batch size.

    Returns:
        ``{"rows": [...], "average": {...}}``; each row has ``level`` and the fused metrics;
        ``average`` is the mean over levels.
    """
    rows = []
    for level in levels:
        corrupted = add_noise(split, level, seed, modalities, relative)
        metrics = evaluate(method, corrupted, info, batch_size, unimodal=False)
        rows.append({"level": float(level), **metrics})
    return {"rows": rows, "average": _average(rows, {"level"})}

