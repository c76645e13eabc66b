"""Checksums of dataset files: computing them and refusing content that does not match.

Checksums are written as pooch writes them, ``"md5:<hex>"`` or ``"sha256:<hex>"``, so
the same value verifies a download (pooch checks it before the file is moved into
place) and a local copy (checked here before the file is parsed).  Every refusal is a
:class:`~vicinal.experiments.data.DatasetError` that names the file, what it should
have been, the digest found and the one expected, and, when the digest is that of
another registered file, which one (a swapped or misnamed file).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DatasetError
from .specs import Identify

__all__ = ["ALGORITHMS", "digest_bytes", "digest_file", "mismatch_message", "verify_bytes", "verify_file"]

#: Supported algorithms: pooch prefix -> the name used in messages.
ALGORITHMS = {"md5": "MD5", "sha256": "SHA-256"}
_CHUNK = 1 << 20


def _split(known_hash: str | None, where: str, what: str) -> tuple[str, str]:
    if known_hash is None:
        raise DatasetError(
            f"{where}: no published checksum of {what} is recorded in vicinal's registry, so this copy "
            "cannot be verified and is not used (vicinal never reads or downloads unverified dataset files)"
        )
    algorithm, _, hexdigest = known_hash.partition(":")
    if algorithm not in ALGORITHMS or not hexdigest:
        raise ValueError(f"checksum {known_hash!r} must be 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, hexdigest.lower()


def digest_bytes(data: bytes, algorithm: str) -> str:
    """Hex digest of ``data`` with ``algorithm`` (``"md5"`` or ``"sha256"``)."""
    return hashlib.new(algorithm, data).hexdigest()


def digest_file(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks.

    Raises:
        DatasetError: the file cannot be read.
    """
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    return h.hexdigest()


def mismatch_message(
    where: str, what: str, measured: str, digest: str, expected: str, identify: Identify | None, note: str = ""
) -> str:
    """The refusal for content whose digest is not the expected one.

    Args:
        where: the file (or ``archive:member``) that was read.
        what: what it should have been, e.g. ``"CIFAR-10's test_batch"``.
        measured: what was hashed, e.g. ``"MD5 of the file"``.
        digest, expected: the hex digests found and expected.
        identify: looks ``digest`` up among the registered files (None: no look-up).
        note: an extra remark, e.g. about the file's size.
    """
    other = identify(digest) if identify is not None else None
    if other is not None:
        why = f"it is {other} (wrong folder, or files swapped or misnamed?)"
    else:
        why = "it is a modified, damaged or different file"
    return f"{where}: content does not match {what}: the {measured} is {digest}, expected {expected}{note}; {why}"


def verify_bytes(data: bytes, known_hash: str | None, where: str, what: str, identify: Identify | None) -> None:
    """Raise :class:`DatasetError` unless ``data`` has the checksum ``known_hash``.

    Args:
        data: the content (e.g. one member of an archive).
        known_hash: ``"md5:<hex>"`` or ``"sha256:<hex>"``; None is refused (no published value).
        where: names the content in messages, e.g. ``"/data/cifar-10-python.tar.gz:test_batch"``.
        what: what it should be, e.g. ``"CIFAR-10's test_batch"``.
        identify: see :func:`mismatch_message`.
    """
    algorithm, expected = _split(known_hash, where, what)
    digest = digest_bytes(data, algorithm)
    if digest != expected:
        measured = f"{ALGORITHMS[algorithm]} of the content ({len(data)} bytes)"
        raise DatasetError(mismatch_message(where, what, measured, digest, expected, identify))


def verify_file(
    path: str | os.PathLike[str],
    known_hash: str | None,
    what: str,
    identify: Identify | None,
    size: int | None = None,
) -> None:
    """Raise :class:`DatasetError` unless the file's bytes have the checksum ``known_hash``.

    Args:
        path: the file.
        known_hash: ``"md5:<hex>"`` or ``"sha256:<hex>"``; None is refused (no published value).
        what: what the file should be, e.g. ``"SVHN's train_32x32.mat"``.
        identify: see :func:`mismatch_message`.
        size: the official size in bytes, if known: a shorter file is reported as truncated.
    """
    where = str(path)
    algorithm, expected = _split(known_hash, where, what)
    digest = digest_file(path, algorithm)
    if digest == expected:
        return
    have = Path(path).stat().st_size
    note = f" (the file has {have} bytes"
    if size is not None and have < size:
        note += f", the official file {size}: it is truncated, an interrupted download or copy?)"
    else:
        note += ")"
    measured = f"{ALGORITHMS[algorithm]} of the file"
    raise DatasetError(mismatch_message(where, what, measured, digest, expected, identify, note))
