"""The in-memory dataset container returned by every loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import DatasetError

__all__ = ["MAX_UNNAMED_CLASSES", "ArrayDataset", "InputKind", "unnamed_class_names"]

#: The most classes a dataset stored without class names may have (its largest label + 1):
#: more than any labelled image set in use (ImageNet-21k has 21,841), far less than a
#: stray value such as 1e9, whose one-hot targets could not be allocated.
MAX_UNNAMED_CLASSES = 100_000

#: What a dataset's inputs are: see :class:`ArrayDataset`.
InputKind = Literal["images", "features"]


def _check_inputs(x: np.ndarray, where: str) -> None:
    """Raise unless ``x`` is uint8 (N, C, H, W) images or finite float32 (N, F) / (N, T, F) features."""
    if x.dtype == np.uint8:
        if x.ndim != 4:
            raise DatasetError(
                f"{where} must have shape (N, C, H, W) for uint8 images, got {x.shape} "
                "(tabular or sequence features are float32 (N, F) or (N, T, F))"
            )
    elif x.dtype == np.float32:
        if x.ndim not in (2, 3):
            raise DatasetError(
                f"{where} must have shape (N, F) or (N, T, F) for float32 features, got {x.shape} "
                "(images are uint8 (N, C, H, W))"
            )
        if not np.isfinite(x).all():
            raise DatasetError(f"{where} holds NaN or infinite features; features must be finite")
    else:
        raise DatasetError(
            f"{where} must be uint8 images (N, C, H, W) or float32 features (N, F) / (N, T, F), got {x.dtype}"
        )


def unnamed_class_names(labels: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """``"0".."K-1"`` for class ids without names, K the largest label + 1, checked before
    anything of size K is made.

    Args:
        labels: where each array was read (e.g. ``"data.npz: 'y'"``) -> its int64 class ids (>= 0).

    Raises:
        DatasetError: K is above :data:`MAX_UNNAMED_CLASSES` or above the number of samples
            (a class count no data can support), naming the array, the label and its index.
    """
    samples = sum(len(ids) for ids in labels.values())
    top, where, index = -1, "", 0
    for name, ids in labels.items():
        if ids.size and int(ids.max()) > top:
            index = int(ids.argmax())
            top, where = int(ids[index]), name
    count = top + 1
    if count > MAX_UNNAMED_CLASSES or count > samples:
        limit = (
            f"above the {MAX_UNNAMED_CLASSES:,} a dataset without class names may have"
            if count > MAX_UNNAMED_CLASSES
            else f"more than its {samples:,} samples"
        )
        raise DatasetError(
            f"{where} holds label {top} (at index {index}): with no class names that means {count:,} classes, "
            f"{limit}; labels must be class ids 0..C-1 (store class names if there really are that many classes)"
        )
    return tuple(str(i) for i in range(max(count, 1)))


@dataclass(frozen=True, eq=False, repr=False)
class ArrayDataset:
    """A classification dataset held as NumPy arrays: images or feature arrays.

    Two kinds of inputs (:attr:`kind`), told apart by dtype and shape:

    * ``"images"``: ``uint8`` arrays of shape ``(N, C, H, W)``; the harness scales
      them to float32 in [0, 1];
    * ``"features"``: finite ``float32`` arrays of shape ``(N, F)`` (tabular rows) or
      ``(N, T, F)`` (sequences of ``T`` steps of ``F`` features); the harness feeds
      them to the model unchanged, so they should be standardised already.

    Attributes:
        name: short name, e.g. ``"fashion-mnist"`` or the folder/file stem.
        x_train: ``uint8`` ``(N, C, H, W)`` images or ``float32`` ``(N, F)`` /
            ``(N, T, F)`` features.
        y_train: ``int64`` array of shape ``(N,)``, class ids in
            ``[0, num_classes)``.
        x_test: the same dtype and per-sample shape as ``x_train``, ``M`` samples;
            ``M`` may be 0 (e.g. ``test_fraction=0``).
        y_test: ``int64`` array of shape ``(M,)``.
        class_names: one non-empty, unique name per class.
        source: where the data came from (a path, or a URL for downloads),
            suitable for recording in a run's configuration.

    Everything is checked in ``__post_init__``; a violation raises
    :class:`~vicinal.experiments.data.DatasetError`.  The arrays are not copied or made
    read-only.  Equality is identity (comparing arrays element-wise is never
    what ``==`` on datasets should silently do), and ``repr`` shows shapes
    only.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        where = f"ArrayDataset {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise DatasetError(f"ArrayDataset name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.source, str):
            raise DatasetError(f"{where}: source must be a str, got {type(self.source).__name__}")
        names = self.class_names
        if isinstance(names, str) or not all(isinstance(c, str) for c in names):
            raise DatasetError(f"{where}: class_names must be a sequence of str, got {names!r}")
        names = tuple(names)
        object.__setattr__(self, "class_names", names)
        if not names:
            raise DatasetError(f"{where}: class_names is empty")
        if any(not c for c in names):
            raise DatasetError(f"{where}: class_names contains an empty name")
        if len(set(names)) != len(names):
            dupes = sorted({c for c in names if names.count(c) > 1})
            raise DatasetError(f"{where}: duplicate class names {dupes}")

        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                raise DatasetError(f"{where}: x_{split} and y_{split} must be numpy arrays")
            _check_inputs(x, f"{where}: x_{split}")
            if y.dtype != np.int64:
                raise DatasetError(
                    f"{where}: y_{split} must be int64 class ids, got {y.dtype} (convert with .astype(np.int64))"
                )
            if y.ndim != 1:
                raise DatasetError(f"{where}: y_{split} must have shape (N,), got {y.shape}")
            if len(x) != len(y):
                raise DatasetError(f"{where}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
            if y.size:
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= len(names):
                    bad = lo if lo < 0 else hi
                    raise DatasetError(
                        f"{where}: y_{split} contains label {bad}, outside 0..{len(names) - 1} ({len(names)} classes)"
                    )
        if len(self.x_train) == 0:
            raise DatasetError(f"{where}: the training set is empty")
        if min(self.x_train.shape[1:]) == 0:
            raise DatasetError(f"{where}: x_train has an empty dimension: {self.x_train.shape}")
        if self.x_test.dtype != self.x_train.dtype:
            raise DatasetError(
                f"{where}: x_train holds {self.kind} ({self.x_train.dtype}) but x_test holds {self.x_test.dtype}; "
                "both must be uint8 images or both float32 features"
            )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DatasetError(
                f"{where}: train samples have shape {self.x_train.shape[1:]} but test "
                f"samples have {self.x_test.shape[1:]}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def kind(self) -> InputKind:
        """``"images"`` (``uint8`` ``(N, C, H, W)``) or ``"features"`` (``float32`` ``(N, F)`` or ``(N, T, F)``)."""
        return "images" if self.x_train.dtype == np.uint8 else "features"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` for images, ``(F,)`` or ``(T, F)`` for features."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, {self.kind}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )
