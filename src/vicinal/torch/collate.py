"""Mixing in a ``torch.utils.data.DataLoader``: each batch knows its (epoch, step).

Mixing in the collate step lets batches travel to the training process already mixed
and, for uint8 images, still as uint8 (4x fewer bytes than float32).

A batch's plan is a pure function of ``(seed, epoch, step)``. A ``collate_fn`` alone
cannot know them: workers receive batches by capacity when ``in_order=False``, and
persistent workers never see a ``set_epoch`` made in the main process. So the step is
carried *with the indices*, from the main process: :class:`StepBatchSampler` numbers
each batch and tags every index with ``(epoch, step)``, :class:`TaggedDataset` hands
the tag through with the sample, and :class:`MixCollate` mixes with the tag's plan.
The plans are then the same for any ``num_workers``, ``in_order``,
``persistent_workers`` or ``prefetch_factor``. :func:`mixing_loader` wires the three.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> from vicinal import MixUp
>>> data = TensorDataset(torch.rand(20, 1, 8, 8), torch.arange(20) % 4)
>>> loader = mixing_loader(data, MixUp(alpha=0.2, num_classes=4, seed=0), batch_size=8)
>>> [tuple(y.shape) for _, y in loader]
[(8, 4), (8, 4), (4, 4)]
>>> loader.batch_sampler.epoch  # the next pass over the loader is epoch 1
1
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, NamedTuple

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from vicinal._checks import check_int
from vicinal._stepper import StepCounter
from vicinal.transforms import Mixer

__all__ = [
    "MixCollate",
    "StepBatchSampler",
    "StepIndex",
    "TaggedDataset",
    "TaggedSample",
    "mixing_loader",
]


class StepIndex(NamedTuple):
    """A dataset index tagged with the (epoch, step) of the batch it belongs to."""

    epoch: int
    step: int
    index: Any


class TaggedSample(NamedTuple):
    """A sample as :class:`TaggedDataset` returns it for a :class:`StepIndex`."""

    epoch: int
    step: int
    sample: Any


class StepBatchSampler(Sampler[list[StepIndex]]):
    """Batches of indices, each index tagged with its batch's ``(epoch, step)``.

    Args:
        batch_sampler: yields lists of dataset indices, e.g.
            ``BatchSampler(RandomSampler(ds), batch_size, drop_last)``.
        start_epoch: the epoch of the first pass.

    Every ``iter()`` is one epoch: the epoch number advances by itself after each pass,
    so plans never repeat across epochs even when nobody calls :meth:`set_epoch`. Call
    :meth:`set_epoch` to resume at a given epoch (it is forwarded to an inner sampler
    that has one, such as ``DistributedSampler``).
    """

    def __init__(self, batch_sampler: Iterable[list[Any]], *, start_epoch: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.counter = StepCounter(check_int("start_epoch", start_epoch, minimum=0))

    @property
    def epoch(self) -> int:
        """The epoch of the next pass."""
        return self.counter.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.counter.set_epoch(epoch)
        inner = getattr(self.batch_sampler, "sampler", self.batch_sampler)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[list[StepIndex]]:
        self.set_epoch(self.epoch)  # forwards the epoch to the inner sampler
        epoch = self.counter.next_epoch()  # advanced now: a pass abandoned half-way still counts
        for step, batch in enumerate(self.batch_sampler):
            yield [StepIndex(epoch, step, i) for i in batch]

    def __len__(self) -> int:
        if not isinstance(self.batch_sampler, Sized):
            raise TypeError("the wrapped batch_sampler has no len()")
        return len(self.batch_sampler)


class TaggedDataset(Dataset[TaggedSample]):
    """Wraps a map-style dataset so that ``ds[StepIndex(e, s, i)]`` is ``TaggedSample(e, s, ds[i])``."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getitem__(self, key: StepIndex) -> TaggedSample:
        if not isinstance(key, StepIndex):
            raise TypeError(
                f"TaggedDataset takes StepIndex keys from a StepBatchSampler, got {type(key).__name__}; "
                "build the DataLoader with vicinal.torch.collate.mixing_loader"
            )
        return TaggedSample(key.epoch, key.step, self.dataset[key.index])

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class MixCollate:
    """Collate samples with ``collate_fn``, then mix the batch with ``mixer``.

    Args:
        mixer: e.g. ``MixUp(alpha=0.2, num_classes=10)``; its pairing must be in-batch.
        collate_fn: builds ``(x, y)`` from the list of samples (default: PyTorch's).

    With samples from a :class:`TaggedDataset` (see :func:`mixing_loader`), the plan
    is the one of the batch's ``(epoch, step)``. With plain samples it falls back to
    counting batches per worker, which matches the DataLoader's round-robin hand-out
    only with ``in_order=True`` and needs :meth:`set_epoch` before every epoch (and no
    persistent workers); a warning says so once.
    """

    def __init__(self, mixer: Mixer, collate_fn: Callable[[list[Any]], Any] = default_collate) -> None:
        if not isinstance(mixer, Mixer):
            raise TypeError(f"mixer must be a vicinal Mixer, got {type(mixer).__name__}")
        if mixer.config.pairing == "stream":
            raise ValueError(
                "mixer.config.pairing='stream' needs a second batch; use an in-batch pairing in a collate_fn"
            )
        self.mixer = mixer
        self.collate_fn = collate_fn
        # Untagged samples only: counts this worker's batches (its copy of the collate).
        self.counter = StepCounter()
        self._warned = False

    @property
    def epoch(self) -> int:
        """For untagged samples only: the epoch of the batches that follow."""
        return self.counter.epoch

    def set_epoch(self, epoch: int) -> None:
        """For untagged samples only: the epoch of the batches that follow."""
        self.counter.set_epoch(epoch)

    def _untagged_step(self) -> int:
        if not self._warned:
            self._warned = True
            warnings.warn(
                "MixCollate got untagged samples: batch steps are counted per worker, which is only right "
                "with in_order=True and set_epoch() before every epoch; use vicinal.torch.collate.mixing_loader "
                "for plans that are distinct and reproducible with any DataLoader settings",
                stacklevel=3,
            )
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.counter.step * workers + worker

    def __call__(self, samples: list[Any]) -> tuple[torch.Tensor, Any]:
        if samples and isinstance(samples[0], TaggedSample):
            epoch, step = samples[0].epoch, samples[0].step
            if any(s.epoch != epoch or s.step != step for s in samples):
                raise ValueError("a batch mixes samples of different (epoch, step) tags")
            samples = [s.sample for s in samples]
            counted = False
        else:
            epoch, step, counted = self.epoch, self._untagged_step(), True
        batch = self.collate_fn(samples)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("collate_fn must return an (x, y) pair")
        x, y = batch
        mixed = self.mixer(x, y, step=step, epoch=epoch)
        if counted:  # a batch that raised does not use up a step
            self.counter.advance()
        return mixed


