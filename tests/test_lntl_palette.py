"""The LNTL palette estimate's building blocks (benchmarks/reproductions/lntl_palette.py)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("reproductions/lntl_palette.py", "lntl_palette")


@pytest.mark.parametrize("mu", [-0.2, 0.05, 0.5, 0.93, 1.3])
def test_expected_clipped_matches_monte_carlo(script: ModuleType, mu: float) -> None:
    sigma = np.sqrt(0.03)
    z = np.random.default_rng(0).standard_normal(400_000)
    assert script.expected_clipped(mu, sigma) == pytest.approx(
        float(np.clip(mu + sigma * z, 0, 1).mean()), abs=2e-3)


def _figure(masks: list[np.ndarray], colors: list[tuple[float, float, float]],
            scale: int = 8) -> np.ndarray:
    """A white figure with one black axes per mask, the mask painted flat, left to right."""
    side = 28 * scale
    fig = np.ones((side + 40, 20 + len(masks) * (side + 30), 3))
    for k, (m, c) in enumerate(zip(masks, colors, strict=True)):
        panel = np.kron(m.astype(float), np.ones((scale, scale)))[:, :, None] * np.array(c)
        x0 = 20 + k * (side + 30)
        fig[20:20 + side, x0:x0 + side] = panel
    return fig


def test_panels_and_notebook_images_recover_flat_digits(script: ModuleType,
                                                        tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((28, 28)) > 0.7 for _ in range(3)]
    colors = [(0.8, 0.2, 0.3), (0.1, 0.5, 0.9), (0.9, 0.85, 0.2)]
    fig = _figure(masks, colors)
    buf = io.BytesIO()
    Image.fromarray((fig * 255).round().astype(np.uint8)).save(buf, format="PNG")
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"data": {"image/png": base64.b64encode(buf.getvalue()).decode()}}]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    (img,) = script.notebook_images(str(path))
    found = script.panels(img, 20000)
    assert len(found) == 3
    for panel, m, c in zip(found, masks, colors, strict=True):
        small = script.to_28(panel)
        got = small.max(-1) > 0.05
        assert (got == m).all()
        np.testing.assert_allclose(np.median(small[got], axis=0), c, atol=1 / 255)
