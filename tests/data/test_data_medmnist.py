"""MedMNIST from .npz files written here in the official layout (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, available_datasets, load_dataset
from vicinal.experiments.data.registry import get_spec
from vicinal.experiments.data.specs import RemoteFile

COUNTS = {"train": 7, "val": 3, "test": 4}


def write_npz(path: Path, *, size: int, channels: int, num_classes: int, seed: int = 0, **override) -> dict:
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    arrays = {}
    for split, n in COUNTS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).reshape(n, 1).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture
def medmnist(register, tools):
    """Write a file for a registered MedMNIST name and register its MD5."""

    def make(name: str, directory: Path, **override) -> dict:
        spec = get_spec(name)
        path = directory / spec.file.name
        arrays = write_npz(
            path, size=spec.image_size, channels=spec.n_channels, num_classes=len(spec.class_names), **override
        )
        register(spec.name, file=RemoteFile(spec.file.name, f"md5:{tools.md5(path.read_bytes())}"))
        return arrays

    return make


def nchw(x: np.ndarray) -> np.ndarray:
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def test_rgb_dataset_val_appended_to_train(tmp_path, medmnist):
    arrays = medmnist("medmnist:bloodmnist", tmp_path / "d")
    ds = load_dataset("medmnist:bloodmnist", tmp_path / "d", download=False)
    assert ds.x_train.shape == (10, 3, 28, 28) and ds.x_test.shape == (4, 3, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:7], nchw(arrays["train_images"]))
    np.testing.assert_array_equal(ds.x_train[7:], nchw(arrays["val_images"]))
    np.testing.assert_array_equal(ds.y_train, np.r_[arrays["train_labels"][:, 0], arrays["val_labels"][:, 0]])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"][:, 0])
    assert ds.y_train.dtype == np.int64
    assert ds.class_names[0] == "basophil" and ds.num_classes == 8


def test_grey_dataset_at_a_larger_size_in_the_shared_folder(tmp_path, medmnist):
    arrays = medmnist("medmnist:breastmnist_64", tmp_path / "root" / "medmnist")
    ds = load_dataset("MedMNIST:BreastMNIST-64", tmp_path / "root", download=False)
    assert ds.name == "medmnist:breastmnist_64"
    assert ds.x_train.shape == (10, 1, 64, 64)
    np.testing.assert_array_equal(ds.x_test, nchw(arrays["test_images"]))
    assert ds.class_names == ("malignant", "normal, benign")
    assert ds.source == str((tmp_path / "root" / "medmnist").resolve())


def test_ordinal_task_loads_as_ordered_classes(tmp_path, medmnist):
    spec = get_spec("medmnist:retinamnist")
    assert spec.task == "ordinal-regression"
    labels = np.array([[0], [4], [2], [1], [3], [4], [0]], np.uint8)
    medmnist("medmnist:retinamnist", tmp_path / "d", train_labels=labels)
    ds = load_dataset("medmnist:retinamnist", tmp_path / "d")
    assert ds.class_names == ("0", "1", "2", "3", "4")
    np.testing.assert_array_equal(ds.y_train[:7], labels[:, 0])  # grade order kept: id k is grade k


@pytest.mark.parametrize("name", ["medmnist:chestmnist", "medmnist:chestmnist_128", "medmnist:organmnist3d"])
def test_multi_label_and_3d_datasets_are_refused_by_name(tmp_path, name):
    pattern = "multi-label task" if "chest" in name else "3-D MedMNIST dataset"
    with pytest.raises(DatasetError, match=rf"dataset '{name}': .*{pattern}.* not supported"):
        load_dataset(name, tmp_path / "nowhere")  # refused before any file is looked at
    assert name not in available_datasets()


def test_multi_label_file_is_refused(tmp_path, medmnist):
    multi = np.zeros((7, 14), np.uint8)
    medmnist("medmnist:pathmnist", tmp_path / "d", train_labels=multi)
    with pytest.raises(DatasetError, match=r"'train_labels' has 14 labels per image .* a multi-label task"):
        load_dataset("medmnist:pathmnist", tmp_path / "d")


def test_download_from_local_server_with_url_template(tmp_path, medmnist, register, http_server, tools):
    served = tmp_path / "served"
    arrays = medmnist("medmnist:dermamnist", served)
    url = http_server(served)
    register("medmnist:dermamnist", mirrors=(url + "{filename}?download=1",))  # Zenodo's form
    ds = load_dataset("medmnist:dermamnist", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"][:, 0])
    assert [p.name for p in tools.all_files(tmp_path / "cache")] == ["dermamnist.npz"]
    assert "?download=1" in ds.source


def test_wrong_checksum_is_refused_by_name(tmp_path, medmnist):
    medmnist("medmnist:octmnist", tmp_path / "d")
    (tmp_path / "d" / "octmnist.npz").write_bytes((tmp_path / "d" / "octmnist.npz").read_bytes()[:-7])
    with pytest.raises(DatasetError, match=r"octmnist\.npz: content does not match OCTMNIST's octmnist\.npz"):
        load_dataset("medmnist:octmnist", tmp_path / "d")


def test_other_medmnist_file_is_identified(tmp_path, medmnist):
    medmnist("medmnist:organamnist", tmp_path / "a")
    medmnist("medmnist:organcmnist", tmp_path / "d", seed=1)
    (tmp_path / "d" / "organcmnist.npz").write_bytes((tmp_path / "a" / "organamnist.npz").read_bytes())
    with pytest.raises(DatasetError, match=r"it is OrganAMNIST's organamnist\.npz \(wrong folder"):
        load_dataset("medmnist:organcmnist", tmp_path / "d")


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"val_labels": None}, r"lacks the array\(s\) \['val_labels'\] \(found \["),
        (
            {"test_images": np.zeros((4, 32, 32, 3), np.uint8)},
            r"'test_images' must be uint8 images of shape \(N, 28, 28, 3\)",
        ),
        ({"test_images": np.zeros((4, 28, 28), np.uint8)}, r"'test_images' must be uint8 .*\(4, 28, 28\)"),
        ({"train_images": np.zeros((7, 28, 28, 3), np.float32)}, r"'train_images' must be uint8 .*float32"),
        ({"val_labels": np.array([[0], [9], [1]])}, r"'val_labels' holds label 9 at index 1, outside 0\.\.8"),
        ({"val_labels": np.array([[0], [1]])}, r"'val_labels': 2 labels for 3 images"),
    ],
)
def test_malformed_npz(tmp_path, medmnist, override, pattern):
    medmnist("medmnist:pathmnist", tmp_path / "d", **override)
    with pytest.raises(DatasetError, match=rf"pathmnist\.npz: {pattern}"):
        load_dataset("medmnist:pathmnist", tmp_path / "d")


def test_unknown_medmnist_name():
    with pytest.raises(DatasetError, match=r"unknown dataset 'medmnist:pathmnist_32'.*medmnist:<name>\[_64\|_128"):
        load_dataset("medmnist:pathmnist_32")


def test_registry_holds_the_published_md5s(original_registry):
    # spot checks against medmnist 3.0.2's info.py
    assert original_registry["medmnist:pathmnist"].file.known_hash == "md5:a8b06965200029087d5bd730944a56c1"
    assert original_registry["medmnist:pathmnist_224"].file.known_hash == "md5:2c51a510bcdc9cf8ddb2af93af1eadec"
    assert original_registry["medmnist:retinamnist_64"].file.known_hash == "md5:afda852cc34dcda56f86ad2b2457dbcc"
    assert original_registry["medmnist:dermamnist"].license == "CC BY-NC 4.0"
    assert original_registry["medmnist:pathmnist_64"].mirrors == (
        "https://zenodo.org/records/10519652/files/{filename}?download=1",
    )
