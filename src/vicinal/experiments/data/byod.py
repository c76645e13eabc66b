"""Bring-your-own-data loaders: a folder of images, or a ``.npz`` archive.

Both return an :class:`~vicinal.experiments.data.ArrayDataset` (``uint8`` images of
shape ``(N, C, H, W)``, or for a ``.npz`` also ``float32`` features of shape
``(N, F)`` or ``(N, T, F)``; ``int64`` labels).  When the data has no predefined
test set, it is split with :func:`_stratified_split`: seeded, stratified
per class (each class contributes ``test_fraction`` of its samples, the total
being ``round(N * test_fraction)`` distributed by largest remainder), every
class keeps at least one training sample, and both parts keep the original
order of the samples (for image folders: class by class, files sorted), so
shuffle when training.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, unnamed_class_names
from .errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "NPZ_KINDS", "load_image_folder", "load_npz"]

#: File extensions (lower case) that :func:`load_image_folder` reads; others are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# --------------------------------------------------------------------------- splitting


def _check_fraction(test_fraction: float) -> float:
    try:
        f = float(test_fraction)
    except (TypeError, ValueError):
        raise DatasetError(f"test_fraction must be a number, got {test_fraction!r}") from None
    if not 0.0 <= f < 1.0:  # also rejects NaN
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    return f


def _stratified_split(
    y: np.ndarray, num_classes: int, test_fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(y)-1`` into (train, test); see the module docstring."""
    counts = np.bincount(y, minlength=num_classes)
    total_test = int(np.floor(len(y) * test_fraction + 0.5))
    quota = counts * test_fraction
    n_test = np.floor(quota).astype(np.int64)
    cap = np.maximum(counts - 1, 0)
    n_test = np.minimum(n_test, cap)
    remaining = total_test - int(n_test.sum())
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while remaining > 0 and bool((n_test < cap).any()):
        for c in order:
            if remaining == 0:
                break
            if n_test[c] < cap[c]:
                n_test[c] += 1
                remaining -= 1
    if test_fraction > 0 and n_test.sum() == 0:
        raise DatasetError(
            f"{what}: test_fraction={test_fraction} of {len(y)} samples leaves no test "
            "samples; add data, raise test_fraction, or pass test_fraction=0 for no test set"
        )
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        is_test[rng.choice(members, size=int(n_test[c]), replace=False)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _split_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    class_names: tuple[str, ...],
    test_fraction: float,
    seed: int,
    source: str,
) -> ArrayDataset:
    train, test = _stratified_split(y, len(class_names), test_fraction, seed, source)
    return ArrayDataset(name, x[train], y[train], x[test], y[test], class_names, source)


# --------------------------------------------------------------------------- image folders


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_dirs(root: Path) -> list[Path]:
    dirs = (p for p in root.iterdir() if p.is_dir() and _visible(p.name))
    return sorted(dirs, key=lambda p: p.name)


