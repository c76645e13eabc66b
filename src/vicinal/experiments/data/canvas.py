"""A small offline dense dataset: Fashion-MNIST (or MNIST) items pasted onto a canvas.

Each canvas is ``side × side`` (64 by default) grey pixels: a noisy dark background
with 1 to ``max_items`` items of a classification dataset (28×28 Fashion-MNIST or MNIST
images) pasted at random places and sizes, their boxes never overlapping, so that
every item is wholly visible. A canvas comes with

* a class-id segmentation mask, ``uint8`` (side, side): 0 for the background,
  ``1 + c`` for the pixels of an item of class ``c`` (1..10), that is, the item's pixels
  of value ``>= threshold`` (the image shows exactly those pixels of the item; its
  fainter ones are left as background);
* its boxes, ``float32`` (Ni, 4) xyxy pixels: the tight box of each item's mask pixels
  (``x2 = last column + 1``), with their class ids ``int64`` (Ni,), the mask's ids
  ``1 + c``, so the boxes and the mask agree exactly.

Train canvases are made of the source's training items, test canvases of its test
items (a held-out set). Everything is a pure function of :class:`CanvasConfig`
(seed included) and the source's verified files: integer arithmetic and NumPy's PCG64
stream only, so the same config gives the same bytes on every machine.

:func:`load_canvas` caches the arrays in one ``.npz`` file with a JSON manifest beside
it (the config, the source's checksums, and the SHA-256 and size of the ``.npz``),
both written atomically (:mod:`vicinal.experiments.atomic`), the manifest last. A cache
whose manifest or archive is missing, truncated, altered or of another config is never
used: it is rebuilt (``on_damage="rebuild"``, with a warning naming the file and the
problem) or refused (``on_damage="refuse"``, a :class:`DatasetError`).

>>> import numpy as np
>>> items = np.zeros((4, 1, 28, 28), np.uint8)
>>> items[:, :, 6:22, 8:20] = 200
>>> data = build_canvas(items, np.arange(4), items, np.arange(4), CanvasConfig(n_train=3, n_test=2))
>>> data.train.images.shape, data.train.masks.dtype, data.num_classes  # background + 4 item classes
((3, 1, 64, 64), dtype('uint8'), 5)
>>> boxes, labels = data.train.boxes_of(0)
>>> bool((data.train.masks[0] > 0).sum() == ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum())
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from .checksums import digest_file, verify_file
from .errors import DatasetError

__all__ = [
    "CANVAS_FORMAT",
    "CanvasConfig",
    "CanvasData",
    "CanvasSplit",
    "OnDamage",
    "build_canvas",
    "canvas_cache_paths",
    "load_canvas",
    "make_canvases",
]

logger = logging.getLogger(__name__)

#: The version of the generator and of the cache layout: part of every cache key, so a
#: change to either makes new files instead of reading old ones.
CANVAS_FORMAT = 1
OnDamage = Literal["rebuild", "refuse"]
_SPLITS = ("train", "test")
_FIELDS = ("images", "masks", "boxes", "box_labels", "offsets")
_PLACE_TRIES = 30  # random places tried per item before the canvas makes do with fewer


@dataclass(frozen=True)
class CanvasConfig:
    """What :func:`make_canvases` draws.

    Attributes:
        n_train, n_test: canvases per split (``n_test`` may be 0).
        side: the canvas's height and width in pixels (>= the largest item).
        max_items: items per canvas: a number drawn uniformly in [1, max_items], fewer
            when no free place is found for one (boxes never overlap).
        min_size, max_size: each item is resized (nearest neighbour) from 28×28 to a
            square of a side drawn uniformly in [min_size, max_size].
        threshold: item pixels of value >= this are the item's (mask) pixels.
        noise: background pixels are uniform integers in [0, noise].
        seed: the seed of everything drawn.
    """

    n_train: int = 2000
    n_test: int = 500
    side: int = 64
    max_items: int = 4
    min_size: int = 18
    max_size: int = 30
    threshold: int = 48
    noise: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise DatasetError(f"CanvasConfig.{f.name} must be an int, got {v!r}")
        checks = (
            ("n_train", self.n_train >= 1, ">= 1"),
            ("n_test", self.n_test >= 0, ">= 0"),
            ("max_items", self.max_items >= 1, ">= 1"),
            ("min_size", 4 <= self.min_size <= self.max_size, f"in [4, max_size={self.max_size}]"),
            ("max_size", self.max_size <= self.side, f"<= side={self.side}"),
            ("side", 8 <= self.side <= 1024, "in [8, 1024]"),
            ("threshold", 1 <= self.threshold <= 255, "in [1, 255]"),
            ("noise", 0 <= self.noise < self.threshold, f"in [0, threshold={self.threshold})"),
            ("seed", self.seed >= 0, ">= 0"),
        )
        for name, ok, want in checks:
            if not ok:
                raise DatasetError(f"CanvasConfig.{name} must be {want}, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, int]:
        """The fields as a plain dict (what the manifest records)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False, repr=False)
