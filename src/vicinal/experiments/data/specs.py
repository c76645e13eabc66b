"""What every registered dataset tells the search in :mod:`~vicinal.experiments.data.sources`.

A registered dataset (an entry of :data:`~vicinal.experiments.data.registry.REGISTRY`)
is described by a :class:`SourceSpec`: which files (:class:`Part`) make one complete
copy, where to download each (:class:`RemoteFile`, with the published checksum that
the download must match), and how to read and verify a copy that was found.  The
search itself (explicit folder, environment variable, Debian location, user cache,
download) is the same for every format and lives in :mod:`.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .dataset import ArrayDataset

__all__ = ["Identify", "Part", "RemoteFile", "SourceSpec", "published_checksums"]

#: Looks a hex digest up among every registered file: ``"CIFAR-10's test_batch"``, or None.
Identify = Callable[[str], "str | None"]


@dataclass(frozen=True)
class RemoteFile:
    """One file as served by the dataset's mirrors.

    Attributes:
        name: the official file name, e.g. ``"cifar-10-python.tar.gz"``.
        known_hash: the published checksum in pooch's notation, ``"md5:<hex>"`` or
            ``"sha256:<hex>"``; None when no published value is known, in which case
            the file is never downloaded (vicinal does not accept unverified downloads).
        size: the size in bytes, when it is known (used only in messages).
    """

    name: str
    known_hash: str | None
    size: int | None = None


def published_checksums(title: str, files: Iterable[RemoteFile]) -> Iterator[tuple[str, str]]:
    """``(hex digest, "<title>'s <file name>")`` for each file with a known checksum."""
    for f in files:
        if f.known_hash is not None:
            yield f.known_hash.partition(":")[2], f"{title}'s {f.name}"


@dataclass(frozen=True)
class Part:
    """One required piece of a complete local copy.

    Attributes:
        key: the name :meth:`SourceSpec.load` receives the found path under.
        candidates: names to look for in a folder, preferred first; a name ending in
            ``/`` is a folder (e.g. the extracted ``cifar-10-batches-py/``), any other
            a file.
        label: how messages name the piece, e.g. ``"train-images-idx3-ubyte[.gz]"``.
        download: the file to fetch when no local copy is found (None: not downloadable).
    """

    key: str
    candidates: tuple[str, ...]
    label: str
    download: RemoteFile | None


class SourceSpec(Protocol):
    """A registered dataset: how to find, download, verify and read it."""

    @property
    def name(self) -> str:
        """The registry name, e.g. ``"cifar10"`` or ``"medmnist:pathmnist_64"``."""
        ...

    @property
    def title(self) -> str:
        """The name people use, e.g. ``"CIFAR-10"``."""
        ...

    @property
    def folder(self) -> str:
        """Sub-folder (of a data folder, the Debian location and the cache) that holds the files."""
        ...

    @property
    def mirrors(self) -> tuple[str, ...]:
        """Base URLs of the official mirrors, tried in order (``{filename}`` is substituted if present)."""
        ...

    @property
    def debian_package(self) -> str | None:
        """The Debian package that installs the files into ``/usr/share/datasets/<folder>``, if any."""
        ...

    @property
    def parts(self) -> tuple[Part, ...]:
        """The pieces that make one complete copy."""
        ...

    def checksums(self) -> Iterable[tuple[str, str]]:
        """``(hex digest, description)`` of every file this dataset verifies, for identifying strays."""
        ...

    def load(self, files: Mapping[str, Path], source: str, identify: Identify) -> ArrayDataset:
        """Verify and read the found pieces (``files`` maps each :attr:`Part.key` to its path).

        Raises :class:`~vicinal.experiments.data.DatasetError` naming the file on any problem.
        """
        ...
