"""Bring-your-own-data loaders: image folders and .npz archives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vicinal.experiments.data import DatasetError, load_image_folder, load_npz


def save(path: Path, value: int, *, size=(5, 4), mode="L", ext=".png") -> Path:
    """An image of size (width, height) filled with `value` (as grey or as (value, 0, 255-value))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, fill).save(path.with_suffix(ext))
    return path.with_suffix(ext)


def make_folder(root: Path, counts: dict[str, int], **kw) -> Path:
    for c, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            save(root / name / f"img{i:02d}", 10 * c + i, **kw)
    return root


# --------------------------------------------------------------------------- image folder


def test_folder_grayscale_split(tmp_path):
    root = make_folder(tmp_path / "pets", {"cat": 10, "dog": 5, "eel": 5})
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / "README").write_text("ignored")
    ds = load_image_folder(root, test_fraction=0.2, seed=3)
    assert ds.name == "pets" and ds.class_names == ("cat", "dog", "eel")
    assert ds.x_train.shape == (16, 1, 4, 5) and ds.x_test.shape == (4, 1, 4, 5)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    # stratified: 2 of 10 cats, 1 of 5 dogs, 1 of 5 eels
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=3), [2, 1, 1])
    # pixels kept their identity: value = 10 * class + index
    values = np.concatenate([ds.x_train[:, 0, 0, 0], ds.x_test[:, 0, 0, 0]])
    labels = np.concatenate([ds.y_train, ds.y_test])
    assert sorted(values.tolist()) == sorted([*range(10), *range(10, 15), *range(20, 25)])
    np.testing.assert_array_equal(values // 10, labels)
    assert ds.source == str(root.resolve())


def test_folder_split_is_seeded(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 6, "b": 6})
    one, two = load_image_folder(root, seed=1), load_image_folder(root, seed=1)
    np.testing.assert_array_equal(one.x_test, two.x_test)
    other = load_image_folder(root, seed=2)
    assert not np.array_equal(one.x_test, other.x_test)


def test_folder_auto_colour_and_forced_grayscale(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 3, "b": 3})
    save(root / "b" / "colour", 200, mode="RGB", ext=".jpg")
    ds = load_image_folder(root, test_fraction=0)
    assert ds.input_shape == (3, 4, 5) and len(ds.x_test) == 0
    gray = load_image_folder(root, grayscale=True, test_fraction=0)
    assert gray.input_shape == (1, 4, 5)
    rgb = load_image_folder(make_folder(tmp_path / "g", {"a": 2}), grayscale=False, test_fraction=0)
    assert rgb.input_shape == (3, 4, 5)
    np.testing.assert_array_equal(rgb.x_train[:, 0], rgb.x_train[:, 2])


def test_folder_resize(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 3})
    save(root / "a" / "big", 7, size=(20, 10))
    ds = load_image_folder(root, image_size=8, test_fraction=0)
    assert ds.input_shape == (1, 8, 8)
    ds = load_image_folder(root, image_size=(6, 3), test_fraction=0)
    assert ds.input_shape == (1, 6, 3)


def test_folder_train_test_layout(tmp_path):
    root = tmp_path / "r"
    make_folder(root / "train", {"x": 3, "y": 2})
    make_folder(root / "test", {"y": 1})
    (root / "val").mkdir()  # other entries are ignored
    ds = load_image_folder(root, test_fraction=0.5)
    assert ds.class_names == ("x", "y")
    assert len(ds.x_train) == 5 and ds.y_test.tolist() == [1]


def test_folder_nested_and_hidden(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 2})
    save(root / "a" / "sub" / "deep", 1)
    save(root / "a" / ".hidden" / "skip", 1)
    save(root / ".cache" / "skip", 1)
    ds = load_image_folder(root, test_fraction=0)
    assert len(ds.x_train) == 3 and ds.class_names == ("a",)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder .*missing does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    root = make_folder(tmp_path / "r", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "x.txt").write_text("")
    with pytest.raises(DatasetError, match=r"r/b: class folder contains no images"):
        load_image_folder(root)


def test_folder_unreadable_image(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read this image file"):
        load_image_folder(root)


def test_folder_truncated_image(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 2})
    p = save(root / "a" / "trunc", 5, size=(64, 64), mode="RGB", ext=".jpg")
    Image.effect_noise((64, 64), 50).convert("RGB").save(p, quality=95)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DatasetError, match=r"trunc\.jpg: cannot read this image file"):
        load_image_folder(root, image_size=4)


def test_folder_size_mismatch_names_file(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 2, "b": 2})
    save(root / "b" / "odd", 1, size=(6, 4))
    with pytest.raises(DatasetError, match=r"odd\.png: image is 6x4 .*/img00\.png is 5x4.*image_size"):
        load_image_folder(root)


