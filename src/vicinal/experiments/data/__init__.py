"""Dataset loading for vicinal.

* :func:`load_dataset` loads a registered IDX dataset (``"fashion-mnist"``,
  ``"mnist"``; see :func:`available_datasets`) from a local copy or a
  download, verifying the SHA-256 of the decompressed content.  See
  :mod:`vicinal.experiments.data.sources` for the search order.
* :func:`load_image_folder` and :func:`load_npz` load your own data.

All loaders return an :class:`ArrayDataset` (``uint8`` images of shape
``(N, C, H, W)``, or from a ``.npz`` also ``float32`` features of shape ``(N, F)``
or ``(N, T, F)``; ``int64`` labels) and raise :class:`DatasetError` (a
:class:`ValueError`) with a message naming the file and the problem.

Optional dependencies (the ``harness`` extra): ``pooch`` for downloads,
``platformdirs`` for the cache location, ``Pillow`` for image folders; each
is imported only when needed.
"""

from __future__ import annotations

from .byod import load_image_folder, load_npz
from .dataset import ArrayDataset, InputKind
from .errors import DatasetError
from .registry import available_datasets
from .sources import load_dataset

__all__ = [
    "ArrayDataset",
    "DatasetError",
    "InputKind",
    "available_datasets",
    "load_dataset",
    "load_image_folder",
    "load_npz",
]