def _image_files(class_dir: Path) -> list[Path]:
    files = [
        p
        for p in class_dir.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and all(_visible(part) for part in p.relative_to(class_dir).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(class_dir).as_posix())


def _collect(root: Path, class_names: Sequence[str] | None) -> tuple[list[str], list[Path], list[int]]:
    """Return (class names, image paths, label ids) for one folder of class folders."""
    dirs = _class_dirs(root)
    if not dirs:
        raise DatasetError(
            f"{root}: no class sub-folders; expected one folder per class "
            "(e.g. root/cat/*.png, root/dog/*.png), or train/ and test/ folders that hold them"
        )
    names = [d.name for d in dirs]
    if class_names is not None:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise DatasetError(
                f"{root}: class folder(s) {unknown} have no counterpart among the training classes {list(class_names)}"
            )
        names = list(class_names)
    index = {n: i for i, n in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        files = _image_files(d)
        if not files:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"{d}: class folder contains no images (extensions read: {exts})")
        paths.extend(files)
        labels.extend([index[d.name]] * len(files))
    return names, paths, labels


def _open_error(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(f"{path}: cannot read this image file ({type(exc).__name__}: {exc})")


def _read_images(paths: list[Path], image_size: tuple[int, int] | None, grayscale: bool | None) -> np.ndarray:
    from PIL import Image

    # Pass 1: headers only (mode and size), to choose the channel count and check sizes.
    modes, sizes = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                modes.append(im.mode)
                sizes.append(im.size)  # (width, height)
        except Exception as exc:  # PIL raises many types for bad files
            raise _open_error(p, exc) from exc
    if grayscale is None:
        grayscale = all(m in _GRAY_MODES for m in modes)
    mode, channels = ("L", 1) if grayscale else ("RGB", 3)
    if image_size is None:
        w, h = sizes[0]
        for p, s in zip(paths, sizes):
            if s != (w, h):
                raise DatasetError(
                    f"{p}: image is {s[0]}x{s[1]} (width x height) but {paths[0]} is {w}x{h}; "
                    "all images must have the same size, or pass image_size=(height, width) "
                    "to resize them"
                )
    else:
        h, w = image_size
    resample = getattr(Image, "Resampling", Image).BILINEAR

    out = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as opened:
                converted = opened.convert(mode)
                if converted.size != (w, h):
                    converted = converted.resize((w, h), resample)
                arr = np.asarray(converted, dtype=np.uint8)
        except Exception as exc:
            raise _open_error(p, exc) from exc
        out[i] = arr.reshape(h, w, channels)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _normalise_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size: tuple[int, ...] = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise DatasetError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size[0], size[1]


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArrayDataset:
    """Load a folder of images, one sub-folder per class, with Pillow.

    Layouts:

    * ``root/<class>/**/<image>``: the sorted class folder names are the
      classes; a seeded stratified split (see the module docstring) makes
      the test set;
    * ``root/train/<class>/...`` and ``root/test/<class>/...``: the given
      split is used as is (``test_fraction`` and ``seed`` are ignored); the
      classes are the train class folders, and test class folders must be a
      subset of them.  Other entries of ``root`` are ignored.

    Files with an extension outside :data:`IMAGE_EXTENSIONS` and hidden
    files/folders are ignored.  Images are converted to ``L`` (1 channel) or
    ``RGB`` (3 channels; alpha is dropped).  With ``grayscale=None`` the
    choice is automatic: RGB if any image has a colour mode (RGB, RGBA, P,
    CMYK, ...), else L.

    Args:
        root: the dataset folder.
        image_size: ``(height, width)`` or one int for square images; images
            are resized (bilinear) to it.  If None, all images must already
            have the same size.
        grayscale: force L (True) or RGB (False); None chooses automatically.
        test_fraction: fraction of each class put in the test set, in [0, 1).
        seed: seed of the split.

    Returns:
        An :class:`ArrayDataset` named after the folder, with ``x_*`` ``uint8``
        of shape ``(N, C, H, W)`` (``C`` is 1 or 3) and ``y_*`` ``int64``.

    Raises:
        DatasetError: missing or empty root, a class folder without images, an
            unreadable image file, differing sizes without ``image_size``,
            only one of ``train/`` and ``test/``, or a bad argument.
    """
    root_path = Path(root).expanduser()
    size = _normalise_size(image_size)
    fraction = _check_fraction(test_fraction)
    if not root_path.is_dir():
        why = "does not exist" if not root_path.exists() else "is not a directory"
        raise DatasetError(f"image folder {root_path} {why}")
    root_path = root_path.resolve()
    source = str(root_path)
    name = root_path.name or "images"

    train_dir, test_dir = root_path / "train", root_path / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise DatasetError(
            f"{root_path}: has a {have}/ folder but no {lack}/ folder; provide both (each "
            f"with one sub-folder per class), or put the class folders directly in {root_path}"
        )
    if train_dir.is_dir():
        class_names, train_paths, train_labels = _collect(train_dir, None)
        _, test_paths, test_labels = _collect(test_dir, class_names)
        x = _read_images(train_paths + test_paths, size, grayscale)
        n = len(train_paths)
        return ArrayDataset(
            name,
            x[:n],
            np.asarray(train_labels, dtype=np.int64),
            x[n:],
            np.asarray(test_labels, dtype=np.int64),
            tuple(class_names),
            source,
        )

    class_names, paths, labels = _collect(root_path, None)
    x = _read_images(paths, size, grayscale)
    y = np.asarray(labels, dtype=np.int64)
    return _split_dataset(name, x, y, tuple(class_names), fraction, seed, source)


# --------------------------------------------------------------------------- npz

#: The values of ``load_npz``'s ``kind`` (and of an archive's ``kind`` array).
NPZ_KINDS = ("images", "features")


def _npz_kind(x: np.ndarray, kind: str | None, source: str) -> str:
    """``kind`` if given, else what ``x`` holds by the rule of :func:`load_npz`."""
    if kind is not None:
        if kind not in NPZ_KINDS:
            raise DatasetError(f"{source}: kind must be one of {list(NPZ_KINDS)} or None, got {kind!r}")
        return kind
    if x.ndim == 2:
        return "features"
    if x.ndim != 3 or x.dtype.kind != "f" or x.size == 0 or not np.isfinite(x).all():
        return "images"  # NaN or inf: refused as pixels, naming the problem
    return "features" if float(x.min()) < 0.0 or float(x.max()) > 1.0 else "images"


def _stored_kind(arrays: dict[str, np.ndarray], source: str) -> str:
    stored = arrays["kind"]
    if stored.size != 1 or stored.dtype.kind not in "US":
        raise DatasetError(
            f"{source}: 'kind' must be one string, 'images' or 'features' (np.array('features')), "
            f"got {stored.dtype} {stored.shape}"
        )
    value = stored.reshape(()).item()
    value = value.decode() if isinstance(value, bytes) else str(value)
    if value not in NPZ_KINDS:
        raise DatasetError(f"{source}: 'kind' must be 'images' or 'features', got {value!r}")
    return value


def _to_features(x: np.ndarray, key: str, source: str) -> np.ndarray:
    """Real-valued (N, F) or (N, T, F) -> C-contiguous float32, checked finite."""
    where = f"{source}: {key!r}"
    if x.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: features must be a real (integer or float) array, got {x.dtype}")
    if x.ndim not in (2, 3):
        raise DatasetError(
            f"{where}: expected features of shape (N, F) (tabular) or (N, T, F) (sequences), got {x.shape}"
        )
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = "NaN or infinity" if not np.isfinite(x).all() else "values beyond the float32 range"
        raise DatasetError(f"{where}: features contain {bad}; features must be finite float32 values")
    return out


def _images_to_nchw(x: np.ndarray, key: str, source: str) -> np.ndarray:
    where = f"{source}: {key!r}"
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind in "iu":
        if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
            raise DatasetError(f"{where}: integer pixels must be in 0..255, found {int(x.min())}..{int(x.max())}")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DatasetError(f"{where}: float pixels contain NaN or infinity")
        if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise DatasetError(
                f"{where}: float pixels must be in [0, 1], found {float(x.min()):g}.."
                f"{float(x.max()):g} (divide by 255, or store uint8)"
            )
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise DatasetError(f"{where}: pixels must be uint8 or float in [0, 1], got {x.dtype}")

    if x.ndim == 3:
        return np.ascontiguousarray(x[:, None])
    if x.ndim != 4:
        raise DatasetError(f"{where}: expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")
    _, a, b, c = x.shape
    if c in (1, 3, 4) and a > c and b > c:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if a in (1, 3, 4) and b > a and c > a:
        return np.ascontiguousarray(x)
    raise DatasetError(
        f"{where}: cannot tell the channel axis of shape {x.shape}: store (N, H, W, C) or "
        "(N, C, H, W) with C in {1, 3, 4} and smaller than both H and W"
    )


def _labels_to_ids(y: np.ndarray, n: int, key: str, source: str, noun: str = "images") -> tuple[np.ndarray, int | None]:
    """Return (int64 ids, one-hot width or None)."""
    where = f"{source}: {key!r}"
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: labels must be numeric, got {y.dtype}")
    width = None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        width = y.shape[1]
        is_binary = ((y == 0) | (y == 1)).all()
        if not is_binary or not (np.count_nonzero(y, axis=1) == 1).all():
            raise DatasetError(
                f"{where}: 2-D labels must be one-hot (each row a single 1, zeros elsewhere); "
                "soft labels are not supported, store integer class ids of shape (N,)"
            )
        ids = np.argmax(y, axis=1).astype(np.int64)
    elif y.ndim == 1:
        if y.dtype.kind == "b":
            raise DatasetError(f"{where}: 1-D labels must be integer class ids, got bool")
        if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
            raise DatasetError(f"{where}: labels must be integer class ids, got non-integers")
        ids = y.astype(np.int64)
    else:
        raise DatasetError(f"{where}: labels must have shape (N,) (class ids) or (N, C) (one-hot), got {y.shape}")
    if len(ids) != n:
        raise DatasetError(f"{where}: {len(ids)} labels for {n} {noun}; the lengths must match")
    neg = np.flatnonzero(ids < 0)
    if neg.size:
        i = int(neg[0])
        raise DatasetError(f"{where}: negative label {int(ids[i])} at index {i}; labels must be 0..C-1")
    return ids, width


def load_npz(
    path: str | os.PathLike[str],
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    kind: str | None = None,
) -> ArrayDataset:
    """Load a dataset from a NumPy ``.npz`` archive: images, or feature arrays.

    Keys: ``x`` and ``y`` (required); ``x_test`` and ``y_test`` (optional,
    both or neither; when present no split is made and ``test_fraction``/
    ``seed`` are ignored); ``class_names`` (optional string array); ``kind``
    (optional string, ``"images"`` or ``"features"``).  Other keys are
    ignored.  The file is opened with ``allow_pickle=False``.

    What ``x`` holds: the ``kind`` argument, else the archive's ``kind``, else
    by shape and dtype: a 2-D ``x`` is features ``(N, F)``; a 3-D float ``x``
    with values outside [0, 1] is features ``(N, T, F)``; anything else is images
    (so a 3-D float array in [0, 1] is read as ``(N, H, W)`` images: store
    ``kind="features"`` to read it as sequences).

    Features (tabular rows ``(N, F)`` or sequences ``(N, T, F)``): any real dtype,
    stored as ``float32``; they must be finite.  They are fed to the model as they
    are, so standardise them first (e.g. with the training set's mean and standard
    deviation per feature).

    Images: ``uint8`` (other integer dtypes are accepted if in 0..255); or
    float in [0, 1], converted with ``rint(x * 255)``.  Layout: 3-D is
    ``(N, H, W)`` (one channel); 4-D is channels-last ``(N, H, W, C)`` if the
    last dimension is 1, 3 or 4 and smaller than the two before it, else
    channels-first ``(N, C, H, W)`` if dimension 1 is 1, 3 or 4 and smaller
    than the two after it; anything else is rejected as ambiguous.

    Labels: integer class ids of shape ``(N,)`` (or ``(N, 1)``; float arrays
    holding whole numbers are accepted), or one-hot ``(N, C)``.

    Classes: the ``class_names`` argument, else the archive's ``class_names``,
    else ``"0".."K-1"`` where ``K`` is the one-hot width or the largest
    label + 1.

    Args:
        path: the ``.npz`` file.
        test_fraction: fraction per class for the test set when there is no
            ``x_test``; in [0, 1).
        seed: seed of the split.
        class_names: overrides the archive's class names.

        kind: ``"images"``, ``"features"``, or None (the archive's ``kind``, else
            the rule above).

    Returns:
        An :class:`ArrayDataset` named after the file stem, ``x_*`` ``uint8``
        ``(N, C, H, W)`` images or ``float32`` ``(N, F)`` / ``(N, T, F)`` features,
        ``y_*`` ``int64`` ``(N,)``.

    Raises:
        DatasetError: unreadable file, missing keys, bad dtypes or values,
            ambiguous layout, length mismatches, negative or out-of-range
            labels, a ``kind`` other than ``"images"`` or ``"features"``.
    """
    p = Path(path).expanduser()
    fraction = _check_fraction(test_fraction)
    source = str(p.resolve()) if p.exists() else str(p)
    try:
        archive = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{p}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{p}: is a single .npy array, expected an .npz archive with arrays 'x' and 'y' "
            "(np.savez(path, x=..., y=...))"
        )
    arrays: dict[str, np.ndarray] = {}
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DatasetError(
                f"{p}: missing array(s) {missing}; found {sorted(keys)}. Expected 'x' (images) "
                "and 'y' (labels), optionally 'x_test', 'y_test' and 'class_names'"
            )
        if ("x_test" in keys) != ("y_test" in keys):
            have = "x_test" if "x_test" in keys else "y_test"
            raise DatasetError(f"{p}: has {have!r} without its partner; give both or neither")
        for k in ("x", "y", "x_test", "y_test", "class_names", "kind"):
            if k in keys:
                try:
                    arrays[k] = archive[k]
                except ValueError as exc:
                    raise DatasetError(
                        f"{p}: array {k!r} cannot be loaded without pickle ({exc}); store "
                        "plain numeric arrays (and class_names as np.array(names, dtype=str))"
                    ) from exc
                except (OSError, zipfile.BadZipFile, EOFError) as exc:
                    raise DatasetError(f"{p}: array {k!r} is damaged ({exc})") from exc

    if kind is None and "kind" in arrays:
        kind = _stored_kind(arrays, str(p))
    kind = _npz_kind(arrays["x"], kind, str(p))
    convert = _images_to_nchw if kind == "images" else _to_features
    noun = "images" if kind == "images" else "samples"
    x = convert(arrays["x"], "x", str(p))
    if len(x) == 0:
        raise DatasetError(f"{p}: 'x' holds no {noun}")
    y, width = _labels_to_ids(arrays["y"], len(x), "y", str(p), noun)
    has_test = "x_test" in arrays
    if has_test:
        x_test = convert(arrays["x_test"], "x_test", str(p))
        y_test, width_test = _labels_to_ids(arrays["y_test"], len(x_test), "y_test", str(p), noun)
        if x_test.shape[1:] != x.shape[1:]:
            layout = "(C, H, W)" if kind == "images" else "(F,) or (T, F)"
            raise DatasetError(
                f"{p}: 'x' samples have shape {x.shape[1:]} {layout} but 'x_test' samples have {x_test.shape[1:]}"
            )
        if width is not None and width_test is not None and width != width_test:
            raise DatasetError(f"{p}: one-hot 'y' has {width} classes but 'y_test' has {width_test}")
        width = width if width is not None else width_test
        all_ids = np.concatenate([y, y_test])
    else:
        all_ids = y

    if class_names is None and "class_names" in arrays:
        stored = arrays["class_names"]
        if stored.ndim != 1 or stored.dtype.kind not in "US":
            raise DatasetError(f"{p}: 'class_names' must be a 1-D string array, got {stored.dtype} {stored.shape}")
        class_names = [s.decode() if isinstance(s, bytes) else str(s) for s in stored.tolist()]
    n_seen = int(all_ids.max()) + 1
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        if width is not None and width != len(names):
            raise DatasetError(f"{p}: one-hot labels have {width} columns but there are {len(names)} class names")
        if n_seen > len(names):
            raise DatasetError(f"{p}: label {n_seen - 1} is out of range for {len(names)} class names")
    elif width is not None:  # one-hot: the width is the class count (its array was allocated already)
        names = tuple(str(i) for i in range(width))
    else:
        names = unnamed_class_names({f"{p}: 'y'": y, **({f"{p}: 'y_test'": y_test} if has_test else {})})

    name = p.stem or "npz"
    if has_test:
        return ArrayDataset(name, x, y, x_test, y_test, names, source)
    return _split_dataset(name, x, y, names, fraction, seed, source)
