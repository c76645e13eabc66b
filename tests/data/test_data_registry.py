"""The dataset registry and the public surface of vicinal.experiments.data."""

from __future__ import annotations

import re

import pytest

import vicinal.experiments.data
from vicinal.experiments.data import DatasetError, available_datasets
from vicinal.experiments.data.registry import get_spec


def test_public_api():
    assert sorted(vicinal.experiments.data.__all__) == sorted(
        [
            "ArrayDataset",
            "DatasetError",
            "InputKind",
            "available_datasets",
            "load_dataset",
            "load_image_folder",
            "load_npz",
        ]
    )
    assert issubclass(DatasetError, ValueError)


def test_available_datasets():
    assert available_datasets() == ("fashion-mnist", "mnist")


def test_class_names(original_registry):
    assert original_registry["fashion-mnist"].class_names == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    assert original_registry["mnist"].class_names == tuple("0123456789")


def test_canonical_mirrors(original_registry):
    assert original_registry["fashion-mnist"].mirrors == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    )
    assert original_registry["mnist"].mirrors == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )


def test_checksums_are_well_formed_and_distinct(original_registry):
    digests = []
    for spec in original_registry.values():
        assert [f.name for f in spec.files] == [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ]
        for f in spec.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert re.fullmatch(r"[0-9a-f]{64}", f.gz_sha256)
            digests += [f.sha256, f.gz_sha256]
    assert len(set(digests)) == len(digests)


def test_gz_checksums_match_shared_files(original_registry, shared_data):
    import hashlib

    for name, spec in original_registry.items():
        for f in spec.files:
            path = shared_data / name / f.gz_name
            assert path.stat().st_size == f.gz_size
            if f.gz_size < 100_000:  # hashing the big ones is covered by loading them
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f.gz_sha256


@pytest.mark.parametrize("name", ["Fashion-MNIST", "fashion_mnist", " MNIST "])
def test_name_normalisation(name):
    assert get_spec(name).name in ("fashion-mnist", "mnist")


def test_unknown_name():
    pattern = r"unknown dataset 'cifar10'; known datasets: fashion-mnist, mnist"
    with pytest.raises(DatasetError, match=pattern):
        get_spec("cifar10")