class CanvasSplit:
    """The canvases of one split, held as NumPy arrays.

    Attributes:
        images: ``uint8`` (N, 1, S, S).
        masks: ``uint8`` (N, S, S): 0 background, ``1 + c`` an item of class ``c``.
        boxes: ``float32`` (M, 4): every canvas's boxes, xyxy pixels, canvas by canvas.
        box_labels: ``int64`` (M,): the boxes' class ids (the mask's, ``1 + c``).
        offsets: ``int64`` (N + 1,): canvas ``i``'s boxes are rows
            ``offsets[i]:offsets[i + 1]`` of ``boxes``.
    """

    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def boxes_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Canvas ``i``'s boxes (Ni, 4) and their class ids (Ni,) (views)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.boxes[lo:hi], self.box_labels[lo:hi]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Canvas ``i`` as the dict :func:`vicinal.dense.mix_dense` reads per sample
        (``image`` (1, S, S) uint8, ``mask`` (S, S) uint8, ``boxes``, ``box_labels``):
        a map-style dataset for a DataLoader with :func:`vicinal.dense.collate_dense`."""
        boxes, labels = self.boxes_of(i)
        return {"image": self.images[i], "mask": self.masks[i], "boxes": boxes, "box_labels": labels}

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """The canvases ``indices`` as one batch for :func:`vicinal.dense.mix_dense`:
        ``image`` (B, 1, S, S) and ``mask`` (B, S, S) uint8 arrays (copies), ``boxes``
        and ``box_labels`` lists of B arrays (views)."""
        idx = np.asarray(indices, dtype=np.int64)
        pieces = [self.boxes_of(int(i)) for i in idx]
        return {
            "image": self.images[idx],
            "mask": self.masks[idx],
            "boxes": [b for b, _ in pieces],
            "box_labels": [c for _, c in pieces],
        }

    def __repr__(self) -> str:
        return f"CanvasSplit({len(self)} canvases of {tuple(self.images.shape[2:])}, {len(self.boxes)} boxes)"


@dataclass(frozen=True, eq=False, repr=False)
class CanvasData:
    """A canvas dataset: its two splits and what they were made from.

    Attributes:
        train, test: the splits (test canvases use only the source's test items).
        class_names: ``"background"`` then the source's class names: the mask ids'
            names (index = id).
        config: the :class:`CanvasConfig` it was drawn with.
        source: where the items came from (a path or a name).
    """

    train: CanvasSplit
    test: CanvasSplit
    class_names: tuple[str, ...]
    config: CanvasConfig
    source: str

    @property
    def num_classes(self) -> int:
        """The mask's classes, background included: ``len(class_names)``."""
        return len(self.class_names)

    def __repr__(self) -> str:
        return f"CanvasData(train={self.train!r}, test={self.test!r}, num_classes={self.num_classes})"


# --------------------------------------------------------------------------- generation


def _resize_nearest(item: np.ndarray, size: int) -> np.ndarray:
    """(h, w) -> (size, size) by nearest neighbour, in integer arithmetic (exact anywhere)."""
    h, w = item.shape
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    return item[rows[:, None], cols[None, :]]


def make_canvases(
    items: np.ndarray, labels: np.ndarray, n: int, config: CanvasConfig, rng: np.random.Generator
) -> CanvasSplit:
    """``n`` canvases of ``items`` (uint8 (K, 1, h, w) or (K, h, w), h and w <=
    ``config.max_size``) with class ids ``labels`` (int (K,), >= 0), drawn from ``rng``.

    Items whose resized copy has no pixel >= ``config.threshold`` are skipped (a canvas
    always holds at least one item when any item has such pixels).
    """
    x = np.asarray(items)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[0] == 0:
        raise DatasetError(f"items must be uint8 (K, 1, h, w) or (K, h, w) images, K >= 1; got {x.dtype} {x.shape}")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu" or (y.size and int(y.min()) < 0):
        raise DatasetError(f"labels must be class ids >= 0 of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if int(y.max()) + 1 > 254:
        raise DatasetError(f"labels reach {int(y.max())}: mask ids 1 + c must fit uint8")
    c, side = config, config.side
    images = rng.integers(0, c.noise, size=(n, side, side), dtype=np.uint8, endpoint=True)
    masks = np.zeros((n, side, side), np.uint8)
    boxes: list[list[int]] = []
    box_labels: list[int] = []
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        placed: list[tuple[int, int, int, int]] = []  # xyxy of the items on this canvas
        wanted = int(rng.integers(1, c.max_items + 1))
        tries = 0
        while len(placed) < wanted and tries < wanted * _PLACE_TRIES:
            tries += 1
            k = int(rng.integers(0, x.shape[0]))
            size = int(rng.integers(c.min_size, c.max_size + 1))
            item = _resize_nearest(x[k], size)
            fg = item >= c.threshold
            ys, xs = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
            if ys.size == 0:
                continue
            y0, x0 = (int(v) for v in rng.integers(0, side - size + 1, size=2))
            box = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
            # No two boxes overlap (a one-pixel gap), so every item is wholly visible.
            if any(box[0] <= b[2] and b[0] <= box[2] and box[1] <= b[3] and b[1] <= box[3] for b in placed):
                continue
            placed.append(box)
            region = (slice(y0, y0 + size), slice(x0, x0 + size))
            images[i][region] = np.where(fg, item, images[i][region])
            masks[i][region] = np.where(fg, np.uint8(int(y[k]) + 1), masks[i][region])
            boxes.append(list(box))
            box_labels.append(int(y[k]) + 1)
        offsets[i + 1] = len(boxes)
    return CanvasSplit(
        # reshape, not images[:, None]: a stride-0 channel axis makes the batches' copies
        # look channels-last to torch, which then convolves them by other kernels (other
        # rounding) than the same arrays read back from the cache
        images=images.reshape(n, 1, side, side),
        masks=masks,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        box_labels=np.asarray(box_labels, np.int64),
        offsets=offsets,
    )


def build_canvas(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: CanvasConfig,
    *,
    class_names: Sequence[str] | None = None,
    source: str = "<arrays>",
) -> CanvasData:
    """Both splits from item arrays (no cache): train canvases of ``x_train``, test
    canvases of ``x_test``, from two independent streams of ``config.seed``.

    Args:
        x_train, x_test: uint8 item images (K, 1, h, w) or (K, h, w).
        y_train, y_test: their class ids (K,).
        class_names: the items' class names (default ``"0"``, ``"1"``, ...).
    """
    if not isinstance(config, CanvasConfig):
        raise TypeError(f"config must be a CanvasConfig, got {type(config).__name__}")
    train_rng, test_rng = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(config.seed).spawn(2)
    )
    train = make_canvases(x_train, y_train, config.n_train, config, train_rng)
    test = make_canvases(x_test, y_test, config.n_test, config, test_rng) if config.n_test else _empty(config)
    n_items = int(max(np.max(y_train), np.max(y_test) if len(y_test) else 0)) + 1
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(n_items))
    if len(names) < n_items:
        raise DatasetError(f"class_names has {len(names)} names, but the labels reach {n_items - 1}")
    data = CanvasData(train, test, ("background", *names), config, source)
    _check_data(data, source)
    return data


