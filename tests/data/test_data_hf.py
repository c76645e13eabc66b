"""Hugging Face datasets on disk (save_to_disk folders, Parquet), written here with pyarrow."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, load_dataset, load_hf

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
NAMES = ["cat", "dog", "frog"]
FEATURES = {"img": {"decode": True, "_type": "Image"}, "label": {"names": NAMES, "_type": "ClassLabel"}}


def png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def images(n: int, seed: int, grey: bool = False) -> np.ndarray:
    shape = (n, 6, 5) if grey else (n, 6, 5, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def nchw(x: np.ndarray) -> np.ndarray:
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def table(x: np.ndarray, labels, *, image: str = "img", label: str = "label", features: dict | None = FEATURES):
    columns = {
        image: pa.array([{"bytes": png(a), "path": None} for a in x], IMAGE),
        label: pa.array(labels),
    }
    t = pa.table(columns)
    if features is not None:
        t = t.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    return t


def write_arrow(path: Path, t) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as writer:
        writer.write_table(t)


def save_split(folder: Path, t, name: str | None, shards: int = 1) -> None:
    """What Dataset.save_to_disk writes: Arrow stream shards, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    files = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    bounds = np.linspace(0, t.num_rows, shards + 1).astype(int)
    for f, lo, hi in zip(files, bounds[:-1], bounds[1:]):
        write_arrow(folder / f, t.slice(lo, hi - lo))
    state = {
        "_data_files": [{"filename": f} for f in files],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": name,
    }
    (folder / "state.json").write_text(json.dumps(state))
    info = {"citation": "", "description": "", "features": FEATURES, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info))


def save_dict(root: Path, splits: dict, shards: int = 1) -> Path:
    """What DatasetDict.save_to_disk writes."""
    root.mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for name, t in splits.items():
        save_split(root / name, t, name, shards)
    return root


@pytest.fixture
def data():
    x_train, x_test = images(9, 1), images(4, 2)
    return {
        "x_train": x_train,
        "y_train": [0, 1, 2, 0, 1, 2, 0, 1, 2],
        "x_test": x_test,
        "y_test": [2, 1, 0, 2],
    }


def test_save_to_disk_dataset_dict(tmp_path, data):
    root = save_dict(
        tmp_path / "cifar-like",
        {"train": table(data["x_train"], data["y_train"]), "test": table(data["x_test"], data["y_test"])},
        shards=2,
    )
    ds = load_dataset(f"hf:{root}")
    assert ds.name == "hf:cifar-like" and ds.source == str(root.resolve())
    assert ds.x_train.shape == (9, 3, 6, 5) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train, nchw(data["x_train"]))  # both shards, in order
    np.testing.assert_array_equal(ds.x_test, nchw(data["x_test"]))
    np.testing.assert_array_equal(ds.y_train, data["y_train"])
    assert ds.y_train.dtype == np.int64
    assert ds.class_names == tuple(NAMES)


def test_single_saved_dataset_is_split_stratified(tmp_path, data):
    x = np.concatenate([data["x_train"], data["x_test"], images(2, 3)])
    y = data["y_train"] + data["y_test"] + [0, 1]
    save_split(tmp_path / "one", table(x, y), "train")
    ds = load_hf(tmp_path / "one", test_fraction=0.25, seed=3)
    assert len(ds.y_train) + len(ds.y_test) == 15 and len(ds.y_test) == 4
    assert sorted(np.r_[ds.y_train, ds.y_test].tolist()) == sorted(y)
    assert set(ds.y_test.tolist()) == {0, 1, 2}  # stratified: every class in the test set
    seen = {a.tobytes() for a in np.concatenate([ds.x_train, ds.x_test])}
    assert seen == {a.tobytes() for a in nchw(x)}


def test_parquet_file_with_column_options(tmp_path, data):
    t = table(data["x_train"], data["y_train"], image="picture", label="fine", features=None)
    t = t.append_column("coarse", pa.array([1, 1, 0, 0, 1, 1, 0, 0, 1]))
    pq.write_table(t, tmp_path / "mine.parquet")
    ds = load_dataset(f"hf:{tmp_path / 'mine.parquet'}?image=picture&label=coarse")
    assert ds.name == "hf:mine" and ds.class_names == ("0", "1")
    assert sorted(np.r_[ds.y_train, ds.y_test].tolist()) == [0] * 4 + [1] * 5


def test_parquet_folder_hub_layout_with_string_labels(tmp_path, data):
    root = tmp_path / "hub" / "data"
    root.mkdir(parents=True)
    names = np.array(NAMES)
    pq.write_table(
        table(data["x_train"], names[data["y_train"]].tolist(), image="image", features=None),
        root / "train-00000-of-00001.parquet",
    )
    pq.write_table(
        table(data["x_test"], names[data["y_test"]].tolist(), image="image", features=None),
        root / "test-00000-of-00001.parquet",
    )
    ds = load_dataset(f"hf:{tmp_path / 'hub'}")
    assert ds.class_names == ("cat", "dog", "frog")
    np.testing.assert_array_equal(ds.y_test, data["y_test"])
    np.testing.assert_array_equal(ds.x_train, nchw(data["x_train"]))


