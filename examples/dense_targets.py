"""Pictures of dense targets mixed with their images, for docs/dense.md.

Generates a small synthetic detection/segmentation batch (64×64 canvases with a few
rectangles, discs and triangles of three classes on a noisy background, their class-id
masks and tight boxes), mixes it with each method through one plan per batch
(:func:`vicinal.dense.mix_dense`), and draws one PNG per method: before mixing the
sample and its partner (image with its boxes, class-id mask), the partner's pixel weight
m of the plan (white: from the partner), and after mixing the image and the soft mask
(each pixel's colour is its class weights times the class colours), both with the kept
boxes (solid: the sample's own, dashed: the partner's, labelled with their weight).

    python examples/dense_targets.py --out docs/dense
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vicinal import MixConfig
from vicinal.dense import mix_dense
from vicinal.transforms import Mixer

SIDE = 64
CLASSES = ("background", "rectangle", "disc", "triangle")
CLASS_COLOURS = np.array([[0.15, 0.15, 0.15], [0.95, 0.35, 0.2], [0.25, 0.6, 0.95], [0.35, 0.85, 0.35]])
METHODS = {
    "mixup": MixConfig("mixup", alpha=1.0),
    "cutmix": MixConfig("cutmix"),
    "resizemix": MixConfig("resizemix"),
    "saliencymix": MixConfig("saliencymix"),
    "gridmix": MixConfig("gridmix"),
    "fmix": MixConfig("fmix"),
    "smoothmix": MixConfig("smoothmix"),
}


def make_batch(n: int, seed: int) -> dict[str, object]:
    """``n`` canvases (3, 64, 64) in [0, 1] with 2-4 shapes each, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    tint = 0.2 + 0.25 * rng.random((n, 3, 1, 1))  # a background colour per image shows the pasted region
    images = tint + 0.1 * rng.random((n, 3, SIDE, SIDE))
    masks = np.zeros((n, SIDE, SIDE), np.int64)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    boxes, labels = [], []
    for i in range(n):
        rows, ids = [], []
        for _ in range(rng.integers(2, 5)):
            cls = int(rng.integers(1, len(CLASSES)))
            size = int(rng.integers(12, 24))
            for _ in range(20):  # a place whose square does not touch the shapes already drawn
                y0, x0 = (int(v) for v in rng.integers(0, SIDE - size, size=2))
                if not masks[i, max(y0 - 1, 0) : y0 + size + 1, max(x0 - 1, 0) : x0 + size + 1].any():
                    break
            else:
                continue
            local_y, local_x = ys - y0, xs - x0
            if cls == 1:
                shape = (local_y >= 0) & (local_y < size) & (local_x >= 0) & (local_x < int(size * 0.7))
            elif cls == 2:
                r = size / 2
                shape = (local_y + 0.5 - r) ** 2 + (local_x + 0.5 - r) ** 2 <= r**2
            else:
                shape = (local_y >= 0) & (local_y < size) & (np.abs(local_x + 0.5 - size / 2) <= local_y / 2 + 0.5)
            if shape.sum() < 20:
                continue
            masks[i][shape] = cls
            images[i][:, shape] = (CLASS_COLOURS[cls] * (0.8 + 0.2 * rng.random()))[:, None]
            yy, xx = np.nonzero(shape)
            rows.append([xx.min(), yy.min(), xx.max() + 1, yy.max() + 1])
            ids.append(cls)
        boxes.append(np.array(rows, np.float64).reshape(-1, 4))
        labels.append(np.array(ids, np.int64))
    return {"image": images.astype(np.float32), "mask": masks, "boxes": boxes, "box_labels": labels}


