"""SVHN from .mat files written here with scipy.io.savemat in the official layout (no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, load_dataset
from vicinal.experiments.data.specs import RemoteFile

scipy_io = pytest.importorskip("scipy.io")


def write_mat(path: Path, x_nchw: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> Path:
    """The official layout: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"X": np.ascontiguousarray(x_nchw.transpose(2, 3, 1, 0)), "y": labels.reshape(-1, 1)}
    arrays.update(extra)
    scipy_io.savemat(path, arrays)
    return path


@pytest.fixture
def svhn(tmp_path, register, tools) -> SimpleNamespace:
    rng = np.random.default_rng(7)
    made = tmp_path / "made"
    x = {
        "train": rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8),
        "test": rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8),
    }
    y = {
        "train": np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1], np.uint8),
        "test": np.array([1, 10, 10, 3, 9], np.uint8),
    }
    files = {split: write_mat(made / f"{split}_32x32.mat", x[split], y[split]) for split in ("train", "test")}

    def apply(**sizes: int) -> None:
        register(
            "svhn",
            **{
                split: RemoteFile(f.name, f"md5:{tools.md5(f.read_bytes())}", sizes.get(split))
                for split, f in files.items()
            },
        )

    apply()

    def copy(directory: Path, **override: bytes) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for split, f in files.items():
            (directory / f.name).write_bytes(override.get(split, f.read_bytes()))
        return directory

    return SimpleNamespace(x=x, y=y, files=files, apply=apply, copy=copy)


def test_transposed_to_channels_first_and_label_10_is_0(tmp_path, svhn):
    ds = load_dataset("svhn", svhn.copy(tmp_path / "d"), download=False)
    assert ds.x_train.shape == (12, 3, 32, 32) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train, svhn.x["train"])  # random pixels: any axis mix-up fails
    np.testing.assert_array_equal(ds.x_test, svhn.x["test"])
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    np.testing.assert_array_equal(ds.y_test, [1, 0, 0, 3, 9])
    assert ds.y_train.dtype == np.int64
    assert ds.class_names == tuple("0123456789")


def test_download_from_local_server(tmp_path, svhn, http_server, tools):
    url = http_server(svhn.copy(tmp_path / "served"))
    ds = load_dataset("svhn", cache_dir=tmp_path / "cache", mirrors=[url])
    np.testing.assert_array_equal(ds.x_test, svhn.x["test"])
    assert sorted(p.name for p in tools.all_files(tmp_path / "cache")) == ["test_32x32.mat", "train_32x32.mat"]
    assert load_dataset("svhn", cache_dir=tmp_path / "cache", download=False).source == str(
        (tmp_path / "cache" / "svhn").resolve()
    )


def test_wrong_download_is_discarded(tmp_path, svhn, http_server, tools):
    served = svhn.copy(tmp_path / "served", test=svhn.files["train"].read_bytes())
    with pytest.raises(DatasetError, match=r"test_32x32\.mat: checksum mismatch, download discarded"):
        load_dataset("svhn", cache_dir=tmp_path / "cache", mirrors=[http_server(served)])
    # only the verified file is kept; the wrong one never reached its final name
    assert tools.all_files(tmp_path / "cache") == [tmp_path / "cache" / "svhn" / "train_32x32.mat"]


def test_swapped_files_are_identified(tmp_path, svhn):
    d = svhn.copy(tmp_path / "d", train=svhn.files["test"].read_bytes(), test=svhn.files["train"].read_bytes())
    pattern = rf"{d / 'test_32x32.mat'}: content does not match SVHN's test_32x32\.mat: the MD5 .* it is SVHN's train"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("svhn", d)


def test_truncated_file_is_refused_by_name(tmp_path, svhn):
    full = svhn.files["train"].read_bytes()
    svhn.apply(train=len(full))  # the official size is known
    d = svhn.copy(tmp_path / "d", train=full[:-100])
    pattern = rf"{d / 'train_32x32.mat'}: content does not match .* \(the file has {len(full) - 100} bytes, "
    with pytest.raises(DatasetError, match=pattern + rf"the official file {len(full)}: it is truncated"):
        load_dataset("svhn", d)


def test_missing_file_in_data_dir(tmp_path, svhn):
    d = svhn.copy(tmp_path / "d")
    (d / "train_32x32.mat").unlink()
    with pytest.raises(DatasetError, match=r"incomplete: .* lacks train_32x32\.mat"):
        load_dataset("svhn", d)


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, r"lacks the variable\(s\) \['y'\] \(found \['X'\]\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.float64), "y": np.ones((2, 1))}, r"X must be uint8 of shape \(H, W, 3, N\)"),
        ({"X": np.zeros((3, 32, 32, 2), np.uint8), "y": np.ones((2, 1))}, r"X must be uint8 .*\(3, 32, 32, 2\)"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [0]])}, r"label 0 at index 1 is not one of"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])}, r"label 11 at index 1"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, r"X holds 2 images but y holds 3 labels"),
    ],
)
def test_malformed_mat_layout(tmp_path, svhn, register, tools, arrays, pattern):
    bad = tmp_path / "bad" / "train_32x32.mat"
    bad.parent.mkdir()
    scipy_io.savemat(bad, arrays)
    register("svhn", train=RemoteFile("train_32x32.mat", f"md5:{tools.md5(bad.read_bytes())}"))
    d = svhn.copy(tmp_path / "d", train=bad.read_bytes())
    with pytest.raises(DatasetError, match=rf"{d / 'train_32x32.mat'}: {pattern}"):
        load_dataset("svhn", d)


def test_not_a_mat_file(tmp_path, svhn, register, tools):
    junk = b"this is not MATLAB"
    register("svhn", train=RemoteFile("train_32x32.mat", f"md5:{tools.md5(junk)}"))
    d = svhn.copy(tmp_path / "d", train=junk)
    with pytest.raises(DatasetError, match=r"train_32x32\.mat: not a readable MATLAB \.mat file"):
        load_dataset("svhn", d)
