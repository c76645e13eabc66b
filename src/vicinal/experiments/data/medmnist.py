"""MedMNIST v2 (2-D datasets) from the official ``.npz`` files, at 28x28 and the larger sizes.

Each official file (``pathmnist.npz``; ``pathmnist_64.npz``, ``_128``, ``_224`` for
the larger sizes of MedMNIST+) holds six arrays: ``train_images``, ``train_labels``,
``val_images``, ``val_labels``, ``test_images``, ``test_labels``.  Images are
``uint8`` of shape ``(N, S, S)`` (grey) or ``(N, S, S, 3)`` (RGB); labels are
``(N, 1)`` class ids (``(N, 14)`` 0/1 findings for ChestMNIST).  Every file is
checked against the MD5 published with it (the ``medmnist`` package's ``info.py``,
version 3.0.2) before it is read, with ``allow_pickle=False``.

Tasks:

* ``multi-class`` and ``binary-class``: loaded as they are;
* ``ordinal-regression`` (RetinaMNIST, diabetic retinopathy grades 0..4): loaded as
  5 classes whose ids keep the grade order, which is how MedMNIST's own baselines
  train and evaluate it (cross-entropy; accuracy and AUC);
* ``multi-label`` (ChestMNIST) and the 3-D datasets (``*mnist3d``): refused by name,
  with the reason, before anything is read or downloaded: the harness trains
  single-label classifiers of 2-D images.

The official validation split is appended to the training split (``x_train`` is
train then val, e.g. 89996 + 10004 images for PathMNIST); the harness holds out its
own validation images from ``x_train``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .byod import _images_to_nchw, _labels_to_ids
from .checksums import verify_file
from .dataset import ArrayDataset
from .errors import DatasetError
from .specs import Identify, Part, RemoteFile, published_checksums

__all__ = ["SIZES", "SPECS", "SUPPORTED_TASKS", "MedmnistSpec", "file_name", "read_medmnist_npz", "refusal"]

#: Image sizes published: 28 (MedMNIST v2) and MedMNIST+'s 64, 128 and 224.
SIZES = (28, 64, 128, 224)
#: Tasks that load; see the module docstring.
SUPPORTED_TASKS = ("multi-class", "binary-class", "ordinal-regression")
#: The Zenodo record of MedMNIST+ (all sizes), as the medmnist package downloads it.
ZENODO = "https://zenodo.org/records/10519652/files/{filename}?download=1"
_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def file_name(flag: str, size: int) -> str:
    """The official file name: ``pathmnist.npz`` at 28, ``pathmnist_64.npz`` at 64."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _check_images(x: np.ndarray, key: str, path: str, size: int, channels: int) -> np.ndarray:
    expected = (size, size) if channels == 1 else (size, size, channels)
    if x.dtype != np.uint8 or x.shape[1:] != expected:
        layout = "(N, " + ", ".join(str(d) for d in expected) + ")"
        raise DatasetError(f"{path}: {key!r} must be uint8 images of shape {layout}, got {x.dtype} {x.shape}")
    return _images_to_nchw(x, key, path)


