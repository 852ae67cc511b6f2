"""Writers of tiny files in each supported format, for tests/test_formats.py."""

from __future__ import annotations

import pickle
import wave
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_CYCLE = np.array(["train", "train", "valid", "test"])


def generic_arrays(n: int = 24, seed: int = 0) -> dict[str, Any]:
    """A vector modality ``a`` [n, 5], a sequence modality ``b`` [n, 6, 3], 3 classes."""
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=(n, 5)).astype(np.float32),
        "b": rng.normal(size=(n, 6, 3)).astype(np.float32),
        "b_len": rng.integers(1, 7, size=n),
        "labels": np.arange(n) % 3,
        "split": np.resize(SPLIT_CYCLE, n),
    }


def write_generic_folder(root: Path, n: int = 24, meta: dict[str, Any] | None = None,
                         **override: np.ndarray) -> Path:
    """A generic-format folder; ``override`` replaces arrays (a, b, b_len, labels, split)."""
    arr = {**generic_arrays(n), **override}
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "a.npy", arr["a"])
    np.save(root / "b.npy", arr["b"])
    np.save(root / "b.lengths.npy", arr["b_len"])
    np.save(root / "labels.npy", arr["labels"])
    if arr["split"] is not None:
        np.save(root / "split.npy", arr["split"])
    if meta is not None:
        import json

        (root / "meta.json").write_text(json.dumps(meta))
    return root


def mmsa_split(n: int, seed: int, aligned: bool = True, sims: bool = False) -> dict[str, Any]:
    """One MMSA split dict with text (GloVe-like), text_bert ids, audio, vision, labels."""
    rng = np.random.default_rng(seed)
    t_text = 8
    t_audio, t_vision = (8, 8) if aligned else (12, 10)
    mask = np.zeros((n, t_text), dtype=np.float32)
    text_len = rng.integers(2, t_text + 1, size=n)
    for i, k in enumerate(text_len):
        mask[i, :k] = 1
    ids = rng.integers(100, 999, size=(n, t_text)) * mask
    scale = 1.0 if sims else 3.0
    d: dict[str, Any] = {
        "text": rng.normal(size=(n, t_text, 7)).astype(np.float32),
        "text_bert": np.stack([ids, mask, np.zeros_like(mask)], axis=1),
        "audio": rng.normal(size=(n, t_audio, 5)).astype(np.float32),
        "vision": rng.normal(size=(n, t_vision, 4)).astype(np.float32),
        "regression_labels": np.round(rng.uniform(-scale, scale, size=n), 1).astype(np.float32),
        "id": [f"vid{seed}_{i}" for i in range(n)],
        "raw_text": ["some words"] * n,
    }
    if not aligned:
        d["audio_lengths"] = list(rng.integers(1, t_audio + 1, size=n))
        d["vision_lengths"] = list(rng.integers(1, t_vision + 1, size=n))
    if sims:
        for m in "TAV":
            d[f"regression_labels_{m}"] = np.round(rng.uniform(-1, 1, size=n), 1)
    return d


def write_pickle(path: Path, obj: Any) -> Path:
    """Pickle ``obj`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f)
    return path


def write_mmsa(path: Path, aligned: bool = True, sims: bool = False,
               sizes: tuple[int, int, int] = (10, 5, 5)) -> Path:
    """An MMSA pickle with train/valid/test."""
    data = {s: mmsa_split(n, i, aligned, sims)
            for i, (s, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True))}
    return write_pickle(path, data)


def iemocap_split(n: int, seed: int) -> dict[str, Any]:
    """One MulT IEMOCAP split: labels [n, 4, 2] one-hot per emotion, one emotion each."""
    rng = np.random.default_rng(seed)
    emo = np.arange(n) % 4
    labels = np.zeros((n, 4, 2), dtype=np.float32)
    labels[:, :, 0] = 1
    labels[np.arange(n), emo, 0] = 0
    labels[np.arange(n), emo, 1] = 1
    return {
        "text": rng.normal(size=(n, 6, 7)).astype(np.float32),
        "audio": rng.normal(size=(n, 6, 5)).astype(np.float32),
        "vision": rng.normal(size=(n, 6, 3)).astype(np.float32),
        "labels": labels,
    }


def write_wav(path: Path, freq: float, seconds: float = 0.4, rate: int = 8000) -> Path:
    """A 16-bit mono sine WAV written with the ``wave`` module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


def write_jpeg(path: Path, color: tuple[int, int, int], size: int = 12) -> Path:
    """A flat-colour JPEG written with PIL."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="JPEG")
    return path


CREMAD_EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def make_cremad(root: Path, actors: tuple[str, ...] = ("1001", "1002", "1003", "1004"),
                frames: int = 3) -> list[str]:
    """A CREMA-D tree: one clip per actor and emotion; the first actor's NEU clip is short
    and has a single frame."""
    clips = []
    for a in actors:
        for k, emo in enumerate(CREMAD_EMOTIONS):
            clip = f"{a}_DFA_{emo}_XX"
            seconds = 0.2 if a == actors[0] and k == 0 else 0.4
            write_wav(root / "AudioWAV" / f"{clip}.wav", 300 + 150 * k, seconds)
            n = 1 if (a == actors[0] and k == 0) else frames
            for j in range(n):
                write_jpeg(root / "frames" / clip / f"{j:03d}.jpg", (40 * k, 20 * j, 100))
            clips.append(clip)
    return sorted(clips)


def make_mvsa(root: Path, n: int = 12) -> dict[str, str]:
    """An MVSA-Multiple-style folder; returns the expected label per kept id."""
    labs = ("negative", "neutral", "positive")
    lines = ["ID\ttext,image\ttext,image\ttext,image"]
    expected = {}
    for i in range(1, n + 1):
        t, im = labs[i % 3], labs[(i // 3) % 3]
        lines.append(f"{i}\t{t},{im}\t{t},{im}\t{labs[(i + 1) % 3]},{im}")
        words = f"post {labs[i % 3]} word{i % 4}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "data" / f"{i}.txt").write_text(words)
        write_jpeg(root / "data" / f"{i}.jpg", (20 * (i % 3), 80, 160))
        if {t, im} != {"negative", "positive"}:
            expected[str(i)] = t if t == im else (im if t == "neutral" else t)
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return expected


def make_food(root: Path, per_class: int = 4) -> None:
    """A UPMC-Food-101-style folder: headerless train/test CSVs, images/<split>/<label>/."""
    classes = ("apple_pie", "pizza", "sushi")
    for split, count in (("train", per_class), ("test", 2)):
        rows = []
        for c, label in enumerate(classes):
            for j in range(count):
                name = f"{label}_{split}_{j}.jpg"
                write_jpeg(root / "images" / split / label / name, (60 * c, 30, 90))
                rows.append(f'{name},"a photo of {label.replace("_", " ")} number {j}",{label}')
        (root / "texts").mkdir(parents=True, exist_ok=True)
        (root / "texts" / f"{split}_titles.csv").write_text("\n".join(rows) + "\n")
