"""The strict IDX parser: round trips and every kind of damaged input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vicinal.experiments.data import DatasetError
from vicinal.experiments.data.idx import (
    parse_idx_images,
    parse_idx_labels,
    read_idx_bytes,
    read_idx_pair,
)


@pytest.fixture
def pair(tools):
    x = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    y = np.array([0, 2, 1])
    return x, y, tools.idx_images(x), tools.idx_labels(y)


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(0, 5), st.integers(1, 6), st.integers(1, 6)),
    ),
    st.booleans(),
)
def test_images_round_trip(tmp_path_factory, tools, x, compressed):
    data = tools.idx_images(x)
    path = tmp_path_factory.mktemp("rt") / "f"
    path.write_bytes(tools.gz(data) if compressed else data)
    got = parse_idx_images(read_idx_bytes(path), str(path))
    assert got.dtype == np.uint8 and got.shape == x.shape
    np.testing.assert_array_equal(got, x)
    assert got.flags.writeable


def test_pair_gz_and_raw(tmp_path, tools, pair):
    x, y, xi, yi = pair
    (tmp_path / "img.gz").write_bytes(tools.gz(xi))
    (tmp_path / "lab").write_bytes(yi)
    gx, gy = read_idx_pair(tmp_path / "img.gz", tmp_path / "lab", num_classes=3)
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    assert gy.dtype == np.int64


def test_gz_name_with_raw_content_is_read_by_content(tmp_path, pair):
    # e.g. a browser that transparently decompressed a download but kept ".gz"
    _, _, xi, _ = pair
    (tmp_path / "img.gz").write_bytes(xi)
    assert parse_idx_images(read_idx_bytes(tmp_path / "img.gz")).shape == (3, 4, 5)


def test_truncated_gzip(tmp_path, tools, pair):
    blob = tools.gz(pair[2])
    path = tmp_path / "img.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"img\.gz: truncated gzip stream"):
        read_idx_bytes(path)


def test_crc_failure(tmp_path, tools, pair):
    blob = bytearray(tools.gz(pair[2]))
    blob[-8] ^= 0xFF  # first byte of the CRC32 trailer
    path = tmp_path / "img.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=r"img\.gz: corrupt gzip stream \(CRC check failed"):
        read_idx_bytes(path)


def test_corrupted_byte_inside_deflate_stream(tmp_path, tools):
    rng = np.random.default_rng(1)
    blob = bytearray(tools.gz(tools.idx_images(rng.integers(0, 256, (20, 8, 8)))))
    blob[len(blob) // 2] ^= 0x55
    path = tmp_path / "img.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=r"img\.gz: (corrupt|truncated) gzip stream"):
        read_idx_bytes(path)


def test_wrong_length_trailer(tmp_path, tools, pair):
    blob = bytearray(tools.gz(pair[2]))
    blob[-1] ^= 0x01  # ISIZE
    (tmp_path / "f.gz").write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="corrupt gzip stream"):
        read_idx_bytes(tmp_path / "f.gz")


def test_trailing_garbage_after_gzip(tmp_path, tools, pair):
    (tmp_path / "f.gz").write_bytes(tools.gz(pair[2]) + b"garbage")
    with pytest.raises(DatasetError, match="corrupt gzip stream"):
        read_idx_bytes(tmp_path / "f.gz")


def test_unreadable_file(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.gz: cannot read the file"):
        read_idx_bytes(tmp_path / "missing.gz")


def test_labels_given_as_images_names_the_kind(pair):
    with pytest.raises(DatasetError, match=r"f: wrong magic number 2049: expected 2051.*labels file"):
        parse_idx_images(pair[3], "f")
    with pytest.raises(DatasetError, match=r"wrong magic number 2051: expected 2049.*images file"):
        parse_idx_labels(pair[2], "f")


def test_wrong_magic_not_idx():
    with pytest.raises(DatasetError, match=r"wrong magic.*not an IDX file \(first bytes 50 4b 03 04\)"):
        parse_idx_images(b"PK\x03\x04" + bytes(20), "x.zip")


def test_other_idx_dtype_is_rejected():
    header = bytes([0, 0, 0x0D, 3])  # float32, 3 dims
    with pytest.raises(DatasetError, match="IDX file of float32 with 3 dimension"):
        parse_idx_images(header + bytes(12), "f")


@pytest.mark.parametrize("n", [0, 2, 15])
def test_truncated_header(pair, n):
    with pytest.raises(DatasetError, match="too short|truncated header"):
        parse_idx_images(pair[2][:n], "f")


def test_images_payload_too_short(pair):
    with pytest.raises(DatasetError, match=r"3 images of 4x5 \(60 bytes.*only 59 bytes.*truncated"):
        parse_idx_images(pair[2][:-1], "f")


def test_images_header_count_too_small(tools, pair):
    data = tools.idx_images(pair[0], count=2)
    with pytest.raises(DatasetError, match=r"2 images of 4x5.*20 extra bytes"):
        parse_idx_images(data, "f")


def test_labels_count_mismatch(tools):
    with pytest.raises(DatasetError, match=r"5 labels.*only 3 bytes"):
        parse_idx_labels(tools.idx_labels([1, 2, 3], count=5), "f")
    with pytest.raises(DatasetError, match=r"2 labels.*1 extra bytes"):
        parse_idx_labels(tools.idx_labels([1, 2, 3], count=2), "f")


def test_zero_sized_images(tools):
    import struct

    with pytest.raises(DatasetError, match="invalid image size 0x5"):
        parse_idx_images(struct.pack(">4I", 2051, 1, 0, 5), "f")


def test_labels_out_of_range(tools):
    with pytest.raises(DatasetError, match=r"label 10 at index 2 is out of range.*0\.\.9"):
        parse_idx_labels(tools.idx_labels([1, 9, 10, 200]), "f", num_classes=10)


def test_image_label_count_mismatch(tmp_path, tools, pair):
    _x, y, xi, _ = pair
    (tmp_path / "img").write_bytes(xi)
    (tmp_path / "lab").write_bytes(tools.idx_labels(np.append(y, 1)))
    with pytest.raises(DatasetError, match=r"img holds 3 images but .*lab holds 4 labels"):
        read_idx_pair(tmp_path / "img", tmp_path / "lab")
