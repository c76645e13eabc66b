"""Fixtures shared by the harness tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_toy_npz(path: Path, n: int = 900, seed: int = 0) -> Path:
    """A small learnable 3-class set of 16x16 uint8 images: each class brightens its own band."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    for c in range(3):
        x[y == c, 5 * c : 5 * c + 5, :] += 150
    np.savez(path, x=x, y=y, class_names=np.array(["top", "middle", "bottom"]))
    return path


@pytest.fixture(scope="session")
def toy_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_npz(tmp_path_factory.mktemp("toy") / "toy.npz")
