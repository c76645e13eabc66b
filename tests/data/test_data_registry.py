"""The dataset registry and the public surface of vicinal.experiments.data."""

from __future__ import annotations

import re

import pytest

import vicinal.experiments.data
from vicinal.experiments.data import DatasetError, available_datasets, is_dataset_name
from vicinal.experiments.data.registry import DatasetSpec, get_spec


def test_public_api():
    assert sorted(vicinal.experiments.data.__all__) == sorted(
        [
            "ArrayDataset",
            "DatasetError",
            "InputKind",
            "available_datasets",
            "is_dataset_name",
            "load_dataset",
            "load_hf",
            "load_image_folder",
            "load_npz",
        ]
    )
    assert issubclass(DatasetError, ValueError)


def test_available_datasets():
    names = available_datasets()
    assert names == tuple(sorted(names))
    fixed = [n for n in names if not n.startswith("medmnist:")]
    assert fixed == ["cifar10", "cifar100", "cifar100:coarse", "fashion-mnist", "mnist", "svhn"]
    medmnist = [n for n in names if n.startswith("medmnist:")]
    assert len(medmnist) == 11 * 4  # the eleven single-label 2-D datasets at 28, 64, 128 and 224
    assert {"medmnist:pathmnist", "medmnist:pathmnist_64", "medmnist:retinamnist_224"} <= set(medmnist)
    assert not any("chestmnist" in n or "3d" in n for n in names)


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
        if not isinstance(spec, DatasetSpec):
            continue
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

    for name in ("fashion-mnist", "mnist"):
        for f in original_registry[name].files:
            path = shared_data / name / f.gz_name
            assert path.stat().st_size == f.gz_size
            if f.gz_size < 100_000:  # hashing the big ones is covered by loading them
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f.gz_sha256


@pytest.mark.parametrize("name", ["Fashion-MNIST", "fashion_mnist", " MNIST "])
def test_name_normalisation(name):
    assert get_spec(name).name in ("fashion-mnist", "mnist")


def test_unknown_name():
    pattern = r"unknown dataset 'cifar1000'; known datasets: cifar10, cifar100, cifar100:coarse, fashion-mnist, "
    with pytest.raises(DatasetError, match=pattern) as info:
        get_spec("cifar1000")
    assert "medmnist:<name>[_64|_128|_224] with <name> one of bloodmnist, breastmnist" in str(info.value)
    assert "hf:<path>" in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["cifar10", "CIFAR100:coarse", "svhn", "fashion_mnist", "medmnist:pathmnist_64", "medmnist:chestmnist", "hf:x"],
)
def test_is_dataset_name(name):
    assert is_dataset_name(name)


@pytest.mark.parametrize("name", ["my.npz", "./images", "cifar", "", "data/hf:x", "svhn.npz"])
def test_paths_are_not_dataset_names(name):
    assert not is_dataset_name(name)


@pytest.mark.parametrize(("name", "folder"), [("cifar100:coarse", "cifar100"), ("medmnist:bloodmnist_128", "medmnist")])
def test_shared_folders(original_registry, name, folder):
    assert original_registry[name].folder == folder


def test_published_checksums_of_cifar_and_svhn(original_registry):
    # CIFAR page (tarballs) and torchvision 0.29.1 (members, SVHN)
    assert original_registry["cifar10"].archive.known_hash == "md5:c58f30108f718f92721af3b95e74349a"
    assert original_registry["cifar100"].archive.known_hash == "md5:eb9058c3a382ffc7106e4002c42a8d85"
    assert original_registry["cifar100:coarse"].members == original_registry["cifar100"].members
    assert [m.name for m in original_registry["cifar10"].members] == [
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ]
    assert original_registry["svhn"].train.known_hash == "md5:e26dedcc434d2e4c54c9b2d4a06d8373"
    assert original_registry["svhn"].test.known_hash == "md5:eb5a983be6a315427106f1b164d9cef3"


def test_every_non_idx_checksum_is_a_distinct_md5(original_registry):
    digests = {}
    for name, spec in original_registry.items():
        if isinstance(spec, DatasetSpec) or name == "cifar100:coarse":
            continue
        for digest, description in spec.checksums():
            assert re.fullmatch(r"[0-9a-f]{32}", digest), description
            assert digests.setdefault(digest, description) == description
