"""Cross-modal Gaussian-kernel distances (InfoBridge, Fig. 3).

InfoBridge reports the average Gaussian-kernel distance between cross-modal features,
overall and within / between categories, as the CMI weight alpha grows: alignment shows as
a smaller distance, and discriminability as within-class distances shrinking more than
between-class ones. The kernel distance of two feature vectors is their distance in the
RKHS of ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``:

    d_k(x, y) = ||phi(x) - phi(y)|| = sqrt(k(x, x) + k(y, y) - 2 k(x, y)) = sqrt(2 - 2 k(x, y))

in ``[0, sqrt(2)]``. It is averaged over pairs ``(z^a_i, z^b_j)`` of two modalities' features:
``paired`` (``i = j``, the same sample), ``within_class`` (``i != j``, same label),
``between_class`` (different labels), ``overall`` (every ``i, j``) and per class.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from equimodal.data.dataset import MultimodalSplit


def kernel_distance_matrix(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """``[N, K]`` Gaussian-kernel (RKHS) distances ``sqrt(2 - 2 k(x_i, y_j))``."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    d2 = torch.cdist(x.float(), y.float()).pow(2)
    k = torch.exp(-d2 / (2.0 * bandwidth * bandwidth))
    return (2.0 - 2.0 * k).clamp_min(0.0).sqrt()


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """Median heuristic: the median cross-modal Euclidean distance (``> 0``)."""
    med = float(torch.cdist(x.float(), y.float()).median())
    return med if med > 0 else 1.0


def _pair_distances(x: Tensor, y: Tensor, labels: Tensor, bandwidth: float | None
                    ) -> dict[str, float]:
    bw = median_bandwidth(x, y) if bandwidth is None else bandwidth
    dist = kernel_distance_matrix(x, y, bw)
    n = x.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)

    def mean(mask: Tensor) -> float:
        return float(dist[mask].mean()) if bool(mask.any()) else float("nan")

    out = {
        "overall": float(dist.mean()),
        "paired": float(dist.diagonal().mean()),
        "within_class": mean(same & ~eye),
        "between_class": mean(~same),
        "bandwidth": bw,
    }
    for c in labels.unique().tolist():
        in_c = labels == c
        out[f"class/{c}"] = mean(in_c[:, None] & in_c[None, :] & ~eye)
    return out


def cross_modal_kernel_distances(
    features: Mapping[str, Tensor],
    labels: Tensor,
    bandwidth: float | None = 1.0,
    normalize: bool = True,
    present: Mapping[str, Tensor] | None = None,
    max_samples: int | None = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Average cross-modal Gaussian-kernel distances (Fig. 3), averaged over modality pairs.

    Args:
        features: Modality -> ``[N, H]`` features (same ``H`` for every modality; rows
            aligned by sample).
        labels: ``[N]`` class labels.
        bandwidth: Kernel width ``sigma``; ``None`` uses the median heuristic per pair
            (which rescales with the features, so keep it fixed to compare models).
        normalize: L2-normalise features first, so distances compare directions and a
            model cannot look "aligned" by shrinking its features.
        present: Optional modality -> ``[N]`` bool; a pair uses rows with both present.
        max_samples: Subsample to at most this many rows (``N^2`` memory); ``None``: all.
        seed: Seed of the subsampling.

    Returns:
        ``overall``, ``paired``, ``within_class``, ``between_class``, ``class/<c>`` (mean
        over pairs) and, with more than two modalities, the same keys per pair as
        ``<a>-<b>/<key>``.

    Example:
        >>> import torch
        >>> z = torch.eye(4)
        >>> d = cross_modal_kernel_distances({"a": z, "b": z}, torch.tensor([0, 0, 1, 1]))
        >>> d["paired"]
        0.0
    """
    names = list(features)
    if len(names) < 2:
        raise ValueError("need at least two modalities")
    dims = {n: features[n].shape[1] for n in names}
    if len(set(dims.values())) != 1:
        raise ValueError(f"cross-modal distances need one feature size, got {dims}")
    labels = labels.reshape(-1).cpu()
    per_pair: dict[str, dict[str, float]] = {}
    for a, b in itertools.combinations(names, 2):
        keep = torch.ones(labels.shape[0], dtype=torch.bool)
        if present is not None:
            keep = present[a].cpu().bool() & present[b].cpu().bool()
        rows = keep.nonzero().flatten()
        if max_samples is not None and rows.numel() > max_samples:
            g = torch.Generator().manual_seed(seed)
            rows = rows[torch.randperm(rows.numel(), generator=g)[:max_samples]]
        x, y = features[a].detach().cpu()[rows], features[b].detach().cpu()[rows]
        if normalize:
            x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)
        per_pair[f"{a}-{b}"] = _pair_distances(x, y, labels[rows], bandwidth)
    keys = sorted({k for d in per_pair.values() for k in d})
    out = {}
    for k in keys:
        vals = torch.tensor([d[k] for d in per_pair.values() if k in d])
        vals = vals[~vals.isnan()]
        out[k] = float(vals.mean()) if vals.numel() else float("nan")
    if len(per_pair) > 1:
        out.update({f"{p}/{k}": v for p, d in per_pair.items() for k, v in d.items()})
    return out


@torch.no_grad()
def split_kernel_distances(
    method: torch.nn.Module, split: MultimodalSplit, batch_size: int = 256, **kwargs: object
) -> dict[str, float]:
    """:func:`cross_modal_kernel_distances` of a method's encoder features over a split.

    Uses ``method.model.encode`` (the generic model) in eval mode; ``kwargs`` go to
    :func:`cross_modal_kernel_distances`.
    """
    model: Any = getattr(method, "model", method)
    was = model.training
    model.eval()
    feats: dict[str, list[Tensor]] = {}
    idx = torch.arange(len(split), device=split.target.device)
    for start in range(0, len(split), batch_size):
        batch = split.batch(idx[start : start + batch_size])
        for name, f in model.encode(batch).items():
            feats.setdefault(name, []).append(f.float().cpu())
    model.train(was)
    features = {n: torch.cat(v) for n, v in feats.items()}
    present = {n: split.present[n].cpu() for n in features}
    return cross_modal_kernel_distances(features, split.target, present=present,
                                        **kwargs)  # type: ignore[arg-type]
