"""Figures of runs and reports, drawn with matplotlib (Agg: no display needed).

Every drawing function writes its PNG with :func:`save_figure` (atomically) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vicinal.experiments.atomic import atomic_write
from vicinal.experiments.corruptions import CORRUPTIONS
from vicinal.experiments.spec import RunSpec
from vicinal.experiments.splits import Splits, training_batches

__all__ = [
    "corruption_heatmap",
    "describe_target",
    "learning_curves",
    "preview_grid",
    "pyplot",
    "save_figure",
    "write_preview",
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    # Imported on first use: matplotlib is slow to import and only the commands that draw need it.
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110, close: bool = False) -> Path:
    """Write a matplotlib figure to ``path`` as a PNG, atomically; returns the path.

    The image is drawn into a temporary file next to ``path`` and renamed over it
    (:func:`vicinal.experiments.atomic.atomic_write`): a reader sees the old file or the
    whole new one, never half an image. Missing parent folders are created.

    Args:
        fig: a :class:`matplotlib.figure.Figure`.
        path: where the PNG goes.
        dpi: resolution; the bounding box is tight around what was drawn.
        close: close the figure afterwards (frees pyplot's memory for it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        if close:
            pyplot().close(fig)
    return path


def describe_target(target: np.ndarray, class_names: Sequence[str], *, min_weight: float = 0.005) -> str:
    """'0.76 Shirt + 0.24 Ankle boot': the classes of a soft target, heaviest first."""
    order = np.argsort(-target, kind="stable")
    parts = [f"{target[i]:.2f} {class_names[i]}" for i in order if target[i] >= min_weight]
    return "\n+ ".join(parts) if parts else "(empty)"


def preview_grid(
    images: np.ndarray, targets: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """A 3×3 grid of mixed samples, each titled with its soft label in words.

    Images are drawn as images. Features are drawn as heat maps on one colour scale,
    symmetric about 0 (blue below, red above): a (F,) row as a strip, a (T, F)
    sequence with time down the rows.

    Args:
        images: float (N, C, H, W) images in [0, 1], or float features (N, F) or
            (N, T, F); N >= 1 (the first 9 are shown).
        targets: float (N, num_classes) soft labels.
    """
    plt = pyplot()
    n = min(9, len(images))
    shown = np.asarray(images[:n], dtype=np.float32)
    if shown.ndim not in (2, 3, 4):
        raise ValueError(f"images must be (N, C, H, W) images or (N, F) / (N, T, F) features, got {shown.shape}")
    limit = (float(np.abs(shown).max()) or 1.0) if shown.ndim < 4 else 1.0
    fig, axes = plt.subplots(3, 3, figsize=(8, 9))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = shown[i]
        if img.ndim < 3:  # features: a strip (1, F) or a (T, F) map
            ax.imshow(np.atleast_2d(img), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        elif img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.clip(np.transpose(img[:3], (1, 2, 0)), 0, 1))
        ax.set_title(describe_target(np.asarray(targets[i]), class_names), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, close=True)


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike) -> Path:
    """Train/val accuracy and loss per epoch, one line style per arm.

    Args:
        histories: arm name -> list of per-epoch records with keys ``epoch``,
            ``train_acc``, ``train_loss``, ``val_acc``, ``val_loss``.
    """
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (arm, hist) in enumerate(histories.items()):
        if not hist:
            continue
        c = colors[k % len(colors)]
        ep = [h["epoch"] + 1 for h in hist]
        ax_acc.plot(ep, [h["train_acc"] for h in hist], "--", color=c, label=f"{arm} train")
        ax_acc.plot(ep, [h["val_acc"] for h in hist], "-o", color=c, label=f"{arm} val", markersize=3)
        ax_loss.plot(ep, [h["train_loss"] for h in hist], "--", color=c, label=f"{arm} train")
        ax_loss.plot(ep, [h["val_loss"] for h in hist], "-o", color=c, label=f"{arm} val", markersize=3)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.text(
        0.5,
        -0.02,
        "Train metrics are on the (mixed) training batches; mixup's train loss is on soft targets.",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout()
    return save_figure(fig, path, close=True)


def corruption_heatmap(
    table: Mapping[str, Mapping[str, float]], path: str | os.PathLike, *, title: str = "Error under corruption (%)"
) -> Path:
    """A heat map of mean corruption error: one row per arm, one column per corruption.

    Args:
        table: ``{arm: {corruption: mean error in [0, 1]}}`` (:func:`corruption_errors`
            of each arm); a corruption an arm lacks is left blank.
        path: where the PNG goes (written by
            :func:`save_figure`).

    Returns:
        ``path``. Cells are annotated with the error in percent.
    """
    if not table:
        raise ValueError("table is empty: expected at least one arm")
    arms = list(table)
    seen = {c for row in table.values() for c in row}
    columns = [c for c in CORRUPTIONS if c in seen] + sorted(seen - set(CORRUPTIONS))
    values = np.array([[100.0 * float(table[a].get(c, np.nan)) for c in columns] for a in arms])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 1.2 + 0.5 * len(arms)))
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=vmax or 1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), [c.replace("_", "\n") for c in columns], fontsize=8)
    ax.set_yticks(range(len(arms)), arms, fontsize=9)
    for i in range(len(arms)):
        for j in range(len(columns)):
            v = values[i, j]
            if np.isfinite(v):
                dark = v < 0.6 * vmax
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="mean error over severities (%)")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, close=True)


def write_preview(spec: RunSpec, splits: Splits, path: str | os.PathLike) -> Path:
    """Nine images of ``spec``'s first mixed training batch with their soft labels (:func:`preview_grid`)."""
    loader = training_batches(spec, splits, channels_last=False)
    x, y = next(iter(loader.epoch(0)))
    return preview_grid(x[:9].numpy(), y[:9].numpy(), splits.class_names, path, title=spec.describe_mixing())
