"""Core data containers shared by data, models, methods and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

TaskKind = Literal["classification", "regression", "multilabel"]


class DataError(ValueError):
    """Bad input data; the message names the source, split and field.

    Imported as ``equimodal.data.DataError`` / ``equimodal.data.dataset.DataError``; it is
    defined here, in the bottom layer, so that :func:`equimodal.registry.load_dataset` can
    tell it apart without importing :mod:`equimodal.data` (see "Layering" in
    ``docs/architecture.md``).
    """


@dataclass(frozen=True)
class ModalitySpec:
    """Shape of one modality.

    Attributes:
        name: Modality name, taken from the data (never hard-coded).
        dim: Feature size D of a vector ``(D,)`` or of each frame of a sequence ``(T, D)``.
        seq_len: Maximum sequence length T, or ``None`` for vector modalities.
    """

    name: str
    dim: int
    seq_len: int | None = None

    @property
    def is_sequence(self) -> bool:
        """Whether samples of this modality are ``(T, D)`` sequences."""
        return self.seq_len is not None


@dataclass(frozen=True)
class TaskInfo:
    """What a dataset asks a model to do.

    Attributes:
        kind: ``classification`` (integer labels), ``regression`` (float score) or
            ``multilabel`` (0/1 float matrix).
        num_outputs: Classes (classification), labels (multilabel) or 1 (regression).
        modalities: Ordered mapping from modality name to its spec.
        class_names: Optional names of the classes / labels.
        name: Dataset name, for reports.
    """

    kind: TaskKind
    num_outputs: int
    modalities: dict[str, ModalitySpec]
    class_names: tuple[str, ...] | None = None
    name: str = "dataset"

    @property
    def modality_names(self) -> list[str]:
        """Modality names in the data's order."""
        return list(self.modalities)

    def check_modality(self, name: str) -> None:
        """Raise ``KeyError`` with the known names if ``name`` is not a modality here."""
        if name not in self.modalities:
            raise KeyError(
                f"unknown modality {name!r} for dataset {self.name!r}; known: {self.modality_names}"
            )


@dataclass
class Batch:
    """A mini-batch of multimodal samples.

    Attributes:
        inputs: Per-modality tensors ``[B, D]`` or ``[B, T, D]``. A missing modality of a
            sample is zero-filled and flagged in ``present``.
        target: ``[B]`` long (classification), ``[B]`` float (regression) or ``[B, C]`` float
            (multilabel).
        present: Per-modality boolean masks ``[B]``: whether the sample has that modality.
        lengths: Per-modality valid lengths ``[B]`` for sequence modalities.
        index: ``[B]`` positions of the samples in their split.
    """

    inputs: dict[str, Tensor]
    target: Tensor
    present: dict[str, Tensor]
    lengths: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.target.shape[0])

    @property
    def modalities(self) -> list[str]:
        """Modality names present as keys (presence per sample is in ``present``)."""
        return list(self.inputs)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy on ``device``."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        return Batch(
            inputs=move(self.inputs),
            target=self.target.to(device, non_blocking=non_blocking),
            present=move(self.present),
            lengths=move(self.lengths),
            index=None if self.index is None else self.index.to(device),
        )

    def with_modalities(self, keep: set[str] | list[str] | tuple[str, ...]) -> Batch:
        """Return a copy where every modality outside ``keep`` is missing (zeros + mask)."""
        keep = set(keep)
        inputs = {k: (v if k in keep else torch.zeros_like(v)) for k, v in self.inputs.items()}
        present = {
            k: (v if k in keep else torch.zeros_like(v)) for k, v in self.present.items()
        }
        return replace(self, inputs=inputs, present=present)


@dataclass
class ModelOutput:
    """What a multimodal model returns; it keeps nothing on ``self``.

    Attributes:
        logits: Fused predictions ``[B, C]`` (regression: ``[B, 1]``).
        features: Per-modality encoder features ``[B, H]``.
        unimodal_logits: Per-modality predictions where the fusion allows it.
        fused: Fused representation ``[B, F]`` when the fusion has one.
        extras: Method-specific tensors (e.g. disentangled parts) for its losses.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    unimodal_logits: dict[str, Tensor] = field(default_factory=dict)
    fused: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
