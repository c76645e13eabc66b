"""The data of a run: a dataset by name or path, split into training, validation and test sets.

:func:`load_splits` is what runs call: it loads the dataset of a :class:`RunSpec`
(:func:`load_any`), splits it (:func:`make_splits`) and keeps the last few splits in a
small cache (:data:`SPLITS_CACHE_SIZE`), so that the cells of a study that share their
data load it once per process. :func:`check_fits` refuses, before anything is written, a
model or a mixing that can't take the data, and :func:`training_batches` is the loader
of a spec's training split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vicinal.experiments.data import (
    ArrayDataset,
    available_datasets,
    is_dataset_name,
    load_dataset,
    load_image_folder,
    load_npz,
)
from vicinal.experiments.distributed import SINGLE, DistContext
from vicinal.experiments.loader import InMemoryLoader, check_data_fits, to_model_input
from vicinal.experiments.models import build_model, check_model_on_batch, is_user_model
from vicinal.experiments.spec import RunSpec
from vicinal.torch.manifold import ManifoldMixup

__all__ = [
    "FIRST_IMAGES_DATASETS",
    "SPLITS_CACHE_SIZE",
    "SPLIT_SEED",
    "USER_MODEL_CHECK_BATCH",
    "SplitKey",
    "Splits",
    "check_fits",
    "load_any",
    "load_splits",
    "make_splits",
    "stratified_order",
    "training_batches",
]


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, C, H, W) or float32 features (N, F) / (N, T, F) and int64 labels
    (N,) of each split, plus the class names, the split rule and where the data came from."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    class_names: tuple[str, ...]
    rule: str = "first images (the keras.io reference's split)"
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W), (F,) or (T, F)."""
        return tuple(int(d) for d in self.train[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_any(dataset: str, data_dir: str | None) -> ArrayDataset:
    """A registered dataset by name, or your own: a ``.npz`` file or a class-folder tree.

    A relative path that doesn't exist is also looked for in ``data_dir``, so a preset
    naming ``breast-cancer.npz`` runs from anywhere with ``--data-dir``.
    """
    if is_dataset_name(dataset):
        return load_dataset(dataset, data_dir)
    path = Path(dataset)
    if not path.exists() and not path.is_absolute() and data_dir is not None:
        path = Path(data_dir) / path
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise ValueError(
        f"dataset must be one of {list(available_datasets())}, a .npz file or a folder of class folders; "
        f"got {dataset!r}"
    )


#: Datasets split as the keras.io reference splits Fashion-MNIST: the *first* images.
FIRST_IMAGES_DATASETS = frozenset({"fashion-mnist", "mnist"})
SPLIT_SEED = 0


def stratified_order(labels: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """A seeded shuffle of ``range(len(labels))`` in which every prefix is stratified.

    Each sample is ranked by its position within its own class (in a random order of
    that class) divided by the class's size, so that any prefix of the order holds the
    classes in (nearly) their overall proportions: taking the first ``val_size`` for
    validation and the next ``train_limit`` for training leaves no class out.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    y = labels[perm]
    quantile = np.empty(len(labels))
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        quantile[where] = (np.arange(where.size) + rng.random()) / where.size
    return perm[np.argsort(quantile, kind="stable")]


def make_splits(ds: ArrayDataset, spec: RunSpec) -> Splits:
    """Validation, training and test splits of ``ds`` by ``spec``'s ``val_size``, ``train_limit``, ``test_limit``.

    For the reference datasets (:data:`FIRST_IMAGES_DATASETS`) the first ``val_size``
    training images are the validation set and ``train_limit`` takes the first of the
    rest, as in the keras.io example. Any other dataset (an image folder or ``.npz``,
    often sorted by class) is first put in a seeded stratified order
    (:func:`stratified_order`), so that neither split lacks a class. ``Splits.rule``
    records which rule was used.
    """
    n = len(ds.y_train)
    if spec.val_size >= n:
        raise ValueError(f"val_size={spec.val_size} leaves no training images (the training set has {n})")
    x_all, y_all = ds.x_train, ds.y_train
    rule = "first images (the keras.io reference's split)"
    if spec.dataset not in FIRST_IMAGES_DATASETS:
        order = stratified_order(np.asarray(y_all))
        x_all, y_all = x_all[order], y_all[order]
        rule = f"stratified shuffle (seed {SPLIT_SEED})"
    xv, yv = x_all[: spec.val_size], y_all[: spec.val_size]
    xt, yt = x_all[spec.val_size :], y_all[spec.val_size :]
    if spec.train_limit is not None:
        xt, yt = xt[: spec.train_limit], yt[: spec.train_limit]
    xs, ys = ds.x_test, ds.y_test
    if spec.test_limit is not None:
        xs, ys = xs[: spec.test_limit], ys[: spec.test_limit]
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    source = str(ds.source)
    if is_dataset_name(ds.name):
        source += " (every file matched its published checksum)"
    train, val, test = (as_t(xt), as_t(yt)), (as_t(xv), as_t(yv)), (as_t(xs), as_t(ys))
    return Splits(train, val, test, tuple(ds.class_names), rule, source)


@dataclass(frozen=True)
class SplitKey:
    """The fields of a :class:`RunSpec` that its splits depend on."""

    dataset: str
    data_dir: str | None
    val_size: int
    train_limit: int | None
    test_limit: int | None

    @classmethod
    def of(cls, spec: RunSpec) -> SplitKey:
        return cls(spec.dataset, spec.data_dir, spec.val_size, spec.train_limit, spec.test_limit)


#: Training samples :func:`check_fits` runs your own model on before a run starts.
USER_MODEL_CHECK_BATCH = 4

#: How many splits :func:`load_splits` keeps per process (a study rarely uses more than one dataset).
SPLITS_CACHE_SIZE = 2


@functools.lru_cache(maxsize=SPLITS_CACHE_SIZE)
def _load_splits_cached(key: SplitKey) -> Splits:
    return make_splits(load_any(key.dataset, key.data_dir), RunSpec(**vars(key)))


def load_splits(spec: RunSpec) -> Splits:
    """The splits of ``spec``'s data, loaded once per process for the last :data:`SPLITS_CACHE_SIZE` keys.

    The tensors are shared between callers: treat them as read-only.
    """
    return _load_splits_cached(SplitKey.of(spec))


def check_fits(spec: RunSpec, splits: Splits) -> None:
    """Refuse a spec whose model or mixing can't take the data, before anything is written.

    The model takes the samples (your own ``package.module:factory`` model is built and
    run on a batch of the training images: finite logits of shape (B, classes)), the
    mixing applies to them (no CutMix on features), the crop, flip and normalisation to
    images only, and a Manifold Mixup arm's layers are modules of the model.
    ``spec.model`` must be set (see :meth:`RunSpec.for_data`).

    Raises:
        ValueError: naming the mismatch (see :func:`~vicinal.experiments.loader.check_data_fits`).
    """
    x = splits.train[0]
    check_data_fits(x, model=spec.model, mix=spec.loader_mixing(), crop=spec.crop_flip(), normalize=spec.normalize)
    if spec.model is not None and is_user_model(spec.model):
        check_model_on_batch(spec.model, to_model_input(x[:USER_MODEL_CHECK_BATCH]), splits.num_classes)
    manifold = spec.manifold()
    if manifold is not None:
        assert spec.model is not None
        with torch.random.fork_rng(devices=[]):  # building the model draws its initial weights
            model = build_model(spec.model, splits.input_shape, splits.num_classes)
        ManifoldMixup(model, manifold[1], manifold[0])


def training_batches(
    spec: RunSpec,
    splits: Splits,
    *,
    mixed: bool = True,
    labels: torch.Tensor | None = None,
    device: str = "cpu",
    channels_last: bool | None = None,
    dist: DistContext = SINGLE,
    policy: str = "independent",
) -> InMemoryLoader:
    """The training batches of ``spec`` on ``splits.train``: its seed's order and plans, its
    mixing and AugMix (with ``mixed``; plain batches otherwise), its label smoothing, and
    (every arm) its crop, flip and normalisation statistics; for RegMixup and MIT plain
    batches carrying the step's :class:`~vicinal.experiments.spec.StepLoss`.

    Args:
        labels: the training labels to use instead of ``splits.train``'s (e.g. noisy ones).
        device: where the loader keeps the training data and makes the batches.
        channels_last: the batches' memory format; default ``spec.channels_last``.
        dist, policy: see :class:`~vicinal.experiments.loader.InMemoryLoader`.
    """
    x_train, y_train = splits.train
    return InMemoryLoader(
        x_train,
        y_train if labels is None else labels,
        num_classes=splits.num_classes,
        batch_size=spec.batch_size,
        seed=spec.seed,
        mix=spec.loader_mixing() if mixed else None,
        augmix=spec.augmix_config() if mixed else None,
        jsd=spec.jsd and mixed,
        step_loss=spec.step_loss() if mixed else None,
        crop=spec.crop_flip(),
        normalize=spec.normalize,
        label_smoothing=spec.label_smoothing,
        channels_last=spec.channels_last if channels_last is None else channels_last,
        device=device,
        dist=dist,
        policy=policy,
    )