def _check_labels(y: np.ndarray, n: int, key: str, path: str, num_classes: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        raise DatasetError(
            f"{path}: {key!r} has {y.shape[1]} labels per image (shape {y.shape}): a multi-label task, "
            "which vicinal does not support (the harness trains single-label classifiers)"
        )
    ids, _ = _labels_to_ids(y, n, key, path)
    bad = np.flatnonzero(ids >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: {key!r} holds label {int(ids[i])} at index {i}, outside 0..{num_classes - 1}")
    return ids


def read_medmnist_npz(
    path: str | os.PathLike[str], *, image_size: int, n_channels: int, num_classes: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read one MedMNIST ``.npz`` file (not checksum-verified here).

    Args:
        path: the file.
        image_size: the side ``S`` its images must have (28, 64, 128 or 224).
        n_channels: 1 (grey, ``(N, S, S)``) or 3 (RGB, ``(N, S, S, 3)``).
        num_classes: labels must lie in ``0..num_classes-1``.

    Returns:
        ``{"train" | "val" | "test": (images, labels)}``: ``uint8`` of shape
        ``(N, C, S, S)`` (channels first) and ``int64`` of shape ``(N,)``.

    Raises:
        DatasetError: unreadable file, a missing array, images of another dtype or
            shape, multi-label or out-of-range labels, or counts that differ.
    """
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{where}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{where}: a single .npy array, expected a MedMNIST .npz archive")
    with archive:
        missing = [k for k in _KEYS if k not in archive.files]
        if missing:
            raise DatasetError(
                f"{where}: lacks the array(s) {missing} (found {sorted(archive.files)}); expected the official "
                f"MedMNIST layout: {', '.join(_KEYS)}"
            )
        try:
            arrays = {k: archive[k] for k in _KEYS}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DatasetError(f"{where}: an array cannot be read ({exc})") from exc
    out = {}
    for split in ("train", "val", "test"):
        x = _check_images(arrays[f"{split}_images"], f"{split}_images", where, image_size, n_channels)
        y = _check_labels(arrays[f"{split}_labels"], len(x), f"{split}_labels", where, num_classes)
        out[split] = (x, y)
    return out


@dataclass(frozen=True)
class MedmnistSpec:
    """One MedMNIST dataset at one size: its file, published MD5 and classes.

    Attributes:
        name: registry name, ``"medmnist:<flag>"`` or ``"medmnist:<flag>_<size>"``.
        title: e.g. ``"PathMNIST (64x64)"``.
        folder: ``"medmnist"`` (all MedMNIST files share one folder, as in ``~/.medmnist``).
        file: the ``.npz`` file and its MD5.
        flag: the dataset, e.g. ``"pathmnist"``.
        image_size: 28, 64, 128 or 224.
        task: one of :data:`SUPPORTED_TASKS`.
        n_channels: 1 or 3.
        class_names: from ``info.py``, in label order.
        license: the dataset's licence, e.g. ``"CC BY 4.0"``.
        mirrors: URL templates of the file.
    """

    name: str
    title: str
    folder: str
    file: RemoteFile
    flag: str
    image_size: int
    task: str
    n_channels: int
    class_names: tuple[str, ...]
    license: str
    mirrors: tuple[str, ...]
    debian_package: str | None = None

    @property
    def parts(self) -> tuple[Part, ...]:
        return (Part("npz", (self.file.name,), self.file.name, self.file),)

    def checksums(self) -> Iterable[tuple[str, str]]:
        return published_checksums(self.title, (self.file,))

    def load(self, files: Mapping[str, Path], source: str, identify: Identify) -> ArrayDataset:
        """Verify the MD5, read the file, append the validation split to the training split.

        Returns:
            ``x_*`` ``uint8`` of shape ``(N, C, S, S)`` (``C`` = :attr:`n_channels`,
            channels first), ``y_*`` ``int64`` class ids.
        """
        path = files["npz"]
        verify_file(path, self.file.known_hash, f"{self.title}'s {self.file.name}", identify, self.file.size)
        split = read_medmnist_npz(
            path, image_size=self.image_size, n_channels=self.n_channels, num_classes=len(self.class_names)
        )
        x_train = np.concatenate([split["train"][0], split["val"][0]])
        y_train = np.concatenate([split["train"][1], split["val"][1]])
        return ArrayDataset(self.name, x_train, y_train, *split["test"], self.class_names, source)


@dataclass(frozen=True)
class _Info:
    title: str
    task: str
    license: str
    channels: int
    class_names: tuple[str, ...]
    md5: dict[int, str]


# The 11 organs of OrganAMNIST, OrganCMNIST and OrganSMNIST (axial, coronal, sagittal views).
_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

# From medmnist 3.0.2, medmnist/info.py (INFO[flag]: python_class, task, license,
# n_channels, label, MD5, MD5_64, MD5_128, MD5_224).
_INFO: dict[str, _Info] = {
    "pathmnist": _Info(
        "PathMNIST",
        "multi-class",
        "CC BY 4.0",
        3,
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        {
            28: "a8b06965200029087d5bd730944a56c1",
            64: "55aa9c1e0525abe5a6b9d8343a507616",
            128: "ac42d08fb904d92c244187169d1fd1d9",
            224: "2c51a510bcdc9cf8ddb2af93af1eadec",
        },
    ),
    "dermamnist": _Info(
        "DermaMNIST",
        "multi-class",
        "CC BY-NC 4.0",
        3,
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        {
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
    ),
    "octmnist": _Info(
        "OCTMNIST",
        "multi-class",
        "CC BY 4.0",
        1,
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        {
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
    ),
    "pneumoniamnist": _Info(
        "PneumoniaMNIST",
        "binary-class",
        "CC BY 4.0",
        1,
        ("normal", "pneumonia"),
        {
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
    "retinamnist": _Info(
        "RetinaMNIST",
        "ordinal-regression",
        "CC BY 4.0",
        3,
        ("0", "1", "2", "3", "4"),
        {
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
    ),
    "breastmnist": _Info(
        "BreastMNIST",
        "binary-class",
        "CC BY 4.0",
        1,
        ("malignant", "normal, benign"),
        {
            28: "750601b1f35ba3300ea97c75c52ff8f6",
            64: "742edef2a1fd1524b2efff4bd7ba9364",
            128: "363e4b3f8d712e9b5de15470a2aaadf1",
            224: "b56378a6eefa9fed602bb16d192d4c8b",
        },
    ),
    "bloodmnist": _Info(
        "BloodMNIST",
        "multi-class",
        "CC BY 4.0",
        3,
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        {
            28: "7053d0359d879ad8a5505303e11de1dc",
            64: "2b94928a2ae4916078ca51e05b6b800b",
            128: "adace1e0ed228fccda1f39692059dd4c",
            224: "b718ff6835fcbdb22ba9eacccd7b2601",
        },
    ),
    "tissuemnist": _Info(
        "TissueMNIST",
        "multi-class",
        "CC BY 4.0",
        1,
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        {
            28: "ebe78ee8b05294063de985d821c1c34b",
            64: "123ece2eba09d0aa5d698fda57103344",
            128: "61b955355d7425a89687b06cca3ce0c2",
            224: "b077128c4a949f0a4eb01517f9037b9c",
        },
    ),
    "organamnist": _Info(
        "OrganAMNIST",
        "multi-class",
        "CC BY 4.0",
        1,
        _ORGANS,
        {
            28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
            64: "2dcccc29b88e6da5a01161ef20cda288",
            128: "eeae80d0a227a8d099027e1b3cfd3b60",
            224: "50747347e05c87dd3aaf92c49f9f3170",
        },
    ),
    "organcmnist": _Info(
        "OrganCMNIST",
        "multi-class",
        "CC BY 4.0",
        1,
        _ORGANS,
        {
            28: "b9ceb9546e10131b32923c5bbeaea2b1",
            64: "3ce34a8724ea6f548e6db4744d03b6a9",
            128: "773c1f009daa3fe5d9a2a201b2a7ed94",
            224: "050f5e875dc056f6768abf94ec9995d1",
        },
    ),
    "organsmnist": _Info(
        "OrganSMNIST",
        "multi-class",
        "CC BY 4.0",
        1,
        _ORGANS,
        {
            28: "9ab87b696fb54e2a387ebe992d6ed5f1",
            64: "53a6d115339d874c25e309a994ff46d3",
            128: "ded0c5fa01a95dc4978b956f613e9b8e",
            224: "b354719e553fbbb2513d5533f52a4cb1",
        },
    ),
}

#: Known MedMNIST datasets that are not loaded, with the reason (checked before any download).
_REFUSED = {
    "chestmnist": (
        "ChestMNIST is a multi-label task (14 binary findings per X-ray, labels of shape (N, 14)); "
        "vicinal's harness trains single-label classifiers, so it is not supported"
    ),
    **{
        flag: f"{flag} is a 3-D MedMNIST dataset (28x28x28 or 64x64x64 volumes); vicinal's harness trains on "
        "2-D images, so it is not supported"
        for flag in (
            "organmnist3d",
            "nodulemnist3d",
            "adrenalmnist3d",
            "fracturemnist3d",
            "vesselmnist3d",
            "synapsemnist3d",
        )
    },
}


def refusal(name: str) -> str | None:
    """Why a known MedMNIST name (e.g. ``"medmnist:chestmnist_64"``) is not loaded, or None."""
    prefix, _, rest = name.strip().lower().partition(":")
    if prefix != "medmnist":
        return None
    flag = rest.replace("-", "_").split("_")[0]
    reason = _REFUSED.get(flag)
    return None if reason is None else f"dataset {name!r}: {reason}"


def _specs() -> tuple[MedmnistSpec, ...]:
    specs = []
    for flag, info in _INFO.items():
        for size in SIZES:
            stem = file_name(flag, size).removesuffix(".npz")
            title = info.title if size == 28 else f"{info.title} ({size}x{size})"
            specs.append(
                MedmnistSpec(
                    name=f"medmnist:{stem}",
                    title=title,
                    folder="medmnist",
                    file=RemoteFile(file_name(flag, size), f"md5:{info.md5[size]}"),
                    flag=flag,
                    image_size=size,
                    task=info.task,
                    n_channels=info.channels,
                    class_names=info.class_names,
                    license=info.license,
                    mirrors=(ZENODO,),
                )
            )
    return tuple(specs)


#: The registry entries defined here: every 2-D dataset at every size.
SPECS: tuple[MedmnistSpec, ...] = _specs()
