"""Strict reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file starts with a big-endian header: a 4-byte magic number (two
zero bytes, a type code, the number of dimensions), then one 4-byte size per
dimension, then the payload in C order.  Only the two variants used by the
MNIST family are accepted:

* images: magic 2051 (``0x00000803``: uint8, 3 dimensions), then count,
  rows, cols, then ``count * rows * cols`` uint8 pixels;
* labels: magic 2049 (``0x00000801``: uint8, 1 dimension), then count, then
  ``count`` uint8 labels.

Files may be gzipped or raw.  Compression is detected from the content (the
gzip magic bytes), not from the file name, so a ``.gz`` file that a browser
already decompressed still loads.  Every inconsistency (truncated or corrupt
gzip stream, wrong magic, payload shorter or longer than the header says,
image/label count mismatch, label out of range) raises
:class:`~vicinal.experiments.data.DatasetError` naming the file; nothing is silently
truncated or padded.  Parsing uses :func:`numpy.frombuffer`, with no
per-sample Python work.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

__all__ = [
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "check_pair",
    "parse_idx_images",
    "parse_idx_labels",
    "read_idx_bytes",
    "read_idx_pair",
]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"

_TYPE_CODES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file and return its content, gunzipped if it is a gzip stream.

    Args:
        path: a gzipped (``*.gz``) or raw IDX file.

    Returns:
        The decompressed bytes (for a raw file, the bytes as stored).

    Raises:
        DatasetError: the file cannot be read, or the gzip stream is
            truncated, fails its CRC/length check or is otherwise corrupt.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DatasetError(
            f"{path}: truncated gzip stream: the file ({len(raw)} bytes) ends before the "
            "end of the compressed data (an interrupted download or copy?)"
        ) from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DatasetError(f"{path}: corrupt gzip stream ({exc}); the file is damaged, replace it") from exc


def _describe_magic(magic: int) -> str:
    if magic == IMAGES_MAGIC:
        return "an IDX images file (magic 2051)"
    if magic == LABELS_MAGIC:
        return "an IDX labels file (magic 2049)"
    b = magic.to_bytes(4, "big")
    if b[:2] == b"\x00\x00" and b[2] in _TYPE_CODES:
        return f"an IDX file of {_TYPE_CODES[b[2]]} with {b[3]} dimension(s) (magic {magic})"
    return f"not an IDX file (first bytes {b.hex(' ')})"


def _header(data: bytes, source: str, magic: int, ndim: int, what: str) -> tuple[int, ...]:
    size = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(
            f"{source}: too short to be an IDX file ({len(data)} bytes); expected {what} with magic {magic}"
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{source}: wrong magic number {found}: expected {magic} ({what}), but this is {_describe_magic(found)}"
        )
    if len(data) < size:
        raise DatasetError(
            f"{source}: truncated header: {what} need a {size}-byte header, the content has only {len(data)} bytes"
        )
    return tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _check_payload(data: bytes, source: str, header_size: int, expected: int, what: str) -> None:
    have = len(data) - header_size
    if have < expected:
        raise DatasetError(
            f"{source}: the header announces {what} ({expected} bytes of payload) but only "
            f"{have} bytes follow the header: the content is truncated"
        )
    if have > expected:
        raise DatasetError(
            f"{source}: the header announces {what} ({expected} bytes of payload) but "
            f"{have - expected} extra bytes follow: the header count does not match the data"
        )


def parse_idx_images(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX image content.

    Args:
        data: the whole decompressed file content.
        source: a name for the content (usually the file path), used in errors.

    Returns:
        A new, writable ``uint8`` array of shape ``(count, rows, cols)``.

    Raises:
        DatasetError: wrong magic, truncated header, zero-sized images, or a
            payload shorter or longer than ``count * rows * cols``.
    """
    what = "uint8 images (magic 2051, then count, rows, cols)"
    count, rows, cols = _header(data, source, IMAGES_MAGIC, 3, what)
    if rows == 0 or cols == 0:
        raise DatasetError(f"{source}: invalid image size {rows}x{cols} in the IDX header")
    n_pixels = count * rows * cols
    _check_payload(data, source, 16, n_pixels, f"{count} images of {rows}x{cols}")
    pixels = np.frombuffer(data, dtype=np.uint8, count=n_pixels, offset=16)
    return pixels.reshape(count, rows, cols).copy()


def parse_idx_labels(data: bytes, source: str = "<bytes>", num_classes: int | None = None) -> np.ndarray:
    """Parse decompressed IDX label content.

    Args:
        data: the whole decompressed file content.
        source: a name for the content (usually the file path), used in errors.
        num_classes: if given, every label must lie in ``[0, num_classes)``.

    Returns:
        A new ``int64`` array of shape ``(count,)``.

    Raises:
        DatasetError: wrong magic, truncated header, payload length not equal
            to ``count``, or a label outside ``[0, num_classes)``.
    """
    what = "uint8 labels (magic 2049, then count)"
    (count,) = _header(data, source, LABELS_MAGIC, 1, what)
    _check_payload(data, source, 8, count, f"{count} labels")
    labels = np.frombuffer(data, dtype=np.uint8, count=count, offset=8).astype(np.int64)
    if num_classes is not None and count:
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{source}: label {int(labels[i])} at index {i} is out of range: expected "
                f"class ids 0..{num_classes - 1} ({bad.size} labels out of range)"
            )
    return labels


def check_pair(images: np.ndarray, labels: np.ndarray, images_source: str, labels_source: str) -> None:
    """Raise :class:`DatasetError` unless there is exactly one label per image."""
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_source} holds {len(images)} images but {labels_source} holds "
            f"{len(labels)} labels: the image and label files do not belong together"
        )


def read_idx_pair(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file (gzipped or raw).

    Returns:
        ``(images, labels)``: ``uint8`` of shape ``(N, rows, cols)`` and
        ``int64`` of shape ``(N,)``.

    Raises:
        DatasetError: any problem in either file, or differing counts.
    """
    images = parse_idx_images(read_idx_bytes(images_path), str(images_path))
    labels = parse_idx_labels(read_idx_bytes(labels_path), str(labels_path), num_classes)
    check_pair(images, labels, str(images_path), str(labels_path))
    return images, labels
