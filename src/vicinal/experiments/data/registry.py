"""Known datasets: file names, checksums, class names and download mirrors.

:data:`REGISTRY` maps each name accepted by
:func:`~vicinal.experiments.data.load_dataset` to a
:class:`~vicinal.experiments.data.specs.SourceSpec`:

* ``fashion-mnist``, ``mnist``: :class:`DatasetSpec` (four IDX files), below;
* ``cifar10``, ``cifar100``, ``cifar100:coarse``: :mod:`.cifar`;
* ``svhn``: :mod:`.svhn`;
* ``medmnist:<flag>`` and ``medmnist:<flag>_<size>``: :mod:`.medmnist`.

For the IDX datasets two checksums are kept per file:

* ``sha256``: SHA-256 of the *decompressed* IDX content.  This is what the
  loader verifies, because redistributors (Debian's ``dataset-fashion-mnist``
  package, for one) rewrite gzip headers, which changes the ``.gz`` bytes
  but not the content.
* ``gz_sha256`` / ``gz_size``: the official ``.gz`` file as served by the
  canonical mirrors; used only to verify downloads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import cifar, medmnist, svhn
from .checksums import mismatch_message
from .dataset import ArrayDataset
from .errors import DatasetError
from .idx import check_pair, parse_idx_images, parse_idx_labels, read_idx_bytes
from .specs import Identify, Part, RemoteFile, SourceSpec

__all__ = [
    "PREFIXES",
    "REGISTRY",
    "DatasetSpec",
    "IdxFile",
    "available_datasets",
    "get_spec",
    "is_dataset_name",
]

logger = logging.getLogger(__name__)

# Load order: small files first, so a wrong or swapped copy is caught cheaply.
_ROLES = ("train_labels", "test_labels", "test_images", "train_images")


@dataclass(frozen=True)
class IdxFile:
    """One IDX file of a dataset.

    Attributes:
        name: file name without ``.gz``, e.g. ``"train-images-idx3-ubyte"``.
        sha256: SHA-256 (hex) of the decompressed content.
        gz_sha256: SHA-256 (hex) of the official gzipped file.
        gz_size: size in bytes of the official gzipped file.
    """

    name: str
    sha256: str
    gz_sha256: str
    gz_size: int

    @property
    def gz_name(self) -> str:
        """The official (gzipped) file name."""
        return self.name + ".gz"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, download and verify one IDX dataset."""

    name: str
    title: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]
    debian_package: str | None = None

    @property
    def files(self) -> tuple[IdxFile, ...]:
        """The four files: train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    @property
    def folder(self) -> str:
        """Sub-folder holding the files: the dataset's name."""
        return self.name

    @property
    def parts(self) -> tuple[Part, ...]:
        """Each file, gzipped (preferred) or raw; downloads fetch the official ``.gz``."""
        return tuple(
            Part(
                f.name, (f.gz_name, f.name), f"{f.name}[.gz]", RemoteFile(f.gz_name, f"sha256:{f.gz_sha256}", f.gz_size)
            )
            for f in self.files
        )

    def checksums(self) -> Iterable[tuple[str, str]]:
        """The SHA-256 of each file's decompressed content."""
        return ((f.sha256, f"{self.title}'s {f.name}") for f in self.files)

    def load(self, files: Mapping[str, Path], source: str, identify: Identify) -> ArrayDataset:
        """Read, checksum and parse the four files.

        Returns:
            ``x_*`` ``uint8`` of shape ``(N, 1, rows, cols)``, ``y_*`` ``int64``.

        Raises:
            DatasetError: a damaged, wrong or mismatched file, named.
        """
        parsed = {}
        for role in _ROLES:
            f: IdxFile = getattr(self, role)
            path = files[f.name]
            data = read_idx_bytes(path)
            # Structure first (its errors say more, e.g. "truncated"), then the checksum.
            if role.endswith("images"):
                images = parse_idx_images(data, str(path))
                parsed[role] = images.reshape(len(images), 1, *images.shape[1:])
            else:
                parsed[role] = parse_idx_labels(data, str(path), len(self.class_names))
            digest = hashlib.sha256(data).hexdigest()
            if digest != f.sha256:
                measured = "SHA-256 of the decompressed data"
                what = f"{self.title}'s {f.name}"
                raise DatasetError(mismatch_message(str(path), what, measured, digest, f.sha256, identify))
            del data
        for split in ("train", "test"):
            check_pair(
                parsed[f"{split}_images"],
                parsed[f"{split}_labels"],
                str(files[getattr(self, f"{split}_images").name]),
                str(files[getattr(self, f"{split}_labels").name]),
            )
        logger.debug("loaded %s from %s", self.name, source)
        return ArrayDataset(
            name=self.name,
            x_train=parsed["train_images"],
            y_train=parsed["train_labels"],
            x_test=parsed["test_images"],
            y_test=parsed["test_labels"],
            class_names=self.class_names,
            source=source,
        )