def test_split_folders_and_a_chosen_test_split(tmp_path, data):
    for split, x, y in (("train", data["x_train"], data["y_train"]), ("validation", data["x_test"], data["y_test"])):
        (tmp_path / "conv" / "default" / split).mkdir(parents=True)
        pq.write_table(table(x, y), tmp_path / "conv" / "default" / split / "0000.parquet")
    ds = load_dataset(f"hf:{tmp_path / 'conv'}?test=validation")
    np.testing.assert_array_equal(ds.y_test, data["y_test"])
    assert ds.class_names == tuple(NAMES)  # from the schema's huggingface metadata


def test_relative_path_is_looked_for_in_data_dir(tmp_path, data):
    pq.write_table(table(data["x_test"], data["y_test"]), tmp_path / "small.parquet")
    ds = load_dataset("hf:small.parquet", tmp_path)
    assert ds.source == str((tmp_path / "small.parquet").resolve())


def test_grey_images_and_pixel_lists(tmp_path):
    x = images(6, 4, grey=True)
    pixel_lists = pa.array([a.tolist() for a in x], pa.list_(pa.list_(pa.uint8())))
    pq.write_table(pa.table({"pixels": pixel_lists, "label": [0, 1, 0, 1, 0, 1]}), tmp_path / "lists.parquet")
    ds = load_hf(tmp_path / "lists.parquet", image_column="pixels", test_fraction=0.5)
    assert ds.x_train.shape == (3, 1, 6, 5)
    assert {a.tobytes() for a in np.concatenate([ds.x_train, ds.x_test])} == {a.tobytes() for a in nchw(x)}

    pq.write_table(table(x, [0, 1, 0, 1, 0, 1], features=None), tmp_path / "png.parquet")
    assert load_hf(tmp_path / "png.parquet").x_train.shape[1] == 1  # all grey PNGs: one channel


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("query", "pattern"),
    [
        ("?image=picture", r"no column 'picture' \(given as the image column\); the columns are \['img', 'label'\]"),
        ("?label=fine_label", r"no column 'fine_label' \(given as the label column\); the columns are"),
        ("?image=label", r"the image and label columns are both 'label'"),
        ("?colour=red", r"unknown option 'colour'; the options are image, label, train, test"),
        ("?image", r"option 'image' is not key=value"),
        ("?train=nope", r"no split 'nope'; the splits are \['test', 'train'\]"),
        ("?test=nope", r"no split 'nope'; the splits are \['test', 'train'\]"),
    ],
)
def test_bad_names_columns_and_splits(tmp_path, data, query, pattern):
    root = save_dict(
        tmp_path / "ds",
        {"train": table(data["x_train"], data["y_train"]), "test": table(data["x_test"], data["y_test"])},
    )
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(f"hf:{root}{query}")


def test_ambiguous_label_columns(tmp_path, data):
    features = {**FEATURES, "coarse": {"names": ["a", "b"], "_type": "ClassLabel"}}
    t = table(data["x_train"], data["y_train"], features=features).append_column("coarse", pa.array([0, 1] * 4 + [0]))
    pq.write_table(t, tmp_path / "two.parquet")
    with pytest.raises(DatasetError, match=r"several ClassLabel columns \['label', 'coarse'\] .* \?label=COLUMN"):
        load_dataset(f"hf:{tmp_path / 'two.parquet'}")


def test_unguessable_columns(tmp_path, data):
    pq.write_table(table(data["x_test"], data["y_test"], image="a", label="b", features=None), tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match=r"cannot tell which column holds the images \(columns \['a', 'b'\]\)"):
        load_hf(tmp_path / "x.parquet")


def test_unlabelled_test_split(tmp_path, data):
    root = save_dict(
        tmp_path / "ds", {"train": table(data["x_train"], data["y_train"]), "test": table(data["x_test"], [-1] * 4)}
    )
    with pytest.raises(DatasetError, match=r"test: column 'label' holds -1, the 'no label' value"):
        load_dataset(f"hf:{root}")


def test_label_beyond_the_class_names(tmp_path, data):
    pq.write_table(table(data["x_test"], [0, 1, 2, 3]), tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match=r"holds label 3, but the ClassLabel has 3 names"):
        load_hf(tmp_path / "x.parquet")


def test_truncated_parquet(tmp_path, data):
    path = tmp_path / "x.parquet"
    pq.write_table(table(data["x_test"], data["y_test"]), path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DatasetError, match=rf"{path}: not a readable Parquet file"):
        load_hf(path)


def test_damaged_image_bytes_are_named(tmp_path, data):
    t = table(data["x_test"], data["y_test"])
    broken = pa.array([{"bytes": b"not a png", "path": None}] * 4, IMAGE)
    pq.write_table(t.set_column(0, "img", broken), tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match=r"x\.parquet: row 0 of column 'img': cannot read this image file"):
        load_hf(tmp_path / "x.parquet")


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"hf:nowhere: .*nowhere does not exist"):
        load_dataset("hf:nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"neither a save_to_disk folder .* nor a folder of \.parquet files"):
        load_dataset(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match=r"no path after 'hf:'"):
        load_dataset("hf:")


def test_without_pyarrow_the_extra_is_named(tmp_path, data, monkeypatch):
    pq.write_table(table(data["x_test"], data["y_test"]), tmp_path / "x.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(DatasetError, match=r"needs pyarrow, which is not installed: pip install 'vicinal\[hf\]'"):
        load_dataset(f"hf:{tmp_path / 'x.parquet'}")
