"""Recompute ``LNTL_COLORS`` and ``LNTL_MASK_THRESHOLD`` (equimodal.data.builtin.digits).

"Learning Not to Learn"'s colored MNIST (``mnist_10color_jitter_var_0.030.npy``, the color
modality of PMR's and UDI's CG-MNIST) is not available offline and its generator was never
published. A public notebook renders part of its training set:
``notebooks/01_data_exploration_and_visualization.ipynb`` of dizzydroid/learning-not-to-learn
(commit b7b3168), which shows, from that file and in MNIST's training order,

* five sample images per class (flat digits: one color per image on black), and
* one swatch per class: the mean over the class's first 50 training images of the image's
  mean color (foreground color x foreground fraction).

This script reads those figures and prints

1. the foreground threshold: for which MNIST byte thresholds ``t`` the rendered masks equal
   ``byte > t`` (checked on every sample shown);
2. the class mean colors: ``E[clip(color)]`` from the swatch divided by the 50 images' known
   foreground fractions (the 5 shown exactly, the other 45 through the swatch), then the mean
   ``mu`` whose jittered, clipped color has that expectation (``var = 0.030``).

Usage (the notebook comes from a checkout of the repository above)::

    python benchmarks/reproductions/lntl_palette.py \
        path/to/notebooks/01_data_exploration_and_visualization.ipynb
"""

from __future__ import annotations

import argparse
import base64
import io
import json

import numpy as np
from PIL import Image
from scipy import ndimage, optimize, stats

from equimodal.data.builtin.digits import load_mnist_arrays

JITTER_VAR = 0.030


def notebook_images(path: str) -> list[np.ndarray]:
    """Every PNG output of the notebook, in cell order, as float RGB in [0, 1]."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            png = o.get("data", {}).get("image/png")
            if png:
                img = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
                out.append(np.asarray(img, dtype=np.float64) / 255.0)
    return out


def panels(img: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """The non-white axes of a figure, left to right."""
    nonwhite = img.min(-1) < 0.9
    lab, n = ndimage.label(nonwhite)
    sizes = ndimage.sum(nonwhite, lab, range(1, n + 1))
    boxes = []
    for k in (i + 1 for i, s in enumerate(sizes) if s > min_pixels):
        ys, xs = np.where(lab == k)
        boxes.append((xs.min(), img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]))
    return [b for _, b in sorted(boxes, key=lambda t: t[0])]


def to_28(panel: np.ndarray) -> np.ndarray:
    """Sample a rendered 28x28 image at its pixel centres."""
    h, w = panel.shape[:2]
    rows = ((np.arange(28) + 0.5) * h / 28).astype(int)
    cols = ((np.arange(28) + 0.5) * w / 28).astype(int)
    return panel[rows][:, cols]


def expected_clipped(mu: float, sigma: float) -> float:
    """``E[clip(mu + sigma Z, 0, 1)]`` for a standard normal ``Z``."""
    a, b = -mu / sigma, (1.0 - mu) / sigma
    inside = mu * (stats.norm.cdf(b) - stats.norm.cdf(a))
    return float(inside + sigma * (stats.norm.pdf(a) - stats.norm.pdf(b)) + stats.norm.sf(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook")
    args = ap.parse_args()
    figs = notebook_images(args.notebook)
    x, y = load_mnist_arrays(raw=True)["train"]
    class_figs, swatch_fig = figs[1:11], figs[11]
    samples = np.zeros((10, 5, 3))
    ok_thresholds = set(range(256))
    for c, fig in enumerate(class_figs):
        idx = np.where(y == c)[0][:5]
        for j, (panel, i) in enumerate(zip(panels(fig, 20000), idx, strict=True)):
            small = to_28(panel)
            mask = small.max(-1) > 0.05
            samples[c, j] = np.median(small[mask], axis=0)
            g = x[i].reshape(28, 28)
            ok_thresholds &= {t for t in range(256) if ((g > t) == mask).all()}
    print(f"foreground = MNIST byte > t for t in {sorted(ok_thresholds)} (all 50 samples)")
    swatches = [np.median(p[5:-5, 5:-5].reshape(-1, 3), axis=0) for p in panels(swatch_fig, 5000)]
    sigma = np.sqrt(JITTER_VAR)
    print("class  E[clip color]          mu (LNTL_COLORS)")
    for c in range(10):
        idx = np.where(y == c)[0][:50]
        frac = (x[idx] > 128).mean(1)
        rest = (50 * swatches[c] - (samples[c] * frac[:5, None]).sum(0)) / frac[5:].sum()
        m = np.clip((samples[c].sum(0) + 45 * rest) / 50, 1e-3, 1 - 1e-3)
        mu = [optimize.brentq(lambda u, t=t: expected_clipped(u, sigma) - t, -1.5, 2.5)
              for t in m]
        print(f"{c:5d}  {np.round(m, 3)}  {np.round(mu, 3)}")


if __name__ == "__main__":
    main()