def paste_weight(plan, size: tuple[int, int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """float (B, H, W): the partner's pixel weight of each row (the blend weight for MixUp)."""
    m = np.broadcast_to(plan.input_weights[:, 1, None, None], (plan.batch_size, *size)).copy()
    if plan.boxes is not None:
        for i, (top, left, bottom, right) in enumerate(plan.boxes.tolist()):
            m[i, top:bottom, left:right] = 1.0
    if plan.masks is not None:
        m = np.maximum(m, plan.masks)
    return m


def _soft_colour(soft: np.ndarray) -> np.ndarray:
    """(C, H, W) class weights -> (H, W, 3) colours."""
    return np.einsum("chw,ck->hwk", soft, CLASS_COLOURS).clip(0, 1)


def _draw_boxes(ax, boxes, labels, weights=None, sources=None) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.patches import Rectangle

    for n, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        dashed = sources is not None and sources[n] != 0
        colour = CLASS_COLOURS[int(label)]
        for edge, width in (("white", 2.4), (colour, 1.2)):  # a white halo under the class colour
            ax.add_patch(
                Rectangle(
                    (x1 - 0.5, y1 - 0.5),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    edgecolor=edge,
                    linewidth=width,
                    linestyle="--" if dashed else "-",
                )
            )
        if weights is not None:
            ax.text(x1 + 0.5, y1 + 0.5, f"{weights[n]:.2f}", color="white", fontsize=6, va="top", clip_on=True)


def _mask_colour(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) colours."""
    return CLASS_COLOURS[mask]


def draw(method: str, batch: dict[str, object], samples: int, seed: int, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixer = Mixer(METHODS[method], seed=seed)
    plan = mixer.plan(batch["image"], step=0)
    mixed = mix_dense(plan, batch, num_classes=len(CLASSES), mask_boxes="mask_weighted")
    m = paste_weight(plan, (SIDE, SIDE))
    fig, axes = plt.subplots(samples, 7, figsize=(14, 2.2 * samples), squeeze=False)
    titles = (
        "sample, its boxes",
        "sample's mask",
        "partner, its boxes",
        "partner's mask",
        "m, the partner's weight (white: 1)",
        "mixed image, kept boxes",
        "mixed soft mask, kept boxes",
    )
    images, masks = batch["image"], batch["mask"]
    for row in range(samples):
        p = int(plan.partners[row, 0])
        kept = (mixed["boxes"][row], mixed["box_labels"][row], mixed["box_weights"][row], mixed["box_sources"][row])
        own = (batch["boxes"][row], batch["box_labels"][row], None, None)
        partner = (batch["boxes"][p], batch["box_labels"][p], None, None)
        panels = (
            (images[row].transpose(1, 2, 0), own),
            (_mask_colour(masks[row]), own),
            (images[p].transpose(1, 2, 0), partner),
            (_mask_colour(masks[p]), partner),
            (np.repeat(m[row][:, :, None], 3, axis=2), None),
            (mixed["image"][row].transpose(1, 2, 0), kept),
            (_soft_colour(mixed["mask"][row]), kept),
        )
        for col, (picture, boxes) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture.clip(0, 1), interpolation="nearest")
            if boxes is not None:
                _draw_boxes(ax, *boxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
        axes[row, 0].set_ylabel(f"label weight λ = {plan.weights[row, 0]:.2f}", fontsize=8)
    fig.suptitle(
        f"{method}: one plan mixes image, mask and boxes. Solid boxes: the sample's own; dashed: the partner's; "
        "numbers: the kept boxes' weights",
        fontsize=9,
    )
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{method}.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    try:  # a 256-colour palette: a third of the bytes, no visible change
        from PIL import Image

        with Image.open(path) as picture:
            quantised = picture.convert("RGB").quantize(256)
        quantised.save(path, optimize=True)
    except ImportError:
        pass
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "dense")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    parser.add_argument("--samples", type=int, default=3, help="rows per picture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or args.samples < 1:
        parser.error(f"unknown methods {unknown}" if unknown else "--samples must be >= 1")
    batch = make_batch(8, args.seed)
    written = [draw(method, batch, args.samples, args.seed, args.out) for method in methods]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    return written


if __name__ == "__main__":
    main()