def test_folder_partial_split_layout(tmp_path):
    make_folder(tmp_path / "r" / "train", {"a": 2})
    with pytest.raises(DatasetError, match=r"has a train/ folder but no test/ folder"):
        load_image_folder(tmp_path / "r")
    make_folder(tmp_path / "r" / "test", {"zzz": 1})
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['zzz'\] have no counterpart"):
        load_image_folder(tmp_path / "r")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\)"),
        ({"test_fraction": float("nan")}, r"test_fraction must be in \[0, 1\)"),
        ({"image_size": (4, 0)}, "image_size must be a positive int"),
        ({"image_size": (1, 2, 3)}, "image_size must be a positive int"),
    ],
)
def test_folder_bad_arguments(tmp_path, kwargs, message):
    root = make_folder(tmp_path / "r", {"a": 2})
    with pytest.raises(DatasetError, match=message):
        load_image_folder(root, **kwargs)


def test_folder_too_small_to_split(tmp_path):
    root = make_folder(tmp_path / "r", {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match="leaves no test samples"):
        load_image_folder(root, test_fraction=0.2)


# --------------------------------------------------------------------------- npz


def npz(tmp_path, name="d.npz", **arrays) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def rng_images(*shape):
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def test_npz_nhw_split(tmp_path):
    x = rng_images(20, 6, 7)
    y = np.repeat([0, 1, 2, 3], 5)
    ds = load_npz(npz(tmp_path, x=x, y=y), test_fraction=0.2, seed=0)
    assert ds.name == "d" and ds.input_shape == (1, 6, 7)
    assert ds.class_names == ("0", "1", "2", "3")
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1, 1, 1, 1])
    # every sample kept its label
    all_x = np.concatenate([ds.x_train, ds.x_test])[:, 0]
    all_y = np.concatenate([ds.y_train, ds.y_test])
    for xi, yi in zip(all_x, all_y):
        i = int(np.flatnonzero((x == xi).all(axis=(1, 2)))[0])
        assert y[i] == yi


def test_npz_layouts(tmp_path):
    nhwc = rng_images(4, 6, 7, 3)
    ds = load_npz(npz(tmp_path, x=nhwc, y=np.arange(4)), test_fraction=0)
    assert ds.input_shape == (3, 6, 7)
    np.testing.assert_array_equal(ds.x_train, nhwc.transpose(0, 3, 1, 2))
    nchw = rng_images(4, 1, 6, 7)
    ds = load_npz(npz(tmp_path, x=nchw, y=np.arange(4)), test_fraction=0)
    np.testing.assert_array_equal(ds.x_train, nchw)
    assert ds.x_train.flags.c_contiguous


def test_npz_float_pixels_rounded(tmp_path):
    x = np.array([0.0, 1.0, 0.5, 0.2, 1 / 255, 0.999]).reshape(1, 2, 3).repeat(2, 0)
    ds = load_npz(npz(tmp_path, x=x.astype(np.float32), y=[0, 1]), test_fraction=0)
    assert ds.x_train[0, 0].ravel().tolist() == [0, 255, 128, 51, 1, 255]


def test_npz_int64_pixels_in_range_accepted(tmp_path):
    ds = load_npz(npz(tmp_path, x=np.full((2, 3, 3), 255, np.int64), y=[0, 1]), test_fraction=0)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255


def test_npz_one_hot_and_given_test_and_names(tmp_path):
    eye = np.eye(3, dtype=np.float32)
    p = npz(
        tmp_path,
        x=rng_images(6, 5, 5),
        y=eye[[0, 1, 2, 0, 1, 0]],
        x_test=rng_images(2, 5, 5),
        y_test=np.array([2, 2]),
        class_names=np.array(["ant", "bee", "cow"]),
    )
    ds = load_npz(p, test_fraction=0.5)
    assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 0] and ds.y_test.tolist() == [2, 2]
    assert ds.class_names == ("ant", "bee", "cow")
    assert load_npz(p, class_names=["A", "B", "C"]).class_names == ("A", "B", "C")


def test_npz_one_hot_width_sets_class_count(tmp_path):
    y = np.eye(5, dtype=np.uint8)[[0, 1, 0, 1]]  # classes 2..4 unused
    ds = load_npz(npz(tmp_path, x=rng_images(4, 5, 5), y=y), test_fraction=0)
    assert ds.num_classes == 5


