"""Dataset loading for vicinal.

* :func:`load_dataset` loads a registered dataset by name (see
  :func:`available_datasets`): ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``,
  ``"cifar100"``, ``"cifar100:coarse"``, ``"svhn"``, ``"medmnist:<flag>"`` and
  ``"medmnist:<flag>_<size>"``, from a local copy or a download, every file verified
  against its published checksum; see :mod:`vicinal.experiments.data.sources` for the
  search order.  It also takes ``"hf:<path>"`` names (:func:`load_hf`).
* :func:`load_image_folder`, :func:`load_npz` and :func:`load_hf` (a Hugging Face
  dataset saved to disk or as Parquet) load your own data.
* :func:`is_dataset_name` tells a name for :func:`load_dataset` from a path.

All loaders return an :class:`ArrayDataset` (``uint8`` images of shape
``(N, C, H, W)``, channels first, RGB for colour data; or from a ``.npz`` also
``float32`` features of shape ``(N, F)`` or ``(N, T, F)``; ``int64`` labels) and
raise :class:`DatasetError` (a :class:`ValueError`) with a message naming the file
and the problem.

Optional dependencies (the ``harness`` extra): ``pooch`` for downloads,
``platformdirs`` for the cache location, ``Pillow`` for image folders and encoded
images, ``scipy`` for SVHN's ``.mat`` files; the ``hf`` extra: ``pyarrow``.  Each is
imported only when needed.
"""

from __future__ import annotations

from .byod import load_image_folder, load_npz
from .dataset import ArrayDataset, InputKind
from .errors import DatasetError
from .hf import load_hf
from .registry import available_datasets, is_dataset_name
from .sources import load_dataset

__all__ = [
    "ArrayDataset",
    "DatasetError",
    "InputKind",
    "available_datasets",
    "is_dataset_name",
    "load_dataset",
    "load_hf",
    "load_image_folder",
    "load_npz",
]