def _empty(config: CanvasConfig) -> CanvasSplit:
    s = config.side
    return CanvasSplit(
        np.zeros((0, 1, s, s), np.uint8),
        np.zeros((0, s, s), np.uint8),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int64),
        np.zeros(1, np.int64),
    )


def _check_split(split: CanvasSplit, n: int, side: int, num_classes: int, where: str) -> None:
    """Raise :class:`DatasetError` unless ``split`` is well formed (shapes, dtypes, ids,
    offsets, boxes inside the canvas)."""
    want = {
        "images": (np.uint8, (n, 1, side, side)),
        "masks": (np.uint8, (n, side, side)),
        "offsets": (np.int64, (n + 1,)),
    }
    for name, (dtype, shape) in want.items():
        a = getattr(split, name)
        if a.dtype != dtype or a.shape != shape:
            raise DatasetError(f"{where}: {name} must be {np.dtype(dtype)} {shape}, got {a.dtype} {a.shape}")
    m = int(split.offsets[-1]) if n + 1 == split.offsets.shape[0] else -1
    if split.boxes.dtype != np.float32 or split.boxes.shape != (m, 4):
        raise DatasetError(f"{where}: boxes must be float32 ({m}, 4), got {split.boxes.dtype} {split.boxes.shape}")
    if split.box_labels.dtype != np.int64 or split.box_labels.shape != (m,):
        raise DatasetError(f"{where}: box_labels must be int64 ({m},), got {split.box_labels.dtype}")
    if split.offsets[0] != 0 or (np.diff(split.offsets) < 0).any():
        raise DatasetError(f"{where}: offsets must start at 0 and never decrease")
    if n and int(split.masks.max()) >= num_classes:
        raise DatasetError(f"{where}: masks hold ids up to {int(split.masks.max())}, expected < {num_classes}")
    b = split.boxes
    if m and not ((b[:, :2] >= 0) & (b[:, 2:] > b[:, :2]) & (b[:, 2:] <= side)).all():
        raise DatasetError(f"{where}: boxes must lie inside the {side}x{side} canvas with positive extent")
    if m and not ((split.box_labels >= 1) & (split.box_labels < num_classes)).all():
        raise DatasetError(f"{where}: box_labels must be item ids in [1, {num_classes})")