def test_npz_column_labels_and_float_ids(tmp_path):
    y = np.array([[0.0], [2.0], [1.0]])
    ds = load_npz(npz(tmp_path, x=rng_images(3, 5, 5), y=y), test_fraction=0)
    assert ds.y_train.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": rng_images(3, 4, 4)}, r"missing array\(s\) \['y'\]"),
        ({"y": [0, 1]}, r"missing array\(s\) \['x'\]"),
        ({"x": rng_images(3, 4, 4), "y": [0, 1]}, "2 labels for 3 images"),
        ({"x": rng_images(3, 4, 4), "y": [0, -1, 1]}, "negative label -1 at index 1"),
        ({"x": np.full((2, 4, 4, 1), 1.5), "y": [0, 1]}, r"float pixels must be in \[0, 1\].*divide by 255"),
        ({"x": np.full((2, 4, 4), np.nan), "y": [0, 1]}, "NaN or infinity"),
        ({"x": np.full((2, 4, 4), 300), "y": [0, 1]}, r"integer pixels must be in 0\.\.255"),
        ({"x": np.zeros((2, 4, 4), bool), "y": [0, 1]}, "pixels must be uint8 or float"),
        ({"x": rng_images(2, 3, 5, 3), "y": [0, 1]}, "cannot tell the channel axis"),
        ({"x": rng_images(2, 5, 5, 5, 5), "y": [0, 1]}, r"expected images of shape \(N, H, W\)"),
        ({"x": np.zeros((2, 5), bool), "y": [0, 1]}, "features must be a real .* got bool"),
        ({"x": np.array([[0.0, np.inf]]), "y": [0]}, "features contain NaN or infinity"),
        ({"x": np.array([[0.0, 1e300]]), "y": [0]}, "beyond the float32 range"),
        ({"x": np.zeros((2, 3)), "y": [0, 1], "x_test": np.zeros((1, 4)), "y_test": [0]}, r"\(F,\) or \(T, F\)"),
        ({"x": np.zeros((2, 3)), "y": [0, 1, 1]}, "3 labels for 2 samples"),
        ({"x": np.zeros((2, 3)), "y": [0, 1], "kind": np.array("tabular")}, "'kind' must be 'images' or 'features'"),
        ({"x": np.zeros((2, 3)), "y": [0, 1], "kind": np.array([1])}, "'kind' must be one string"),
        ({"x": rng_images(2, 3, 4, 5), "y": [0, 1], "kind": np.array("features")}, r"\(N, T, F\)"),
        ({"x": rng_images(0, 4, 4), "y": np.zeros(0, int)}, "holds no images"),
        ({"x": rng_images(2, 4, 4), "y": [0.5, 1]}, "integer class ids"),
        ({"x": rng_images(2, 4, 4), "y": [[0.3, 0.7], [1, 0]]}, "must be one-hot"),
        ({"x": rng_images(2, 4, 4), "y": [True, False]}, "got bool"),
        (
            {"x": rng_images(2, 4, 4), "y": [0, 1], "x_test": rng_images(1, 4, 4)},
            "'x_test' without its partner",
        ),
        (
            {"x": rng_images(2, 4, 4), "y": [0, 1], "x_test": rng_images(1, 5, 4), "y_test": [0]},
            r"'x_test' samples have \(1, 5, 4\)",
        ),
        (
            {"x": rng_images(2, 4, 4), "y": [0, 3], "class_names": np.array(["a", "b"])},
            "label 3 is out of range for 2 class names",
        ),
        ({"x": rng_images(2, 4, 4), "y": [0, 1], "class_names": np.array([1, 2])}, "1-D string array"),
        ({"x": rng_images(2, 4, 4), "y": [0, 1], "class_names": np.array(["a", "a"])}, "duplicate class names"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    with pytest.raises(DatasetError, match=message):
        load_npz(npz(tmp_path, **arrays), test_fraction=0)


def test_npz_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz archive"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", rng_images(2, 3, 3))
    with pytest.raises(DatasetError, match="single .npy array"):
        load_npz(tmp_path / "single.npy")
    p = npz(tmp_path, x=rng_images(2, 3, 3), y=[0, 1], class_names=np.array(["a", None], dtype=object))
    with pytest.raises(DatasetError, match="'class_names' cannot be loaded without pickle"):
        load_npz(p)


def test_npz_tabular_features(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 7))  # float64: stored as float32, unscaled
    y = np.arange(40) % 2
    ds = load_npz(npz(tmp_path, x=x, y=y), test_fraction=0.25, seed=0)
    assert ds.kind == "features" and ds.input_shape == (7,) and ds.x_train.dtype == np.float32
    assert (len(ds.x_train), len(ds.x_test)) == (30, 10)
    both = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(x.astype(np.float32), axis=0))
    counts = load_npz(npz(tmp_path, x=np.arange(12).reshape(4, 3), y=[0, 1, 0, 1]), test_fraction=0)
    assert counts.kind == "features" and counts.x_train[3].tolist() == [9.0, 10.0, 11.0]  # integers: not pixels


def test_npz_sequences_by_range_or_kind(tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 5, 3)).astype(np.float32)  # outside [0, 1]: sequences
    ds = load_npz(npz(tmp_path, x=x, y=[0, 1] * 3, x_test=x[:2], y_test=[1, 0]))
    assert ds.kind == "features" and ds.input_shape == (5, 3)
    np.testing.assert_array_equal(ds.x_train, x)
    unit = np.linspace(0, 1, 90, dtype=np.float32).reshape(6, 5, 3)  # in [0, 1]: images unless told
    assert load_npz(npz(tmp_path, x=unit, y=[0] * 6), test_fraction=0).kind == "images"
    told = load_npz(npz(tmp_path, x=unit, y=[0] * 6, kind=np.array("features")), test_fraction=0)
    assert told.kind == "features" and told.input_shape == (5, 3)
    np.testing.assert_array_equal(told.x_train, unit)
    argued = load_npz(npz(tmp_path, x=unit, y=[0] * 6), test_fraction=0, kind="features")
    assert argued.kind == "features"
    with pytest.raises(DatasetError, match="kind must be one of"):
        load_npz(npz(tmp_path, x=unit, y=[0] * 6), kind="audio")
