"""Shared fixtures: where the ground truth lives, seeded RNGs, markers.

Ground truth sits in ``../shared`` beside the checkout (override with $DYMN_EDGE_SHARED).
Tests that need it skip with a clear reason only when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("DYMN_EDGE_SHARED") or REPO.parent / "shared").resolve()


def pytest_configure(config):
    for marker, text in [
        ("slow", "end-to-end tests that take more than a few seconds; CI runs them"),
        ("gpu", "needs CUDA or TensorRT hardware; CI skips them"),
        ("openvino", "needs the openvino extra"),
        ("network", "starts a local HTTP server on 127.0.0.1"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"ground-truth folder {root} is absent (set DYMN_EDGE_SHARED to its location)")
    return root


@pytest.fixture(scope="session")
def fixtures_dir(shared) -> Path:
    return shared / "fixtures" / "efficientat"


@pytest.fixture(scope="session")
def mn04_checkpoint(shared) -> Path:
    return shared / "weights" / "mn04_as_mAP_432.pt"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
