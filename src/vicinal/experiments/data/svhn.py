"""SVHN (Street View House Numbers), the cropped-digits ``.mat`` files.

The official files ``train_32x32.mat`` (73257 digits) and ``test_32x32.mat``
(26032), from http://ufldl.stanford.edu/housenumbers/, are MATLAB v5 files with two
variables: ``X``, ``uint8`` of shape ``(32, 32, 3, N)`` (height, width, RGB, sample),
and ``y``, of shape ``(N, 1)`` with the digit, except that the digit 0 has label 10.
They are read with :func:`scipy.io.loadmat` after their MD5 (the values torchvision's
``svhn.py`` checks) has matched.  The 531131 "extra" digits are not used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checksums import verify_file
from .dataset import ArrayDataset
from .errors import DatasetError
from .specs import Identify, Part, RemoteFile, published_checksums

__all__ = ["SPECS", "SvhnSpec", "read_svhn_mat"]


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN cropped-digits ``.mat`` file (not checksum-verified here).

    Returns:
        ``(images, labels)``: ``uint8`` of shape ``(N, 3, H, W)`` (channels first, RGB;
        ``H = W = 32`` in the official files) and ``int64`` digits 0..9 of shape
        ``(N,)`` (the file's label 10 becomes 0).

    Raises:
        DatasetError: not a readable MATLAB file, ``X`` or ``y`` missing, ``X`` not
            ``uint8`` of shape ``(H, W, 3, N)``, ``y`` not ``N`` whole numbers in 1..10.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(os.fspath(path))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError, TypeError, ...
        raise DatasetError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(
            f"{path}: lacks the variable(s) {missing} (found {found}); expected the official SVHN "
            "layout: X (32, 32, 3, N) uint8 images and y (N, 1) labels 1..10"
        )
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetError(f"{path}: X must be uint8 of shape (H, W, 3, N), got {x.dtype} {x.shape}")
    n = x.shape[3]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: y must be numeric of shape (N, 1), got {y.dtype} {mat['y'].shape}")
    if len(y) != n:
        raise DatasetError(f"{path}: X holds {n} images but y holds {len(y)} labels")
    bad = np.flatnonzero((y < 1) | (y > 10) | (y != np.round(y)))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{path}: label {y[i].item()!r} at index {i} is not one of 1..10 (SVHN labels the digit 0 as 10; "
            f"{bad.size} labels are invalid)"
        )
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, (y.astype(np.int64) % 10)


@dataclass(frozen=True)
class SvhnSpec:
    """SVHN's two cropped-digits files and their published MD5s."""

    name: str
    title: str
    folder: str
    train: RemoteFile
    test: RemoteFile
    mirrors: tuple[str, ...]
    debian_package: str | None = None

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(Part(f.name, (f.name,), f.name, f) for f in (self.train, self.test))

    def checksums(self) -> Iterable[tuple[str, str]]:
        return published_checksums(self.title, (self.train, self.test))

    def load(self, files: Mapping[str, Path], source: str, identify: Identify) -> ArrayDataset:
        """Verify both files' MD5s, then read them.

        Returns:
            ``x_*`` ``uint8`` ``(N, 3, 32, 32)`` (channels first, RGB), ``y_*`` ``int64``
            digits 0..9 (73257 training and 26032 test digits in the official files).
        """
        arrays = []
        for f in (self.test, self.train):  # the smaller file first: a wrong copy is caught cheaply
            path = files[f.name]
            verify_file(path, f.known_hash, f"{self.title}'s {f.name}", identify, f.size)
            arrays.append(read_svhn_mat(path))
        (x_test, y_test), (x_train, y_train) = arrays
        return ArrayDataset(self.name, x_train, y_train, x_test, y_test, tuple(str(d) for d in range(10)), source)


#: The registry entries defined here (MD5s: torchvision/datasets/svhn.py, torchvision 0.29.1).
SPECS: tuple[SvhnSpec, ...] = (
    SvhnSpec(
        "svhn",
        "SVHN",
        "svhn",
        RemoteFile("train_32x32.mat", "md5:e26dedcc434d2e4c54c9b2d4a06d8373"),
        RemoteFile("test_32x32.mat", "md5:eb5a983be6a315427106f1b164d9cef3"),
        ("http://ufldl.stanford.edu/housenumbers/",),
    ),
)
