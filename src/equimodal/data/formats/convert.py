"""Conversion of a loaded dataset (e.g. from an MMSA / IEMOCAP pickle) to the generic format.

``equimodal prepare convert`` reads a pickle once, through the allow-list unpickler
(:class:`~equimodal.data.formats.common.SafeUnpickler`), and writes plain arrays that
later loads read without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from equimodal.data.formats.common import SPLITS
from equimodal.data.formats.generic import write_generic


def to_generic(data: Any, out: str | Path) -> Path:
    """Write a loaded dataset in the generic format: a folder, or one ``.npz`` file.

    Used by ``equimodal prepare convert`` to turn a pickle (MMSA, IEMOCAP) into arrays that
    load without unpickling. Features, targets, sequence lengths, presence masks (when some
    sample lacks a modality), the split and ``meta`` (task, classes, modality order, name,
    description) are kept, so :func:`load_generic` gives back the same tensors.

    Args:
        data: A :class:`~equimodal.data.MultimodalData`.
        out: A folder, or a path ending in ``.npz``.

    Returns:
        The folder or file written.
    """
    info = data.info
    names = list(info.modality_names)
    parts = {s: getattr(data, s) for s in SPLITS}

    def cat(get: Any) -> np.ndarray:
        return np.concatenate([np.asarray(get(sp).detach().cpu().numpy()) for sp in
                               parts.values()])

    inputs = {m: cat(lambda sp, m=m: sp.inputs[m]) for m in names}
    labels = cat(lambda sp: sp.target)
    split = np.concatenate([np.full(len(sp), s, dtype="<U5") for s, sp in parts.items()])
    lengths = {m: cat(lambda sp, m=m: sp.lengths[m]) for m in names
               if all(m in (sp.lengths or {}) for sp in parts.values())}
    present = {m: cat(lambda sp, m=m: sp.present[m]).astype(bool) for m in names
               if all(m in (sp.present or {}) for sp in parts.values())}
    present = {m: v for m, v in present.items() if not v.all()}
    meta: dict[str, Any] = {"task": info.kind, "modalities": names, "name": info.name,
                            "description": getattr(data, "description", "")}
    if info.kind == "classification":
        meta["num_classes"] = int(info.num_outputs)
        labels = labels.astype(np.int64)
    if info.class_names is not None:
        meta["class_names"] = list(info.class_names)
    o = Path(out)
    if o.suffix != ".npz":
        return write_generic(o, inputs, labels, split, lengths, present, meta=meta)
    arrays: dict[str, Any] = {f"x_{m}": np.ascontiguousarray(x, dtype=np.float32)
                              for m, x in inputs.items()}
    arrays.update({f"lengths_{m}": v.astype(np.int64) for m, v in lengths.items()})
    arrays.update({f"present_{m}": v for m, v in present.items()})
    arrays.update(y=labels, split=split, meta=np.array(json.dumps(meta)))
    o.parent.mkdir(parents=True, exist_ok=True)
    tmp = o.with_name(f".{o.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(o)
    return o
