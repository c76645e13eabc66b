"""The real Fashion-MNIST and MNIST files from the shared folder (skipped if absent)."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, load_dataset


@pytest.fixture(scope="module")
def fashion(shared_data):
    return load_dataset("fashion-mnist", shared_data / "fashion-mnist", download=False)


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset("mnist", shared_data / "mnist", download=False)


@pytest.mark.parametrize("which", ["fashion", "mnist"])
def test_shapes_and_dtypes(request, which):
    ds = request.getfixturevalue(which)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.shape == (10000,)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.x_train.flags.c_contiguous and ds.x_train.flags.writeable


def test_fashion_statistics(fashion, shared_data):
    assert fashion.name == "fashion-mnist"
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(fashion.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.y_test), [1000] * 10)
    assert fashion.x_train.mean() / 255 == pytest.approx(0.2860, abs=5e-5)
    assert fashion.source == str((shared_data / "fashion-mnist").resolve())


def test_mnist_statistics(mnist):
    np.testing.assert_array_equal(
        np.bincount(mnist.y_train), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    )
    assert mnist.x_train.mean() / 255 == pytest.approx(0.1307, abs=5e-5)
    assert mnist.class_names == tuple("0123456789")


def test_rewritten_gzip_headers_and_raw_files_still_load(tmp_path, shared_data, mnist, tools):
    """Like Debian's package: other gzip headers (and .gz bytes), same content."""
    src = shared_data / "mnist"
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        blob = (src / (name + ".gz")).read_bytes()
        new = tools.rewrite_gzip_header(blob, mtime=1700000000, fname=None)
        assert new != blob
        (tmp_path / (name + ".gz")).write_bytes(new)
    # a label file recompressed from scratch, another one stored uncompressed
    labels = gzip.decompress((src / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels, 1, mtime=42))
    raw = gzip.decompress((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw)

    ds = load_dataset("mnist", tmp_path, download=False)
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, attr), getattr(mnist, attr))


def test_wrong_dataset_folder_is_identified(shared_data):
    with pytest.raises(DatasetError, match=r"content does not match Fashion-MNIST's.*it is MNIST's"):
        load_dataset("fashion-mnist", shared_data / "mnist", download=False)


def test_real_download_through_local_mirror(tmp_path, shared_data, mnist, tools, http_server):
    """MNIST's official .gz bytes over HTTP: pooch verifies them, they land in the cache."""
    served = tmp_path / "served"
    served.mkdir()
    for f in (shared_data / "mnist").iterdir():
        os.symlink(f, served / f.name)
    url = http_server(served)
    cache_root = tmp_path / "cache"
    ds = load_dataset("mnist", cache_dir=cache_root, mirrors=[tools.closed_port_url(), url])
    assert ds.source.startswith(url)
    for f in (shared_data / "mnist").iterdir():
        assert (cache_root / "mnist" / f.name).read_bytes() == f.read_bytes()
    np.testing.assert_array_equal(ds.x_train, mnist.x_train)
    np.testing.assert_array_equal(ds.y_test, mnist.y_test)