def mixing_loader(
    dataset: Dataset[Any],
    mixer: Mixer,
    *,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    start_epoch: int = 0,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    **dataloader_options: Any,
) -> DataLoader[Any]:
    """A DataLoader whose batches are mixed with the plan of their own (epoch, step).

    Args:
        dataset: a map-style dataset of ``(x, y)`` samples.
        mixer: the transform; ``mixer.seed`` fixes the plans.
        batch_size, shuffle, drop_last, generator: as for ``DataLoader`` (``generator``
            seeds the shuffling; pass one for a reproducible order).
        start_epoch: the epoch of the first pass (to resume); each pass advances it.
        collate_fn: builds ``(x, y)`` from the samples before mixing.
        dataloader_options: any other ``DataLoader`` keyword (``num_workers``,
            ``persistent_workers``, ``in_order``, ``prefetch_factor``, ``pin_memory``...).

    Returns:
        A ``DataLoader`` yielding ``(x_mixed, y_mixed)``; its ``batch_sampler`` is the
        :class:`StepBatchSampler` (``loader.batch_sampler.set_epoch(e)`` to resume).
    """
    check_int("batch_size", batch_size, minimum=1)
    for name in ("sampler", "batch_sampler", "shuffle"):
        if name in dataloader_options:
            raise ValueError(f"mixing_loader builds its own sampler; {name!r} cannot be passed")
    sampler: Sampler[Any] = (
        RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)  # type: ignore[arg-type]
    )
    batches = StepBatchSampler(BatchSampler(sampler, batch_size, drop_last), start_epoch=start_epoch)
    return DataLoader(
        TaggedDataset(dataset),
        batch_sampler=batches,
        collate_fn=MixCollate(mixer, collate_fn),
        **dataloader_options,
    )
