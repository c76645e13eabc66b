"""Hugging Face datasets on disk, read with pyarrow (the ``hf`` extra).

:func:`load_hf` reads, without the ``datasets`` library and without any network:

* a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` listing
  the splits, one sub-folder per split with ``state.json`` and the
  ``data-*-of-*.arrow`` files in Arrow's streaming format);
* a folder written by ``Dataset.save_to_disk`` (``state.json`` and the ``.arrow``
  files of one split);
* a Parquet file, or a folder of Parquet files (searched recursively), as on the
  Hugging Face Hub: a file belongs to a split when its name starts with the split's
  name (``train-00000-of-00001.parquet``, ``test.parquet``) or a folder on its path
  is named after it (``plain_text/train/0000.parquet``).

Columns: the image column holds the ``Image`` feature (a struct of encoded
``bytes`` and a ``path``, decoded with Pillow), bare encoded image bytes, or nested
lists of pixels (``(H, W)`` or ``(H, W, C)`` per row).  The label column holds
integers (``ClassLabel``, whose names become the class names), or strings (the
sorted distinct values become the classes).  Without explicit column names the
single ``Image`` feature and the single ``ClassLabel`` feature are used (from
``dataset_info.json`` or the ``huggingface`` metadata of the Arrow schema), else
columns named ``image``/``img`` and ``label``/``labels``.

Splits: ``train`` and ``test`` by default (``train_split``/``test_split`` choose
others, e.g. ``validation``); without a test split, or for data with no named
splits, a seeded stratified split of the training data makes the test set (as
:func:`~vicinal.experiments.data.load_image_folder` does).  Other splits are ignored.

These are your own files: there is no published checksum to verify them against.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .byod import _check_fraction, _images_to_nchw, _labels_to_ids, _normalise_size, _read_images, _split_dataset
from .dataset import ArrayDataset, unnamed_class_names
from .errors import DatasetError

__all__ = ["HF_OPTIONS", "load_hf", "load_hf_name", "parse_hf_name"]

#: The options of an ``hf:`` name (``hf:<path>?image=img&label=fine_label``).
HF_OPTIONS = ("image", "label", "train", "test")
_IMAGE_NAMES = ("image", "img")
_LABEL_NAMES = ("label", "labels")
_SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")
_SPLIT_PREFIX = re.compile(r"^(train|test|validation|valid|val|dev)(?:[-_.].*)?$")
_INSTALL = "pip install 'vicinal[hf]' (or pip install pyarrow)"


def parse_hf_name(name: str) -> tuple[str, dict[str, str]]:
    """Split ``"hf:<path>?key=value&..."`` into the path and its options.

    Raises:
        DatasetError: no path, an option that is not ``key=value``, or a key other
            than those in :data:`HF_OPTIONS`.
    """
    body = name.strip()
    if body[:3].lower() != "hf:":
        raise DatasetError(f"dataset {name!r}: an hf: name must start with 'hf:'")
    path, _, query = body[3:].partition("?")
    if not path:
        raise DatasetError(f"dataset {name!r}: no path after 'hf:'; expected hf:<folder or .parquet file>")
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DatasetError(f"dataset {name!r}: option {item!r} is not key=value (e.g. ?image=img&label=label)")
        if key not in HF_OPTIONS:
            raise DatasetError(f"dataset {name!r}: unknown option {key!r}; the options are {', '.join(HF_OPTIONS)}")
        options[key] = value
    return path, options


def load_hf_name(name: str, data_dir: str | os.PathLike[str] | None = None) -> ArrayDataset:
    """:func:`load_hf` for an ``hf:`` name (see :func:`parse_hf_name`)."""
    path, options = parse_hf_name(name)
    return load_hf(
        path,
        image_column=options.get("image"),
        label_column=options.get("label"),
        train_split=options.get("train"),
        test_split=options.get("test"),
        data_dir=data_dir,
    )


# --------------------------------------------------------------------------- reading tables


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetError(
            f"reading Hugging Face datasets (hf:<path>) needs pyarrow, which is not installed: {_INSTALL}"
        ) from exc
    return pa, pq


@dataclass
class _Split:
    name: str | None
    table: Any  # pyarrow.Table
    features: dict[str, Any]
    where: str  # the file(s) or folder it was read from, for messages
    base: Path  # where relative image paths are resolved


def _schema_features(table: Any) -> dict[str, Any]:
    """The ``datasets`` features stored in an Arrow schema's ``huggingface`` metadata, if any."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"huggingface")
    if raw is None:
        return {}
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from exc


