"""Fixtures shared by the harness tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from toydata import make_toy_npz


@pytest.fixture(scope="session")
def toy_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_npz(tmp_path_factory.mktemp("toy") / "toy.npz")
