"""CIFAR-10 and CIFAR-100 from the official "python version" tarballs.

The tarballs (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``, from
https://www.cs.toronto.edu/~kriz/cifar.html) hold pickled Python 2 dicts:

* CIFAR-10, folder ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``
  (training, 10000 images each) and ``test_batch`` (10000), each
  ``{b'data': uint8 (N, 3072), b'labels': [N ints], b'batch_label', b'filenames'}``;
  ``batches.meta`` with ``b'label_names'`` (10 names);
* CIFAR-100, folder ``cifar-100-python/``: ``train`` (50000) and ``test`` (10000),
  each with ``b'data'``, ``b'fine_labels'`` (0..99) and ``b'coarse_labels'``
  (0..19, the 20 superclasses); ``meta`` with ``b'fine_label_names'`` and
  ``b'coarse_label_names'``.

A row of ``b'data'`` is one 32x32 image: the 1024 red values, then green, then
blue, each plane row by row, so ``data.reshape(N, 3, 32, 32)`` is the image in
channels-first order.

A local copy may be the tarball or the folder it extracts to (as torchvision and
Keras leave it).  Either way every member is checked against its published MD5
(torchvision's ``cifar.py``) *before* it is unpickled, and unpickling allows only
the NumPy array constructors the official files use, so a file that is not the
official one is refused without running any code from it.  A download is checked
against the tarball's MD5 published on the CIFAR page.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checksums import verify_bytes
from .dataset import ArrayDataset
from .errors import DatasetError
from .specs import Identify, Part, RemoteFile, published_checksums

__all__ = ["SPECS", "CifarMember", "CifarSpec"]

_ROLES = ("train", "test", "meta")
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarMember:
    """One file of the extracted folder.

    Attributes:
        role: ``"train"``, ``"test"`` or ``"meta"``.
        name: its name inside the folder, e.g. ``"data_batch_1"``.
        md5: its published MD5 (hex).
    """

    role: str
    name: str
    md5: str


@dataclass(frozen=True)
class CifarSpec:
    """A CIFAR dataset: its tarball, the members inside it, and which labels to read.

    Attributes:
        name: registry name (``"cifar10"``, ``"cifar100"``, ``"cifar100:coarse"``).
        title: e.g. ``"CIFAR-100 (coarse labels)"``.
        folder: sub-folder of data folders and of the cache (shared by both CIFAR-100 names).
        archive: the official tarball and its published MD5.
        base_folder: the folder inside the tarball, e.g. ``"cifar-10-batches-py"``.
        members: the batches and the meta file, with their MD5s.
        label_key: the labels read from each batch (``b"labels"``, ``b"fine_labels"``, ``b"coarse_labels"``).
        names_key: the class names read from the meta file.
        mirrors: base URLs of the tarball.
        debian_package: none packages CIFAR; kept for the common interface.
    """

    name: str
    title: str
    folder: str
    archive: RemoteFile
    base_folder: str
    members: tuple[CifarMember, ...]
    label_key: bytes
    names_key: bytes
    mirrors: tuple[str, ...]
    debian_package: str | None = None

    @property
    def parts(self) -> tuple[Part, ...]:
        label = f"{self.archive.name} (or the {self.base_folder}/ folder it extracts to)"
        return (Part("archive", (self.archive.name, self.base_folder + "/"), label, self.archive),)

    def checksums(self) -> Iterable[tuple[str, str]]:
        yield from published_checksums(self.title, (self.archive,))
        for m in self.members:
            yield m.md5, f"{self.title}'s {self.base_folder}/{m.name}"

    def load(self, files: Mapping[str, Path], source: str, identify: Identify) -> ArrayDataset:
        """Verify every member's MD5, then unpickle and check the layout.

        Returns:
            ``x_*`` ``uint8`` of shape ``(N, 3, 32, 32)`` (channels first, RGB), ``y_*``
            ``int64`` class ids; CIFAR-10 50000/10000 images, CIFAR-100 50000/10000.
        """
        path = files["archive"]
        contents = _read_folder(path, self) if path.is_dir() else _read_tarball(path, self)
        by_role: dict[str, list[tuple[str, Any]]] = {role: [] for role in _ROLES}
        for m in self.members:
            where, data = contents[m.name]
            verify_bytes(data, f"md5:{m.md5}", where, f"{self.title}'s {self.base_folder}/{m.name}", identify)
            by_role[m.role].append((where, _unpickle(data, where)))
        (meta_where, meta), *_ = by_role["meta"]
        class_names = _class_names(meta, self.names_key, meta_where)
        split: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for role in ("train", "test"):
            arrays = [_batch(obj, where, self.label_key, len(class_names)) for where, obj in by_role[role]]
            split[role] = (np.concatenate([x for x, _ in arrays]), np.concatenate([y for _, y in arrays]))
        return ArrayDataset(self.name, *split["train"], *split["test"], class_names, source)


# --------------------------------------------------------------------------- reading


def _read_tarball(path: Path, spec: CifarSpec) -> dict[str, tuple[str, bytes]]:
    """``{member name: (where, bytes)}`` of the spec's members, read from the tarball."""
    wanted = {f"{spec.base_folder}/{m.name}": m.name for m in spec.members}
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = wanted.get(info.name.removeprefix("./"))
                if name is None or not info.isfile():
                    continue
                f = tar.extractfile(info)
                if f is not None:
                    found[name] = (f"{path}:{info.name}", f.read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(
            f"{path}: cannot be read to the end as a tar archive ({type(exc).__name__}: {exc}): the file is "
            f"truncated or corrupt (an interrupted download or copy?); replace it with the official {spec.archive.name}"
        ) from exc
    missing = [n for n in wanted if wanted[n] not in found]
    if missing:
        raise DatasetError(
            f"{path}: the archive lacks {', '.join(missing)}; expected the official {spec.archive.name}, "
            f"whose {spec.base_folder}/ holds {', '.join(m.name for m in spec.members)}"
        )
    return found


def _read_folder(path: Path, spec: CifarSpec) -> dict[str, tuple[str, bytes]]:
    """``{member name: (where, bytes)}`` of the spec's members, read from the extracted folder."""
    found: dict[str, tuple[str, bytes]] = {}
    missing = []
    for m in spec.members:
        p = path / m.name
        if not p.is_file():
            missing.append(m.name)
            continue
        try:
            found[m.name] = (str(p), p.read_bytes())
        except OSError as exc:
            raise DatasetError(f"{p}: cannot read the file ({exc.strerror or exc})") from exc
    if missing:
        raise DatasetError(
            f"{path}: incomplete extracted {spec.title} folder: lacks {', '.join(missing)}; "
            f"extract the official {spec.archive.name} again, or put the tarball itself next to it"
        )
    return found


# --------------------------------------------------------------------------- unpickling


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")  # NumPy >= 2
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    multiarray = _multiarray()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; any other global is refused."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch") from None