def _read_arrow(pa: Any, path: Path) -> Any:
    errors = (pa.ArrowInvalid, pa.ArrowIOError, OSError)
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    except errors:
        pass
    try:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except errors as exc:
        raise DatasetError(
            f"{path}: not a readable Arrow file ({exc}); expected the data-*.arrow files that save_to_disk writes"
        ) from exc


def _read_parquet(pa: Any, pq: Any, path: Path) -> Any:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc}); truncated or not Parquet?") from exc


def _concat(pa: Any, tables: list[Any], where: str) -> Any:
    try:
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise DatasetError(f"{where}: the files of one split have different columns ({exc})") from exc


def _saved_split(pa: Any, folder: Path, name: str | None) -> _Split:
    """One split written by ``Dataset.save_to_disk``."""
    state = _read_json(folder / "state.json")
    try:
        names = [entry["filename"] for entry in state["_data_files"]]
    except (KeyError, TypeError) as exc:
        raise DatasetError(
            f"{folder / 'state.json'}: no '_data_files' list of {{'filename': ...}}; not written by save_to_disk?"
        ) from exc
    if not names:
        raise DatasetError(f"{folder / 'state.json'}: lists no data files")
    files = [folder / n for n in names]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise DatasetError(f"{folder}: state.json lists data files that are missing: {', '.join(absent)}")
    table = _concat(pa, [_read_arrow(pa, f) for f in files], str(folder))
    info = folder / "dataset_info.json"
    features = _read_json(info).get("features") if info.is_file() else None
    if not isinstance(features, dict):
        features = _schema_features(table)
    return _Split(name, table, features, str(folder), folder)


def _split_of(relative: Path) -> str | None:
    m = _SPLIT_PREFIX.match(relative.stem)
    if m:
        return m.group(1)
    for part in reversed(relative.parts[:-1]):
        if part in _SPLIT_NAMES:
            return part
    return None


def _parquet_splits(pa: Any, pq: Any, root: Path) -> list[_Split]:
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise DatasetError(
            f"{root}: neither a save_to_disk folder (no dataset_dict.json or state.json) nor a folder of "
            ".parquet files; pass hf:<folder written by save_to_disk> or hf:<file or folder of .parquet files>"
        )
    groups: dict[str | None, list[Path]] = {}
    for f in files:
        groups.setdefault(_split_of(f.relative_to(root)), []).append(f)
    if None in groups and len(groups) > 1:
        stray = ", ".join(str(f.relative_to(root)) for f in groups[None])
        raise DatasetError(
            f"{root}: cannot tell the split of {stray} (other files are named after their split: "
            f"{', '.join(sorted(k for k in groups if k))}); name each file or its folder after its split"
        )
    splits = []
    for name, group in groups.items():
        table = _concat(pa, [_read_parquet(pa, pq, f) for f in group], str(root))
        where = str(group[0]) if len(group) == 1 else f"{root} ({len(group)} files of split {name!r})"
        splits.append(_Split(name, table, _schema_features(table), where, root))
    return splits


def _read_splits(root: Path) -> list[_Split]:
    pa, pq = _pyarrow()
    if root.is_file():
        if root.suffix == ".parquet":
            table = _read_parquet(pa, pq, root)
        elif root.suffix == ".arrow":
            table = _read_arrow(pa, root)
        else:
            raise DatasetError(f"{root}: expected a .parquet or .arrow file, or a folder written by save_to_disk")
        return [_Split(None, table, _schema_features(table), str(root), root.parent)]
    if (root / "dataset_dict.json").is_file():
        split_names = _read_json(root / "dataset_dict.json").get("splits")
        if not isinstance(split_names, list) or not split_names:
            raise DatasetError(f"{root / 'dataset_dict.json'}: no 'splits' list")
        return [_saved_split(pa, root / str(s), str(s)) for s in split_names]
    if (root / "state.json").is_file():
        return [_saved_split(pa, root, None)]
    return _parquet_splits(pa, pq, root)


# --------------------------------------------------------------------------- columns


def _pick(split: _Split, explicit: str | None, what: str, feature: str, names: tuple[str, ...], option: str) -> str:
    columns = list(split.table.column_names)
    how = f"name it with ?{option}=COLUMN in the hf: name ({option}_column= in load_hf)"
    if explicit is not None:
        if explicit not in columns:
            raise DatasetError(
                f"{split.where}: no column {explicit!r} (given as the {what} column); the columns are {columns}"
            )
        return explicit
    typed = [
        c for c in columns if isinstance(split.features.get(c), dict) and split.features[c].get("_type") == feature
    ]
    if len(typed) == 1:
        return typed[0]
    if len(typed) > 1:
        raise DatasetError(f"{split.where}: several {feature} columns {typed} could hold the {what}s; {how}")
    named = [c for c in names if c in columns]
    if named:
        return named[0]
    raise DatasetError(f"{split.where}: cannot tell which column holds the {what}s (columns {columns}); {how}")


