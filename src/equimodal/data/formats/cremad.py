"""CREMA-D from its raw layout: ``AudioWAV/<clip>.wav`` plus ``<frames_dir>/<clip>/*.jpg``.

The emotion comes from the clip name ``<actor>_<sentence>_<emotion>_<level>`` (e.g.
``1001_DFA_ANG_XX`` -> ``ANG``); six classes in the order used by OGM-GE and later
balanced-learning papers: NEU, HAP, SAD, FEA, DIS, ANG. :func:`prepare_cremad` turns the
clips into a generic-format folder: ``audio`` = log-mel spectrogram ``[T, n_mels]`` of the
first ``max_seconds`` (zero-padded, with lengths) and ``visual`` = ``n_frames`` frames
sampled uniformly, resized and normalised, ``[n_frames, 3 * size * size]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from equimodal.data.dataset import DataError
from equimodal.data.formats import cache
from equimodal.data.formats.audio import clip_log_mel, read_wav
from equimodal.data.formats.common import LoadedData, normalize_split_values, random_split
from equimodal.data.formats.generic import load_generic, write_generic
from equimodal.data.formats.vision import frame_stack, list_images
from equimodal.paths import cache_dir

log = logging.getLogger(__name__)

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
_CLIP = re.compile(r"^(\d+)_([A-Za-z0-9]+)_([A-Za-z]+)_([A-Za-z0-9]+)$")


def parse_clip(name: str) -> tuple[str, int]:
    """``(actor, emotion id)`` from a clip name such as ``1001_DFA_ANG_XX``.

    Raises:
        DataError: when the name does not follow the pattern or the emotion is unknown.
    """
    m = _CLIP.match(name)
    if m is None:
        raise DataError(f"clip name {name!r} is not <actor>_<sentence>_<emotion>_<level>")
    emo = m.group(3).upper()
    if emo not in EMOTIONS:
        raise DataError(f"clip {name!r}: unknown emotion label {emo!r} (known {list(EMOTIONS)})")
    return m.group(1), EMOTIONS.index(emo)


def _read_list(path: Path, with_split: bool) -> dict[str, str]:
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False,
                         header=0 if with_split else None)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from err
    if not with_split:
        return {Path(c.strip()).stem: "train" for c in df.iloc[:, 0].tolist() if c.strip()}
    if "split" not in df.columns:
        raise DataError(f"{path}: missing column 'split' (columns {list(df.columns)})")
    col = "clip" if "clip" in df.columns else df.columns[0]
    values = normalize_split_values(df["split"].to_numpy(), f"{path}: field 'split'")
    return {Path(c.strip()).stem: v for c, v in zip(df[col].tolist(), values.tolist(),
                                                     strict=True)}


def assign_splits(
    clips: list[str],
    actors: list[str],
    split_csv: str | Path | None,
    train_list: str | Path | None,
    test_list: str | Path | None,
    seed: int,
    valid_frac: float,
    test_frac: float,
    by_speaker: bool,
) -> np.ndarray:
    """Split per clip: from ``split_csv`` (columns ``clip, split``), from OGM-GE-style
    ``train_list`` / ``test_list`` (first column = clip; validation drawn from train with
    ``seed``), or a seeded random split (whole speakers with ``by_speaker``).

    Clips the lists do not mention get ``""`` (reported by the caller).
    """
    if split_csv is not None:
        table = _read_list(Path(split_csv), True)
        return np.array([table.get(c, "") for c in clips], dtype="<U5")
    if (train_list is None) != (test_list is None):
        raise DataError("give both train_list and test_list, or neither")
    if train_list is not None and test_list is not None:
        train = _read_list(Path(train_list), False)
        test = _read_list(Path(test_list), False)
        both = sorted(set(train) & set(test))
        if both:
            raise DataError(f"{test_list}: clips also in {train_list}: {both[:5]}")
        out = np.array([("train" if c in train else "test" if c in test else "")
                        for c in clips], dtype="<U5")
        rows = np.nonzero(out == "train")[0]
        rng = np.random.default_rng(seed)
        n_valid = max(1, round(len(rows) * valid_frac)) if len(rows) > 1 else 0
        out[rng.permutation(rows)[:n_valid]] = "valid"
        return out
    return random_split(len(clips), seed, valid_frac, test_frac,
                        groups=actors if by_speaker else None)


def prepare_cremad(
    root: str | Path,
    out: str | Path,
    *,
    audio_dir: str = "AudioWAV",
    frames_dir: str = "frames",
    split_csv: str | Path | None = None,
    train_list: str | Path | None = None,
    test_list: str | Path | None = None,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    by_speaker: bool = False,
    n_frames: int = 2,
    image_size: int = 32,
    sample_rate: int = 16000,
    max_seconds: float = 3.0,
    n_mels: int = 64,
    chunk_size: int = 64,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> cache.PrepareResult:
    """Extract CREMA-D features into a generic-format folder (resumable).

    Args:
        root: CREMA-D folder holding ``audio_dir`` and ``frames_dir``.
        out: Output folder (generic format; chunk cache under ``out/.cache``).
        audio_dir: Sub-folder of the WAV clips.
        frames_dir: Sub-folder with one folder of frames per clip.
        split_csv: CSV with columns ``clip`` and ``split``.
        train_list: OGM-GE style training list (first column: clip name).
        test_list: OGM-GE style test list.
        seed: Seed of the random split / of the validation draw from ``train_list``.
        valid_frac: Validation fraction. test_frac: Test fraction (random split only).
        by_speaker: Random split by actor (speaker-independent).
        n_frames: Frames per clip (papers use 1-3).
        image_size: Frame side after resizing.
        sample_rate: Audio is resampled to this rate.
        max_seconds: Audio window (longer clips are cut, shorter ones zero-padded).
        n_mels: Mel bands.
        chunk_size: Clips per cache chunk.
        skip_bad: Exclude clips with bad names, missing files or no split (logged and
            counted) instead of raising.
        progress: Show a progress bar.
        overwrite: Discard an existing cache / output made with other settings.

    Raises:
        DataError: naming the file on missing / unreadable files, unknown labels or clips
            without a split entry (unless ``skip_bad``).
    """
    r, o = Path(root), Path(out)
    adir = r / audio_dir
    if not adir.is_dir():
        raise DataError(f"{adir}: folder not found (CREMA-D WAV clips)")
    wavs = sorted(adir.glob("*.wav"))
    if not wavs:
        raise DataError(f"{adir}: no .wav files")
    params = {
        "format": "cremad", "root": str(r.resolve()), "audio_dir": audio_dir,
        "frames_dir": frames_dir, "n_frames": n_frames, "image_size": image_size,
        "sample_rate": sample_rate, "max_seconds": max_seconds, "n_mels": n_mels,
        "chunk_size": chunk_size,
    }
    inputs = {
        "wavs": [w.name for w in wavs], "split_csv": str(split_csv),
        "train_list": str(train_list), "test_list": str(test_list), "seed": seed,
        "valid_frac": valid_frac, "test_frac": test_frac, "by_speaker": by_speaker,
    }
    done = cache.start(o, params, overwrite, inputs)
    if done is not None:
        return done
    excluded: dict[str, dict[str, int]] = {}

    def drop(split: str, reason: str) -> None:
        excluded.setdefault(split, {})
        excluded[split][reason] = excluded[split].get(reason, 0) + 1

    clips, actors, labels = [], [], []
    for w in wavs:
        try:
            actor, label = parse_clip(w.stem)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{w}: field 'emotion': {err}") from err
            log.warning("%s: %s; excluded", w, err)
            drop("unassigned", "bad clip name / unknown emotion")
            continue
        clips.append(w.stem)
        actors.append(actor)
        labels.append(label)
    split = assign_splits(clips, actors, split_csv, train_list, test_list, seed, valid_frac,
                          test_frac, by_speaker)
    unassigned = split == ""
    if unassigned.any():
        src = split_csv or f"{train_list} / {test_list}"
        msg = (f"{src}: field 'split': no split entry for {int(unassigned.sum())} clip(s), "
               f"e.g. {[clips[i] for i in np.nonzero(unassigned)[0][:5]]}")
        if not skip_bad:
            raise DataError(msg + " (pass skip_bad=True to exclude them)")
        log.warning("%s; excluded", msg)
        excluded.setdefault("unassigned", {})["no split entry"] = int(unassigned.sum())
    for s in ("train", "valid", "test"):
        if not (split == s).any():
            raise DataError(f"{split_csv or train_list or adir}: no clips in split {s!r}")
    keep = [i for i in range(len(clips)) if not unassigned[i]]
    index = {clips[i]: i for i in keep}

    def item(clip: str) -> Mapping[str, np.ndarray]:
        x, rate = read_wav(adir / f"{clip}.wav")
        mel, n_mel = clip_log_mel(x, rate, sample_rate, max_seconds, n_mels)
        fdir = r / frames_dir / clip
        files = list_images(fdir)
        if not files:
            raise DataError(f"{fdir}: no frames for clip {clip} (field 'visual')")
        frames, n_img = frame_stack(files, n_frames, image_size)
        return {"audio": mel, "audio_len": np.asarray(n_mel, dtype=np.int64), "visual": frames,
                "visual_len": np.asarray(n_img, dtype=np.int64)}

    res = cache.map_chunked([clips[i] for i in keep], item, o / ".cache" / "features",
                            chunk_size=chunk_size, skip_bad=skip_bad, desc="CREMA-D clips",
                            progress=progress)
    for clip in res.failed:
        drop(str(split[index[clip]]), "missing or unreadable audio / frames")
    rows = np.array([index[c] for c in res.keys], dtype=np.int64)
    meta = {
        "name": "cremad", "task": "classification", "num_classes": len(EMOTIONS),
        "class_names": list(EMOTIONS), "modalities": ["audio", "visual"],
        "description": (f"CREMA-D ({len(rows)} clips): audio log-mel {n_mels} bands over "
                        f"{max_seconds}s at {sample_rate} Hz; visual {n_frames} frame(s) of "
                        f"{image_size}x{image_size} RGB; emotions {list(EMOTIONS)}."),
        "excluded": excluded,
    }
    write_generic(o, {"audio": res.arrays["audio"], "visual": res.arrays["visual"]},
                  np.asarray(labels, dtype=np.int64)[rows], split[rows],
                  lengths={"audio": res.arrays["audio_len"], "visual": res.arrays["visual_len"]},
                  ids=np.asarray(res.keys), meta=meta)
    result = cache.PrepareResult(o, len(rows), res.computed, res.reused, excluded)
    log.info("CREMA-D: wrote %d clips to %s (%d computed, %d from cache)", len(rows), o,
             res.computed, res.reused)
    return cache.finish(result, params, inputs)


def load_cremad(path: str | Path | None = None, *, skip_bad: bool = False) -> LoadedData:
    """Load a CREMA-D folder written by :func:`prepare_cremad`.

    Args:
        path: The prepared folder (default ``<cache_dir>/cremad``).
        skip_bad: Exclude bad rows instead of raising.

    Raises:
        DataError: when the folder is missing (with the command that makes it).
    """
    p = Path(path) if path is not None else cache_dir() / "cremad"
    if not (p / "labels.npy").is_file():
        raise DataError(f"{p}: no prepared CREMA-D features; run `equimodal prepare cremad "
                        f"--root <CREMA-D folder> --out {p}`")
    cache.check_complete(p, "equimodal prepare cremad")
    return load_generic(p, skip_bad=skip_bad, name="cremad")
