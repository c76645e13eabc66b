"""ArrayDataset validation."""

from __future__ import annotations

import numpy as np
import pytest

from vicinal.experiments.data import ArrayDataset, DatasetError


def make(**overrides):
    kw = dict(
        name="toy",
        x_train=np.zeros((4, 1, 3, 2), np.uint8),
        y_train=np.array([0, 1, 2, 1], np.int64),
        x_test=np.zeros((2, 1, 3, 2), np.uint8),
        y_test=np.array([2, 0], np.int64),
        class_names=("a", "b", "c"),
        source="here",
    )
    kw.update(overrides)
    return ArrayDataset(**kw)


def test_valid():
    ds = make(class_names=["a", "b", "c"])
    assert ds.num_classes == 3
    assert ds.input_shape == (1, 3, 2)
    assert ds.class_names == ("a", "b", "c")  # coerced to a tuple
    assert "train=4" in repr(ds) and "input_shape=(1, 3, 2)" in repr(ds)
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen
    assert ds == ds and ds != make()  # identity equality, no element-wise ambiguity


def test_empty_test_set_allowed():
    ds = make(x_test=np.zeros((0, 1, 3, 2), np.uint8), y_test=np.zeros(0, np.int64))
    assert len(ds.x_test) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"x_train": np.zeros((4, 1, 3, 2), np.float32)}, r"x_train must have shape \(N, F\) or \(N, T, F\)"),
        ({"x_train": np.zeros((4, 1, 3, 2), np.float64)}, "x_train must be uint8 images .* got float64"),
        ({"x_train": np.zeros((4, 3, 2), np.uint8)}, r"x_train must have shape \(N, C, H, W\)"),
        ({"x_train": np.full((4, 3), np.nan, np.float32)}, "x_train holds NaN or infinite features"),
        (
            {"x_train": np.zeros((4, 6), np.float32), "x_test": np.zeros((2, 6), np.float64)},
            "x_test must be uint8 images .* got float64",
        ),
        ({"x_train": np.zeros((4, 6), np.float32)}, "x_train holds features .* x_test holds uint8"),
        ({"y_train": np.array([0, 1, 2, 1], np.int32)}, "y_train must be int64"),
        ({"y_test": np.array([[2], [0]], np.int64)}, r"y_test must have shape \(N,\)"),
        ({"y_train": np.array([0, 1, 2], np.int64)}, "x_train has 4 samples but y_train has 3"),
        ({"y_test": np.array([3, 0], np.int64)}, r"label 3, outside 0\.\.2"),
        ({"y_train": np.array([0, -1, 2, 1], np.int64)}, r"label -1, outside 0\.\.2"),
        ({"x_test": np.zeros((2, 1, 2, 3), np.uint8)}, r"test samples have \(1, 2, 3\)"),
        (
            {"x_train": np.zeros((0, 1, 3, 2), np.uint8), "y_train": np.zeros(0, np.int64)},
            "training set is empty",
        ),
        ({"class_names": ("a", "b", "a")}, r"duplicate class names \['a'\]"),
        ({"class_names": ()}, "class_names is empty"),
        ({"class_names": "abc"}, "sequence of str"),
        ({"x_train": [[0]]}, "must be numpy arrays"),
        ({"name": ""}, "non-empty str"),
    ],
)
def test_invalid(overrides, message):
    with pytest.raises(DatasetError, match=message):
        make(**overrides)


def test_features_tabular_and_sequences():
    tab = make(x_train=np.zeros((4, 6), np.float32), x_test=np.ones((2, 6), np.float32))
    assert tab.kind == "features" and tab.input_shape == (6,)
    assert "features" in repr(tab) and "input_shape=(6,)" in repr(tab)
    seq = make(
        x_train=np.zeros((4, 5, 3), np.float32), x_test=np.zeros((0, 5, 3), np.float32), y_test=np.zeros(0, np.int64)
    )
    assert seq.kind == "features" and seq.input_shape == (5, 3)
    assert make().kind == "images"
    with pytest.raises(DatasetError, match=r"test samples have \(5,\)"):
        make(x_train=np.zeros((4, 6), np.float32), x_test=np.zeros((2, 5), np.float32))