class _Encoded(io.BytesIO):
    """Encoded image bytes that name their row in messages (Pillow reads file objects)."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


def _nested(pa: Any, column: Any, where: str) -> np.ndarray:
    """Nested lists of numbers, equal lengths at each level, as one array."""
    arr = column.combine_chunks()
    shape = [len(arr)]
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise DatasetError(f"{where}: {arr.null_count} missing (null) images or rows of pixels")
        if pa.types.is_fixed_size_list(arr.type):
            size = arr.type.list_size
        else:
            lengths = np.asarray(pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False))
            if lengths.size and (lengths != lengths[0]).any():
                raise DatasetError(f"{where}: images of different sizes ({sorted(set(lengths.tolist()))[:5]} ...)")
            size = int(lengths[0]) if lengths.size else 0
        shape.append(size)
        arr = arr.flatten()
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise DatasetError(f"{where}: pixels must be numbers, got {arr.type}")
    return np.asarray(arr.to_numpy(zero_copy_only=False)).reshape(shape)


def _image_column(pa: Any, split: _Split, column: str) -> np.ndarray | list[_Encoded]:
    """The column's pixels as ``uint8 (N, C, H, W)``, or its encoded images to decode."""
    where = f"{split.where}: column {column!r}"
    col = split.table.column(column)
    typ = col.type
    if pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0:
        arr = col.combine_chunks()
        blobs = arr.field("bytes").to_pylist()
        paths = arr.field("path").to_pylist() if typ.get_field_index("path") >= 0 else [None] * len(blobs)
    elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        blobs, paths = col.to_pylist(), [None] * len(col)
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _images_to_nchw(_nested(pa, col, where), column, split.where)
    else:
        raise DatasetError(
            f"{where} has type {typ}, which holds no images: expected the Image feature (bytes and path), "
            "encoded image bytes, or nested lists of pixels"
        )
    streams = []
    for i, (blob, p) in enumerate(zip(blobs, paths)):
        label = f"{split.where}: row {i} of column {column!r}"
        if blob is None:
            if p is None:
                raise DatasetError(f"{label}: no image (neither bytes nor a path)")
            file = Path(p) if Path(p).is_absolute() else split.base / p
            try:
                blob = file.read_bytes()
            except OSError as exc:
                raise DatasetError(f"{label}: the image file {file} cannot be read ({exc.strerror or exc})") from exc
        streams.append(_Encoded(blob, label))
    return streams


def _images(
    pa: Any, splits: list[_Split], column: str, image_size: tuple[int, int] | None, grayscale: bool | None
) -> list[np.ndarray]:
    """``uint8 (N, C, H, W)`` per split; encoded images of all splits are decoded together (one mode, one size)."""
    got = [_image_column(pa, s, column) for s in splits]
    if len(got[0]) == 0:
        raise DatasetError(f"{splits[0].where}: the split holds no rows")
    encoded = [g for g in got if isinstance(g, list)]
    if not encoded:
        return cast("list[np.ndarray]", got)
    if len(encoded) != len(got):
        raise DatasetError(f"column {column!r} holds encoded images in one split and pixel arrays in another")
    streams = [e for g in encoded for e in g]
    # _read_images opens each entry with PIL.Image.open, which takes file objects as well as paths.
    x = _read_images(cast("list[Path]", streams), image_size, grayscale)
    bounds = np.cumsum([len(g) for g in encoded])[:-1]
    return list(np.split(x, bounds))


def _raw_labels(pa: Any, split: _Split, column: str) -> np.ndarray:
    col = split.table.column(column).combine_chunks()
    where = f"{split.where}: column {column!r}"
    if col.null_count:
        raise DatasetError(f"{where}: {col.null_count} rows have no label (null)")
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=str)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False))
    raise DatasetError(f"{where} has type {col.type}; labels must be integers (ClassLabel) or strings")


def _class_label_names(split: _Split, column: str) -> tuple[str, ...] | None:
    feature = split.features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        names = feature.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


# --------------------------------------------------------------------------- public


