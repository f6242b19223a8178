"""Shared fixtures. Tests stay small (nside <= 128) so the suite fits 10 minutes on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests when no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: a checkout in a folder named gpu matched it
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def red_maps():
    """Four bandlimited nside-32 maps with a CMB-like red spectrum, and their alm (L = 64)."""
    from scatterdist.equivariance import random_bandlimited_alm
    from scatterdist.sphere import synthesis

    alm = random_bandlimited_alm(64, np.random.default_rng(7), n=4)
    return synthesis(alm, 32, 63), alm


@pytest.fixture
def torch_one_thread():
    """Keep a torch test on one thread (the machine is small and shared); restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


os.environ.setdefault("MPLBACKEND", "Agg")
