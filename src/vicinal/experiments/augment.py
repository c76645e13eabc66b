"""The baseline augmentation of the CIFAR tables, and per-channel input normalisation.

* :class:`CropFlip`: a random crop of each image padded with zeros on every side
  (``padding`` pixels; the CIFAR recipe's 4) and a horizontal flip with probability
  1/2, as torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``. The
  draws of a batch (:meth:`CropFlip.sample`) are a pure function of ``(seed, epoch,
  step, rank)``, drawn on the host from vicinal's counter-based streams (purpose
  ``"crop"``, independent of the mixing plan of the same step), so a run's batches are
  the same on every device and after a resume; :func:`crop_flip` applies them to a
  whole batch with one gather on the images' device (no per-sample Python).
* :class:`ChannelStats`: the per-channel mean and standard deviation of the training
  images; :meth:`ChannelStats.attach` makes a model normalise its input as
  ``(x - mean) / std`` (torchvision's ``Normalize``), in training and evaluation alike.
  Mixing commutes with it (a per-pixel convex combination of two images, normalised,
  is the same combination of the normalised images), so it can run inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from vicinal._checks import check_int
from vicinal._counter import generator

__all__ = ["ChannelStats", "CropFlip", "Normalizer", "crop_flip"]


@dataclass(frozen=True)
class CropFlip:
    """Random crop with zero padding and horizontal flip, per image.

    Args:
        padding: pixels of zeros added on every side before a crop of the original
            size is taken at a uniformly drawn offset in ``0 .. 2 * padding`` (both
            axes independently); 0: no crop.
        flip: flip each image left to right with probability 1/2.

    Raises:
        ValueError: a negative padding, or neither a crop nor a flip.
    """

    padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        check_int("crop_padding", self.padding, minimum=0)
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be a bool, got {type(self.flip).__name__}")
        if self.padding == 0 and not self.flip:
            raise ValueError("CropFlip with padding=0 and flip=False does nothing; use no CropFlip")

    def sample(self, n: int, *, seed: int, epoch: int = 0, step: int = 0, rank: int = 0) -> np.ndarray:
        """The draws for ``n`` images: int64 (n, 3) of ``(dy, dx, flip)``.

        ``dy`` and ``dx`` are the crop's top-left corner in the padded image, uniform in
        ``0 .. 2 * padding`` (0 without a crop); ``flip`` is 1 with probability 1/2 (0
        without flips). A pure function of its arguments.
        """
        check_int("n", n, minimum=0)
        rng = generator(seed, "crop", epoch=epoch, step=step, rank=rank)
        out = np.zeros((n, 3), dtype=np.int64)
        if self.padding:
            out[:, :2] = rng.integers(0, 2 * self.padding + 1, size=(n, 2))
        if self.flip:
            out[:, 2] = rng.integers(0, 2, size=n)
        return out


def crop_flip(images: torch.Tensor, draws: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop and flip each image of a batch as its row of ``draws`` says (a new tensor).

    Args:
        images: (B, C, H, W), any dtype (the harness passes its uint8 images: one byte
            a pixel moves).
        draws: int64 (B, 3) of ``(dy, dx, flip)`` (:meth:`CropFlip.sample`), on the
            images' device.
        padding: the zero padding the draws were made for.

    Returns:
        (B, C, H, W), contiguous, the images' dtype and device: image ``b`` is the
        H×W window at ``(dy, dx)`` of itself padded with ``padding`` zeros, flipped
        left to right where ``flip`` is 1.
    """
    if images.ndim != 4 or draws.shape != (images.shape[0], 3):
        raise ValueError(
            f"images must be (B, C, H, W) and draws (B, 3), got {tuple(images.shape)} and {tuple(draws.shape)}"
        )
    b, c, h, w = images.shape
    src = F.pad(images, (padding,) * 4) if padding else images
    width = w + 2 * padding
    rows = draws[:, 0:1] + torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    # The flipped window reads its columns right to left: column j comes from w - 1 - j.
    cols = torch.where(draws[:, 2:3].bool(), (w - 1) - cols, cols) + draws[:, 1:2]
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return src.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of images scaled to [0, 1].

    Attributes:
        mean, std: one value per channel; a constant channel's std is recorded as 1
            (normalising then only centres it).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, images: torch.Tensor | np.ndarray) -> ChannelStats:
        """The statistics of uint8 images (N, C, H, W) (NumPy or torch, any device).

        Exact: computed in float64 from each channel's histogram of its 256 values, so
        neither the order of the images nor the device changes them.
        """
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(
                f"per-channel normalisation needs uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        values = torch.arange(256, dtype=torch.float64) / 255.0
        means, stds = [], []
        for ch in range(int(x.shape[1])):
            counts = torch.bincount(x[:, ch].reshape(-1), minlength=256).cpu().double()
            total = counts.sum()
            mean = float((counts * values).sum() / total)
            var = float((counts * (values - mean) ** 2).sum() / total)
            means.append(mean)
            stds.append(var**0.5 if var > 0 else 1.0)
        return cls(tuple(means), tuple(stds))

    def attach(self, model: nn.Module) -> RemovableHandle:
        """Make ``model`` normalise its first positional input (a forward pre-hook); returns the handle."""
        normalizer = Normalizer(self)

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (normalizer(args[0]), *args[1:])

        return model.register_forward_pre_hook(hook)


class Normalizer:
    """``x -> (x - mean) / std`` per channel, with the statistics kept on each device used.

    Args:
        stats: the statistics.

    Calling it on float (B, C, ...) returns a new tensor of the same shape, dtype and
    memory format; the statistics are moved to a device once (no copy per call).
    """

    def __init__(self, stats: ChannelStats) -> None:
        self.stats = stats
        self._on: dict[tuple[torch.device, torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = len(self.stats.mean)
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[1] != c or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"normalisation of {c}-channel images needs float (B, {c}, ...) input, got {got}")
        key = (x.device, x.dtype, x.ndim)
        if key not in self._on:
            shape = (1, c) + (1,) * (x.ndim - 2)
            # Ordinary tensors even when first met under inference_mode (evaluation).
            with torch.inference_mode(False):
                mean = torch.tensor(self.stats.mean, dtype=x.dtype).view(shape).to(x.device)
                std = torch.tensor(self.stats.std, dtype=x.dtype).view(shape).to(x.device)
            self._on[key] = (mean, std)
        mean, std = self._on[key]
        return x.sub(mean).div_(std)