REGISTRY: dict[str, SourceSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        train_images=IdxFile(
            "train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            26421880,
        ),
        train_labels=IdxFile(
            "train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            29515,
        ),
        test_images=IdxFile(
            "t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            4422102,
        ),
        test_labels=IdxFile(
            "t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            5148,
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        debian_package="dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        train_images=IdxFile(
            "train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9912422,
        ),
        train_labels=IdxFile(
            "train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28881,
        ),
        test_images=IdxFile(
            "t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1648877,
        ),
        test_labels=IdxFile(
            "t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4542,
        ),
        class_names=tuple(str(i) for i in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        debian_package=None,
    ),
}


_FORMATS: tuple[SourceSpec, ...] = (*cifar.SPECS, *svhn.SPECS, *medmnist.SPECS)
REGISTRY.update((spec.name, spec) for spec in _FORMATS)

#: Name prefixes whose names the data room resolves (also when the rest is unknown,
#: so that a typo gets the data room's message, not "no such file").
PREFIXES = ("hf:", "medmnist:", "cifar100:")


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`vicinal.experiments.data.load_dataset`, sorted.

    Besides these, ``"hf:<path>"`` names a Hugging Face dataset on disk (see
    :func:`vicinal.experiments.data.load_hf`).
    """
    return tuple(sorted(REGISTRY))


def is_dataset_name(name: str) -> bool:
    """Whether :func:`~vicinal.experiments.data.load_dataset` should resolve ``name``.

    True for every registered name (case-insensitive, ``_`` and ``-`` equivalent)
    and every name starting with ``hf:``, ``medmnist:`` or ``cifar100:``, including
    ones that it will refuse with an explanation (``medmnist:chestmnist``); False for
    anything else (a path to a ``.npz`` file or an image folder, say).
    """
    if not isinstance(name, str):
        return False
    key = _normalise(name)
    return key.startswith(PREFIXES) or any(_normalise(k) == key for k in REGISTRY)


def _known_names() -> str:
    plain = [k for k in available_datasets() if not k.startswith("medmnist:")]
    flags = sorted({spec.flag for spec in REGISTRY.values() if isinstance(spec, medmnist.MedmnistSpec)})
    sizes = "|".join(f"_{s}" for s in medmnist.SIZES[1:])
    return (
        f"{', '.join(plain)}, medmnist:<name>[{sizes}] with <name> one of {', '.join(flags)}, "
        "and hf:<path> for a Hugging Face dataset on disk"
    )


def get_spec(name: str) -> SourceSpec:
    """Look a dataset up by name (case-insensitive; ``_`` and ``-`` are equivalent).

    Raises:
        DatasetError: the name is unknown, or known but not supported (multi-label
            or 3-D MedMNIST datasets), with the reason.
    """
    key = _normalise(name)
    for registered, spec in REGISTRY.items():
        if _normalise(registered) == key:
            return spec
    reason = medmnist.refusal(str(name))
    if reason is not None:
        raise DatasetError(reason)
    raise DatasetError(
        f"unknown dataset {name!r}; known datasets: {_known_names()}. "
        "For your own data use load_image_folder() or load_npz()."
    )