def _unpickle(data: bytes, where: str) -> Any:
    try:
        return _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # pickle raises many types on malformed input
        raise DatasetError(f"{where}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- layout


def _need_dict(obj: Any, where: str, keys: tuple[bytes, ...]) -> dict[Any, Any]:
    wanted = ", ".join(repr(k) for k in keys)
    if not isinstance(obj, dict):
        raise DatasetError(
            f"{where}: expected a pickled dict with keys {wanted} (the official CIFAR layout), got {type(obj).__name__}"
        )
    missing = [repr(k) for k in keys if k not in obj]
    if missing:
        found = ", ".join(sorted(repr(k) for k in obj))
        raise DatasetError(
            f"{where}: the pickled dict lacks {', '.join(missing)} (found {found}); "
            f"expected the official CIFAR layout with {wanted}"
        )
    return obj


def _class_names(meta: Any, key: bytes, where: str) -> tuple[str, ...]:
    names = _need_dict(meta, where, (key,))[key]
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{where}: {key!r} must be a non-empty list of class names, got {type(names).__name__}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _batch(obj: Any, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 (N, 3, 32, 32), int64 (N,))`` from one pickled batch, checked."""
    batch = _need_dict(obj, where, (b"data", label_key))
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"{where}: b'data' must be a uint8 array of shape (N, {_PIXELS}) (one 3x32x32 image per row), got {got}"
        )
    labels = np.asarray(batch[label_key])
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{where}: {label_key!r} must be a list of integer class ids, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(data):
        raise DatasetError(f"{where}: {len(data)} images in b'data' but {len(labels)} labels in {label_key!r}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{where}: label {int(labels[i])} at index {i} in {label_key!r} is outside 0..{num_classes - 1} "
            f"({num_classes} class names in the meta file)"
        )
    return data.reshape(len(data), 3, 32, 32), labels.astype(np.int64)


# --------------------------------------------------------------------------- registry entries

# Tarball MD5s: published on https://www.cs.toronto.edu/~kriz/cifar.html ("python version");
# member MD5s: torchvision/datasets/cifar.py (torchvision 0.29.1), the values its loader checks.
_CIFAR_PAGE = ("https://www.cs.toronto.edu/~kriz/",)
_CIFAR10_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a")
_CIFAR10_MEMBERS = (
    CifarMember("train", "data_batch_1", "c99cafc152244af753f735de768cd75f"),
    CifarMember("train", "data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    CifarMember("train", "data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    CifarMember("train", "data_batch_4", "634d18415352ddfa80567beed471001a"),
    CifarMember("train", "data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    CifarMember("test", "test_batch", "40351d587109b95175f43aff81a1287e"),
    CifarMember("meta", "batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
)
_CIFAR100_ARCHIVE = RemoteFile("cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85")
_CIFAR100_MEMBERS = (
    CifarMember("train", "train", "16019d7e3df5f24257cddd939b257f8d"),
    CifarMember("test", "test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    CifarMember("meta", "meta", "7973b15100ade9c7d40fb424638fde48"),
)

#: The registry entries defined here.
SPECS: tuple[CifarSpec, ...] = (
    CifarSpec(
        "cifar10",
        "CIFAR-10",
        "cifar10",
        _CIFAR10_ARCHIVE,
        "cifar-10-batches-py",
        _CIFAR10_MEMBERS,
        b"labels",
        b"label_names",
        _CIFAR_PAGE,
    ),
    CifarSpec(
        "cifar100",
        "CIFAR-100",
        "cifar100",
        _CIFAR100_ARCHIVE,
        "cifar-100-python",
        _CIFAR100_MEMBERS,
        b"fine_labels",
        b"fine_label_names",
        _CIFAR_PAGE,
    ),
    CifarSpec(
        "cifar100:coarse",
        "CIFAR-100 (coarse labels)",
        "cifar100",
        _CIFAR100_ARCHIVE,
        "cifar-100-python",
        _CIFAR100_MEMBERS,
        b"coarse_labels",
        b"coarse_label_names",
        _CIFAR_PAGE,
    ),
)
