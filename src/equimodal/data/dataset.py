"""In-memory multimodal splits and a vectorised batch loader.

Data is kept as tensors (on the training device when it fits), so a mini-batch is a few
``index_select`` calls: no per-sample Python work in the hot loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from equimodal.types import Batch, DataError, ModalitySpec, TaskInfo, TaskKind

# DataError is defined in equimodal.types (the bottom layer) and imported from here.


@runtime_checkable
class MultimodalDataset(Protocol):
    """What the engine needs from a split: tensors per modality plus targets."""

    inputs: dict[str, Tensor]
    target: Tensor
    present: dict[str, Tensor]
    lengths: dict[str, Tensor]

    def __len__(self) -> int: ...


@dataclass
class MultimodalSplit:
    """One split (train/valid/test) held as tensors.

    Attributes:
        inputs: Modality -> ``[N, D]`` or ``[N, T, D]`` float tensor.
        target: ``[N]`` long / float or ``[N, C]`` float.
        present: Modality -> ``[N]`` bool.
        lengths: Sequence modality -> ``[N]`` long.
    """

    inputs: dict[str, Tensor]
    target: Tensor
    present: dict[str, Tensor]
    lengths: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def to(self, device: torch.device | str) -> MultimodalSplit:
        """Copy every tensor to ``device``."""
        return MultimodalSplit(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            target=self.target.to(device),
            present={k: v.to(device) for k, v in self.present.items()},
            lengths={k: v.to(device) for k, v in self.lengths.items()},
        )

    def subset(self, index: Tensor) -> MultimodalSplit:
        """Rows ``index`` of every tensor."""
        return MultimodalSplit(
            inputs={k: v[index] for k, v in self.inputs.items()},
            target=self.target[index],
            present={k: v[index] for k, v in self.present.items()},
            lengths={k: v[index] for k, v in self.lengths.items()},
        )

    def batch(self, index: Tensor) -> Batch:
        """Gather rows ``index`` (a tensor on the split's device) into a :class:`Batch`."""
        return Batch(
            inputs={k: v.index_select(0, index) for k, v in self.inputs.items()},
            target=self.target.index_select(0, index),
            present={k: v.index_select(0, index) for k, v in self.present.items()},
            lengths={k: v.index_select(0, index) for k, v in self.lengths.items()},
            index=index,
        )

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows in order (no shuffling; the last may be smaller).

        The one in-order iterator: :meth:`StepContext.iter_train
        <equimodal.engine.context.StepContext.iter_train>` and methods that need full passes
        (probes, Lipschitz or contribution estimates) use it.
        """
        idx = torch.arange(len(self), device=self.target.device)
        for start in range(0, len(self), batch_size):
            yield self.batch(idx[start : start + batch_size])

    def full_batch(self) -> Batch:
        """The whole split as one batch."""
        idx = torch.arange(len(self), device=self.target.device)
        return self.batch(idx)


@dataclass
class MultimodalData:
    """A dataset: task description plus train / valid / test splits.

    Attributes:
        info: Task kind, outputs and modality specs.
        train: Training split.
        valid: Validation split (model selection only).
        test: Test split (touched once, at the end).
        description: One paragraph: source, preprocessing, license.
    """

    info: TaskInfo
    train: MultimodalSplit
    valid: MultimodalSplit
    test: MultimodalSplit
    description: str = ""

    def split(self, name: str) -> MultimodalSplit:
        """Return split ``name`` (train, valid or test)."""
        if name not in ("train", "valid", "test"):
            raise KeyError(f"unknown split {name!r}; use train, valid or test")
        split: MultimodalSplit = getattr(self, name)
        return split

    def to(self, device: torch.device | str) -> MultimodalData:
        """Copy all splits to ``device``."""
        return MultimodalData(
            self.info, self.train.to(device), self.valid.to(device), self.test.to(device),
            self.description,
        )


class BatchLoader:
    """Iterates mini-batches of a split with a seeded permutation (vectorised gather).

    Args:
        split: The split to iterate.
        batch_size: Samples per batch.
        shuffle: Draw a new permutation each epoch.
        drop_last: Drop a final incomplete batch (avoids batch-statistics noise).
        generator: Seeded CPU generator for the permutation.
    """

    def __init__(
        self,
        split: MultimodalSplit,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def __len__(self) -> int:
        n = len(self.split)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        device = self.split.target.device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(device)
        else:
            order = torch.arange(n, device=device)
        for b in range(len(self)):
            yield self.split.batch(order[b * self.batch_size : (b + 1) * self.batch_size])


def _as_tensor(x: object, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def make_split(
    inputs: Mapping[str, object],
    target: object,
    task: TaskKind,
    num_outputs: int,
    lengths: Mapping[str, object] | None = None,
    present: Mapping[str, object] | None = None,
    source: str = "data",
    split: str = "train",
) -> MultimodalSplit:
    """Validate arrays and build a :class:`MultimodalSplit`.

    Args:
        inputs: Modality -> array ``[N, D]`` or ``[N, T, D]``.
        target: Labels ``[N]`` (class ids or scores) or ``[N, C]`` (multilabel 0/1).
        task: Task kind.
        num_outputs: Number of classes / labels (1 for regression).
        lengths: Optional sequence lengths per modality ``[N]`` (defaults to full length).
        present: Optional presence masks per modality ``[N]`` (defaults to all present).
        source: File or dataset name used in error messages.
        split: Split name used in error messages.

    Raises:
        DataError: on shape mismatches, non-finite features or labels out of range; the
            message names ``source``, ``split`` and the field.
    """
    where = f"{source} [{split}]"
    if not inputs:
        raise DataError(f"{where}: no modalities given")
    tensors: dict[str, Tensor] = {}
    for name, arr in inputs.items():
        t = _as_tensor(arr, torch.float32)
        if t.dim() not in (2, 3):
            raise DataError(
                f"{where}: modality {name!r} must be [N, D] or [N, T, D], "
                f"got shape {tuple(t.shape)}"
            )
        tensors[name] = t
    counts = {k: int(v.shape[0]) for k, v in tensors.items()}
    kind_dtype = torch.long if task == "classification" else torch.float32
    y = _as_tensor(target, kind_dtype)
    counts["target"] = int(y.shape[0]) if y.dim() > 0 else -1
    if len(set(counts.values())) != 1:
        raise DataError(f"{where}: sample counts differ across fields: {counts}")
    n = counts["target"]
    pres: dict[str, Tensor] = {}
    for name, t in tensors.items():
        p = _as_tensor(present[name], torch.bool) if present and name in present else None
        pres[name] = p if p is not None else torch.ones(n, dtype=torch.bool)
        if pres[name].shape != (n,):
            raise DataError(f"{where}: present[{name!r}] must have shape ({n},)")
        bad = ~torch.isfinite(t).reshape(n, -1).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise DataError(
                f"{where}: modality {name!r} has NaN/inf features in {int(bad.sum())} sample(s), "
                f"first rows {rows}"
            )
        # Missing modalities are zero-filled so that no stale values leak into models.
        tensors[name] = t * pres[name].reshape(-1, *([1] * (t.dim() - 1)))
    lens: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if t.dim() == 3:
            given = lengths.get(name) if lengths else None
            lt = _as_tensor(given, torch.long) if given is not None else None
            if lt is None:
                lt = torch.full((n,), t.shape[1], dtype=torch.long)
            if lt.shape != (n,) or bool((lt < 0).any()) or bool((lt > t.shape[1]).any()):
                raise DataError(
                    f"{where}: lengths[{name!r}] must be ({n},) with values in [0, {t.shape[1]}]"
                )
            lens[name] = lt
    _check_target(y, task, num_outputs, where)
    return MultimodalSplit(tensors, y, pres, lens)


def _check_target(y: Tensor, task: TaskKind, num_outputs: int, where: str) -> None:
    if task == "classification":
        if y.dim() != 1:
            raise DataError(f"{where}: classification target must be [N], got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_outputs):
            bad = sorted({int(v) for v in y[(y < 0) | (y >= num_outputs)][:5].tolist()})
            raise DataError(
                f"{where}: target labels out of range [0, {num_outputs - 1}]: e.g. {bad}"
            )
    elif task == "regression":
        if y.dim() != 1:
            raise DataError(f"{where}: regression target must be [N], got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise DataError(f"{where}: regression target has NaN/inf values")
    else:
        if y.dim() != 2 or y.shape[1] != num_outputs:
            raise DataError(f"{where}: multilabel target must be [N, {num_outputs}]")
        if not bool(((y == 0) | (y == 1)).all()):
            raise DataError(f"{where}: multilabel target must contain only 0/1")


def task_info_from_split(
    split: MultimodalSplit,
    task: TaskKind,
    num_outputs: int,
    name: str,
    class_names: tuple[str, ...] | None = None,
) -> TaskInfo:
    """Derive :class:`TaskInfo` (modality specs) from a split's tensors."""
    mods = {
        k: ModalitySpec(k, int(v.shape[-1]), int(v.shape[1]) if v.dim() == 3 else None)
        for k, v in split.inputs.items()
    }
    return TaskInfo(task, num_outputs, mods, class_names, name)


def build_data(
    name: str,
    task: TaskKind,
    num_outputs: int,
    splits: Mapping[str, MultimodalSplit],
    description: str = "",
    class_names: tuple[str, ...] | None = None,
) -> MultimodalData:
    """Assemble :class:`MultimodalData`, checking that splits agree on modalities and shapes.

    Raises:
        DataError: a missing split, splits disagreeing on modalities or shapes, or a
            classification training split with fewer than 2 distinct labels.
    """
    for s in ("train", "valid", "test"):
        if s not in splits:
            raise DataError(f"{name}: missing split {s!r}")
    ref = splits["train"]
    for s, sp in splits.items():
        if set(sp.inputs) != set(ref.inputs):
            raise DataError(
                f"{name} [{s}]: modalities {sorted(sp.inputs)} differ from train "
                f"{sorted(ref.inputs)}"
            )
        for k, v in sp.inputs.items():
            if v.shape[1:] != ref.inputs[k].shape[1:]:
                raise DataError(
                    f"{name} [{s}]: modality {k!r} shape {tuple(v.shape[1:])} differs from "
                    f"train {tuple(ref.inputs[k].shape[1:])}"
                )
    if task == "classification" and ref.target.numel():
        present = int(torch.unique(ref.target).numel())
        if present < 2:
            raise DataError(
                f"{name} [train]: classification needs at least 2 classes in the training "
                f"split, found {present} (label {int(ref.target[0])})"
            )
    info = task_info_from_split(ref, task, num_outputs, name, class_names)
    return MultimodalData(info, splits["train"], splits["valid"], splits["test"], description)
