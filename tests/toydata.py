"""Small synthetic data and results shared by several test modules (imported by name:
pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_toy_npz(path: Path, n: int = 900, seed: int = 0) -> Path:
    """A small learnable 3-class set of 16x16 uint8 images: each class brightens its own band."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    for c in range(3):
        x[y == c, 5 * c : 5 * c + 5, :] += 150
    np.savez(path, x=x, y=y, class_names=np.array(["top", "middle", "bottom"]))
    return path


def fake_result(acc: float) -> dict[str, object]:
    """A stored cell result with the fields a report reads (no training needed)."""
    history = [{"epoch": e, "val_acc": acc - 0.02 * (2 - e), "test_acc": acc - 0.02 * (2 - e)} for e in range(3)]
    last = {"ece": 0.05 - acc / 100, "nll": 0.4, "brier": 0.2, "fgsm": {"0.03": acc / 2}}
    return {
        "name": "x",
        "test_acc": acc,
        "test_loss": 0.4,
        "best_val_acc": acc,
        "best_epoch": 2,
        "wall_s": 1.0,
        "history": history,
        "metrics": {"last": last},
    }


def without_wall_clock(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's per-epoch records without ``elapsed_s``: what two equal runs must share."""
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]