def load_hf(
    path: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> ArrayDataset:
    """Load a Hugging Face dataset saved to disk or as Parquet (see the module docstring).

    Args:
        path: a ``save_to_disk`` folder, a ``.parquet`` (or ``.arrow``) file, or a
            folder of ``.parquet`` files.  A relative path that does not exist is
            also looked for in ``data_dir``.
        image_column, label_column: the columns to read; None chooses as the module
            docstring says.
        train_split: the split to train on (default ``"train"``).
        test_split: the split to test on (default ``"test"`` when there is one,
            else a stratified split of the training split).
        test_fraction, seed: the stratified split's test fraction, in [0, 1), and
            seed, when there is no test split.
        image_size: ``(height, width)`` or one int: encoded images are resized
            (bilinear) to it; None requires them all to have one size.
        grayscale: convert encoded images to L (True) or RGB (False); None: L if all
            are grey, else RGB.
        data_dir: see ``path``.

    Returns:
        An :class:`ArrayDataset` named ``hf:<folder or file stem>``: ``x_*`` ``uint8``
        ``(N, C, H, W)`` (channels first; ``C`` is 1 or 3 for encoded images),
        ``y_*`` ``int64`` class ids; ``source`` is the resolved path.

    Raises:
        DatasetError: pyarrow missing (with the install command), an unreadable or
            unrecognised layout, a named column or split that does not exist (the
            message lists those that do), an ambiguous column, undecodable images,
            or missing, negative or out-of-range labels.
    """
    fraction = _check_fraction(test_fraction)
    size = _normalise_size(image_size)
    root = Path(path).expanduser()
    if not root.exists() and not root.is_absolute() and data_dir is not None:
        root = Path(data_dir).expanduser() / root
    if not root.exists():
        raise DatasetError(f"hf:{os.fspath(path)}: {root} does not exist")
    root = root.resolve()
    splits = {s.name: s for s in _read_splits(root)}
    pa, _ = _pyarrow()

    if None in splits:
        if train_split is not None or test_split is not None:
            raise DatasetError(f"{root}: the data has no named splits, so train/test splits cannot be chosen")
        train, test = splits[None], None
    else:
        wanted = train_split or "train"
        if wanted not in splits:
            raise DatasetError(
                f"{root}: no split {wanted!r}; the splits are "
                f"{sorted(str(k) for k in splits)} (choose one with ?train=)"
            )
        train = splits[wanted]
        if test_split is not None and test_split not in splits:
            raise DatasetError(f"{root}: no split {test_split!r}; the splits are {sorted(str(k) for k in splits)}")
        test_name = test_split or ("test" if "test" in splits and wanted != "test" else None)
        test = splits[test_name] if test_name is not None else None

    image = _pick(train, image_column, "image", "Image", _IMAGE_NAMES, "image")
    label = _pick(train, label_column, "label", "ClassLabel", _LABEL_NAMES, "label")
    if image == label:
        raise DatasetError(f"{train.where}: the image and label columns are both {image!r}")
    used = [train] if test is None else [train, test]
    for s in used[1:]:
        absent = [c for c in (image, label) if c not in s.table.column_names]
        if absent:
            raise DatasetError(f"{s.where}: no column(s) {absent}; the columns are {list(s.table.column_names)}")

    raw = [_raw_labels(pa, s, label) for s in used]
    names = _class_label_names(train, label)
    if raw[0].dtype.kind == "U":
        if any(r.dtype.kind != "U" for r in raw):
            raise DatasetError(f"{root}: column {label!r} holds strings in one split and numbers in another")
        names = tuple(sorted(set().union(*(set(r.tolist()) for r in raw))))
        ids = [np.searchsorted(np.asarray(names), r).astype(np.int64) for r in raw]
    else:
        ids = []
        for s, r in zip(used, raw):
            if r.dtype.kind == "U":
                raise DatasetError(f"{root}: column {label!r} holds strings in one split and numbers in another")
            if r.size and r.min() == -1:
                raise DatasetError(
                    f"{s.where}: column {label!r} holds -1, the 'no label' value of a ClassLabel: this split is "
                    "unlabelled; choose a labelled split (?test=SPLIT), or omit it to split the training data"
                )
            ids.append(_labels_to_ids(r, len(r), label, s.where, "rows")[0])
        if names is None:
            names = unnamed_class_names({f"{s.where}: column {label!r}": i for s, i in zip(used, ids)})
        for s, i in zip(used, ids):
            if i.size and int(i.max()) >= len(names):
                raise DatasetError(
                    f"{s.where}: column {label!r} holds label {int(i.max())}, but the ClassLabel has {len(names)} names"
                )

    xs = _images(pa, used, image, size, grayscale)
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DatasetError(
            f"{root}: train images have shape {xs[0].shape[1:]} but test images {xs[1].shape[1:]} (C, H, W); "
            "pass image_size= (and grayscale=) to make them agree"
        )
    name = f"hf:{root.stem if root.is_file() else root.name}"
    if test is None:
        return _split_dataset(name, xs[0], ids[0], names, fraction, seed, str(root))
    return ArrayDataset(name, xs[0], ids[0], xs[1], ids[1], names, str(root))
