"""A ``collate_fn`` for ``torch.utils.data.DataLoader`` that mixes each batch.

Mixing in the collate step lets batches travel to the training process already mixed
and, for uint8 images, still as uint8 (4x fewer bytes than float32).

Reproducibility: the plan of a batch depends on (seed, epoch, step) only. The
DataLoader hands batch ``i`` of an epoch to worker ``i % num_workers``, so worker
``w`` numbers its ``n``-th batch ``n * num_workers + w``; the same seed therefore gives
the same plans with 0, 1 or many workers. Call :meth:`MixCollate.set_epoch` before each
epoch (as with ``DistributedSampler``) and do not use ``persistent_workers=True``: a
persistent worker keeps its own copy and would not see the new epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from vicinal._checks import check_int
from vicinal.transforms import Mixer


class MixCollate:
    """Collate samples with ``collate_fn``, then mix the batch with ``mixer``.

    Args:
        mixer: e.g. ``MixUp(alpha=0.2, num_classes=10)``; its pairing must be in-batch.
        collate_fn: builds ``(x, y)`` from the list of samples (default: PyTorch's).
    """

    def __init__(self, mixer: Mixer, collate_fn: Callable[[Sequence[Any]], Any] = default_collate) -> None:
        if not isinstance(mixer, Mixer):
            raise TypeError(f"mixer must be a vicinal Mixer, got {type(mixer).__name__}")
        if mixer.config.pairing == "stream":
            raise ValueError(
                "mixer.config.pairing='stream' needs a second batch; use an in-batch pairing in a collate_fn"
            )
        self.mixer = mixer
        self.collate_fn = collate_fn
        self.epoch = 0
        self._count = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._count = 0

    def __call__(self, samples: Sequence[Any]) -> tuple[torch.Tensor, Any]:
        batch = self.collate_fn(samples)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("collate_fn must return an (x, y) pair")
        x, y = batch
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        step = self._count * workers + worker
        self._count += 1
        return self.mixer(x, y, step=step, epoch=self.epoch)