def _check_data(data: CanvasData, where: str) -> None:
    c = data.config
    _check_split(data.train, c.n_train, c.side, data.num_classes, f"{where}: train")
    _check_split(data.test, c.n_test, c.side, data.num_classes, f"{where}: test")


# --------------------------------------------------------------------------- the cache


def _source_key(source: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A registered source's name, the checksums of its files (which the build
    verifies) and its class names; only the MNIST family has 28×28 items."""
    from .registry import DatasetSpec, get_spec

    spec = get_spec(source)
    if not isinstance(spec, DatasetSpec):
        raise DatasetError(f"canvas items come from an IDX dataset (fashion-mnist, mnist), got {source!r}")
    return spec.name, tuple(sorted(digest for digest, _ in spec.checksums())), spec.class_names


def canvas_cache_paths(
    config: CanvasConfig, source: str = "fashion-mnist", cache_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """The cache's archive and manifest for ``config`` and ``source``:
    ``<cache_dir>/canvas/<source>-<key>.npz`` and ``.json``, the key a digest of the
    format, the config and the source's checksums. ``cache_dir`` defaults to the user
    cache (:func:`vicinal.experiments.data.sources.default_cache_dir`)."""
    name, checksums, _ = _source_key(source)
    if cache_dir is None:
        from .sources import default_cache_dir

        cache_dir = default_cache_dir()
    ident = json.dumps({"format": CANVAS_FORMAT, "config": config.as_dict(), "source": checksums}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "canvas"
    return folder / f"{name}-{key}.npz", folder / f"{name}-{key}.json"


def _manifest(config: CanvasConfig, source: str, checksums: Sequence[str], archive: Path) -> dict[str, Any]:
    return {
        "format": CANVAS_FORMAT,
        "config": config.as_dict(),
        "source": source,
        "source_checksums": list(checksums),
        "archive": archive.name,
        "sha256": digest_file(archive, "sha256"),
        "size": archive.stat().st_size,
    }


def _write(data: CanvasData, archive: Path, manifest: Path, source: str, checksums: Sequence[str]) -> None:
    """The archive, then its manifest (the commit point), each atomically."""
    arrays = {f"{s}_{f}": getattr(getattr(data, s), f) for s in _SPLITS for f in _FIELDS}
    arrays["class_names"] = np.asarray(data.class_names)
    archive.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(archive, lambda f: np.savez(f, **arrays))
    atomic_write_json(manifest, _manifest(data.config, source, checksums, archive))


def _read(archive: Path, manifest: Path, config: CanvasConfig, checksums: Sequence[str]) -> CanvasData:
    """The cached dataset, verified; :class:`DatasetError` naming the file and what is
    wrong with it (missing, unreadable, another config, checksum, structure)."""
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{manifest}: cannot read the canvas cache's manifest ({exc})") from exc
    expected = {"format": CANVAS_FORMAT, "config": config.as_dict(), "source_checksums": list(checksums)}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        raise DatasetError(f"{manifest}: the manifest is not the one of this config, source and format")
    if not archive.is_file():
        raise DatasetError(f"{archive}: the canvas cache's archive is missing")
    digest = meta.get("sha256")
    known = f"sha256:{digest}" if isinstance(digest, str) and digest else None
    size = meta.get("size") if isinstance(meta.get("size"), int) else None
    verify_file(archive, known, "the canvas archive its manifest describes", None, size=size)
    try:
        with np.load(archive, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{archive}: cannot read the canvas archive ({exc})") from exc
    try:
        splits = {s: CanvasSplit(**{f: arrays[f"{s}_{f}"] for f in _FIELDS}) for s in _SPLITS}
        names = tuple(str(n) for n in arrays["class_names"].tolist())
    except KeyError as exc:
        raise DatasetError(f"{archive}: the canvas archive lacks {exc}") from exc
    data = CanvasData(splits["train"], splits["test"], names, config, str(meta.get("source", "")))
    _check_data(data, str(archive))
    return data


def load_canvas(
    config: CanvasConfig | None = None,
    *,
    source: str = "fashion-mnist",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    on_damage: OnDamage = "rebuild",
) -> CanvasData:
    """The canvas dataset of ``config``, from the cache or built (and cached).

    Args:
        config: what to draw (default :class:`CanvasConfig()`).
        source: ``"fashion-mnist"`` or ``"mnist"``, loaded and verified by
            :func:`vicinal.experiments.data.load_dataset` when building.
        data_dir, download: passed to ``load_dataset`` (``download`` is off by
            default: the data is meant to be offline).
        cache_dir: the cache root (see :func:`canvas_cache_paths`).
        on_damage: a cache that exists but is unusable (truncated, altered, a
            manifest of another config): ``"rebuild"`` it (logging a warning), or
            ``"refuse"`` (a :class:`DatasetError` naming the file and the problem).

    Raises:
        DatasetError: the source cannot be loaded, or a damaged cache with
            ``on_damage="refuse"``.
    """
    config = CanvasConfig() if config is None else config
    if not isinstance(config, CanvasConfig):
        raise TypeError(f"config must be a CanvasConfig, got {type(config).__name__}")
    if on_damage not in ("rebuild", "refuse"):
        raise ValueError(f"on_damage must be 'rebuild' or 'refuse', got {on_damage!r}")
    archive, manifest = canvas_cache_paths(config, source, cache_dir)
    name, checksums, class_names = _source_key(source)
    if manifest.exists() or archive.exists():
        try:
            return _read(archive, manifest, config, checksums)
        except DatasetError as exc:
            if on_damage == "refuse":
                raise
            logger.warning("canvas cache unusable, rebuilding it: %s", exc)
    from .sources import load_dataset

    items = load_dataset(name, data_dir, download=download)
    data = build_canvas(
        items.x_train,
        items.y_train,
        items.x_test,
        items.y_test,
        config,
        class_names=class_names,
        source=items.source,
    )
    _write(data, archive, manifest, items.source, checksums)
    return data
