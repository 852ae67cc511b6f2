"""Synthetic multimodal data with controllable modality imbalance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from equimodal.data.dataset import MultimodalData, build_data, make_split
from equimodal.registry import register_dataset
from equimodal.types import TaskKind


def _as_list(value: float | int | str | Sequence[float], n: int, cast: type) -> list:
    if isinstance(value, str):
        value = [cast(v) for v in value.split(",")]
    if isinstance(value, (int, float)):
        return [cast(value)] * n
    vals = [cast(v) for v in value]
    if len(vals) != n:
        raise ValueError(f"expected {n} values (one per modality), got {vals}")
    return vals


@register_dataset("synthetic")
def synthetic(
    modalities: str | Sequence[str] = ("a", "b"),
    strengths: float | str | Sequence[float] = (1.0, 0.35),
    task: TaskKind = "classification",
    n_classes: int = 4,
    dim: int | str | Sequence[int] = 16,
    latent: int = 8,
    shared: float = 0.5,
    noise: float = 1.0,
    missing: float = 0.0,
    seq_len: int = 0,
    n_train: int = 600,
    n_valid: int = 200,
    n_test: int = 200,
    seed: int = 0,
) -> MultimodalData:
    """Synthetic data with per-modality signal strength (modality imbalance), shared vs
    modality-specific information, noise and missingness; vectors or sequences.

    Generative model: a class (or score) drives a shared latent code ``u0`` and one specific
    code ``u_m`` per modality. Modality m observes
    ``x_m = s_m * W_m [sqrt(shared) * u0 ; sqrt(1 - shared) * u_m] + noise * eps``
    with a fixed random projection ``W_m`` and strength ``s_m``; the label depends on both the
    shared and every specific code, so each modality carries information the others lack.
    A weak modality (small ``s_m``) is what lazy fusion ignores.

    Args:
        modalities: Names (list or comma-separated string).
        strengths: Signal strength per modality (one value or one per modality).
        task: ``classification``, ``regression`` (score in [-3, 3]) or ``multilabel``.
        n_classes: Classes or labels (ignored for regression).
        dim: Feature size per modality.
        latent: Size of each latent code.
        shared: Fraction of the label signal shared across modalities, in [0, 1].
        noise: Standard deviation of isotropic feature noise.
        missing: Probability that a modality is missing for a sample (at least one stays).
        seq_len: ``0`` for vector features, else sequences of up to this many frames with
            random lengths in ``[seq_len // 2, seq_len]``.
        n_train: Training samples. n_valid: Validation samples. n_test: Test samples.
        seed: Generator seed (the same seed gives the same data).
    """
    names = [m.strip() for m in modalities.split(",")] if isinstance(modalities, str) else list(
        modalities
    )
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"modality names must be unique and non-empty: {names}")
    if not 0.0 <= shared <= 1.0:
        raise ValueError(f"shared must be in [0, 1], got {shared}")
    m = len(names)
    s = _as_list(strengths, m, float)
    dims = _as_list(dim, m, int)
    g = torch.Generator().manual_seed(seed)
    k = n_classes if task != "regression" else 1
    # Class codes: shared means and modality-specific means per class.
    mu_shared = torch.randn(k, latent, generator=g) * 1.5
    mu_spec = torch.randn(m, k, latent, generator=g) * 1.5
    proj = [torch.randn(2 * latent, d, generator=g) / math.sqrt(2 * latent) for d in dims]
    a, b = math.sqrt(shared), math.sqrt(1.0 - shared)

    def sample(n: int) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], dict[str, Tensor]]:
        if task == "classification":
            y: Tensor = torch.randint(0, k, (n,), generator=g)
            u0 = mu_shared[y] + 0.5 * torch.randn(n, latent, generator=g)
            us = [mu_spec[j][y] + 0.5 * torch.randn(n, latent, generator=g) for j in range(m)]
        elif task == "regression":
            u0 = torch.randn(n, latent, generator=g)
            us = [torch.randn(n, latent, generator=g) for _ in range(m)]
            score = a * u0[:, 0] + b * torch.stack([u[:, 0] for u in us]).mean(0) * math.sqrt(m)
            y = 3.0 * torch.tanh(score / math.sqrt(a * a + b * b + 1e-12) * 0.8)
        else:
            u0 = torch.randn(n, latent, generator=g)
            us = [torch.randn(n, latent, generator=g) for _ in range(m)]
            logits = a * u0[:, :k] + b * torch.stack([u[:, :k] for u in us]).mean(0) * math.sqrt(m)
            y = (logits > 0).float()
        feats: dict[str, Tensor] = {}
        lengths: dict[str, Tensor] = {}
        for j, name in enumerate(names):
            code = torch.cat([a * u0, b * us[j]], dim=1) @ proj[j]
            if seq_len > 0:
                t = torch.arange(seq_len).float()
                phase = torch.rand(n, 1, generator=g) * 2 * math.pi
                envelope = 1.0 + 0.5 * torch.sin(phase + t * 0.7)  # [n, T]
                x = s[j] * code[:, None, :] * envelope[..., None]
                x = x + noise * torch.randn(n, seq_len, dims[j], generator=g)
                lens = torch.randint(max(1, seq_len // 2), seq_len + 1, (n,), generator=g)
                mask = t[None, :] < lens[:, None]
                feats[name] = x * mask[..., None]
                lengths[name] = lens
            else:
                feats[name] = s[j] * code + noise * torch.randn(n, dims[j], generator=g)
        present = {nm: torch.ones(n, dtype=torch.bool) for nm in names}
        if missing > 0 and m > 1:
            drop = torch.rand(n, m, generator=g) < missing
            keep_one = torch.randint(0, m, (n,), generator=g)
            drop[torch.arange(n), keep_one] = False
            present = {nm: ~drop[:, j] for j, nm in enumerate(names)}
        return feats, y, present, lengths

    splits = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        feats, y, present, lengths = sample(n)
        splits[split] = make_split(
            feats, y, task, k if task != "regression" else 1, lengths, present,
            source="synthetic", split=split,
        )
    desc = (
        f"Synthetic {task} data, modalities {names} with strengths {s}, shared={shared}, "
        f"noise={noise}, missing={missing}, seq_len={seq_len}, seed={seed}."
    )
    return build_data("synthetic", task, k, splits, desc)
