"""Shared fixtures: tiny deterministic synthetic datasets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from equimodal.data.dataset import MultimodalData
from equimodal.registry import load_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker: xdist already uses every core; more threads only contend.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Every test's models are tiny: one intra-op thread is faster than several and immune
    to a busy machine (tiny convs were measured ~80x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data() -> MultimodalData:
    """Two vector modalities, 3 classes, easy."""
    data: MultimodalData = load_dataset(
        "synthetic", n_classes=3, dim=8, latent=4, noise=0.5, strengths=[1.5, 1.0],
        n_train=160, n_valid=60, n_test=60, seed=0,
    )
    return data


@pytest.fixture(scope="session")
def tiny_seq_data() -> MultimodalData:
    """Two sequence modalities with random lengths."""
    data: MultimodalData = load_dataset(
        "synthetic", n_classes=3, dim=6, latent=4, noise=0.5, seq_len=8, n_train=120,
        n_valid=40, n_test=40, seed=1,
    )
    return data
