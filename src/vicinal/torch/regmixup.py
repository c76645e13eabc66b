"""RegMixup (Pinto et al., NeurIPS 2022): mixup as a regulariser of plain training.

Each step trains on the clean batch *and* a mixed copy of it::

    loss = CE(model(x), y) + η · CE(model(x_mixed), y_mixed)

with one λ ~ Beta(α, α) per batch and a large α, so that most mixes are near λ = 0.5
(α = 20 for CIFAR-10 and 10 for CIFAR-100 in the official commands,
FrancescoPinto/RegMixup ``commands.sh``; :data:`REGMIXUP_ALPHA`).

>>> import torch
>>> from vicinal.torch.regmixup import RegMixup
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> reg = RegMixup(num_classes=3, seed=0)  # regmixup_config(): λ per batch, α = 20
>>> out = reg(net, torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), step=0)
>>> out.loss.ndim, tuple(out.logits.shape), tuple(out.targets_mixed.shape)
(0, (6, 3), (6, 3))

How it relates to the official code (``models/regmixup.py``):

* The official step concatenates the clean and the mixed halves into one forward pass
  of 2B samples (so BatchNorm normalises over both halves together) and averages the
  cross-entropy over all 2B rows: that is ``½ · (CE_clean + CE_mixed)``, this loss with
  η = 1 scaled by ½. ``concat=True`` (the default) runs the same single 2B pass; the
  factor ½ is left out (with Adam it changes almost nothing; with plain SGD it halves
  the step size), so η weighs the mixed term against the clean one as the paper writes it.
  ``concat=False`` runs two forward passes of B (BatchNorm then sees each half alone).
* The mixing is vicinal's: a :class:`~vicinal.transforms.Mixer` draws the plan of
  ``(seed, epoch, step, rank)`` and :func:`vicinal.apply_plan` mixes. The default
  config, :func:`regmixup_config`, is the official ``mixup_data``: one λ per batch,
  partners a uniform random permutation. Any other mixer (CutMix, per-sample λ, ...)
  can stand in for it.
* The clean term uses the same label smoothing as the mixed one (the mixer's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vicinal._checks import check_int, check_probability, check_real_range
from vicinal._stepper import Counted, StepCounter
from vicinal.labels import batch_size_of, check_labels, is_torch_tensor, soft_unchecked
from vicinal.mixing import DataFormat
from vicinal.sampling import MixConfig
from vicinal.torch.losses import soft_target_cross_entropy
from vicinal.transforms import Mixer

__all__ = [
    "REGMIXUP_ALPHA",
    "RegMixup",
    "RegMixupBatch",
    "RegMixupOutput",
    "regmixup_config",
]

REGMIXUP_ALPHA: dict[str, float] = {"cifar10": 20.0, "cifar100": 10.0}
"""α of the official commands (``--mixup_alpha``, with ``--mixup_beta`` equal), by dataset."""


def regmixup_config(alpha: float = REGMIXUP_ALPHA["cifar10"]) -> MixConfig:
    """The official RegMixup mixing: MixUp with one λ ~ Beta(α, α) per batch and partners
    a uniform random permutation of the batch (``granularity="batch"``, ``pairing="permute"``).

    >>> regmixup_config(10.0)  # doctest: +ELLIPSIS
    MixConfig(method='mixup', alpha=10.0, ..., granularity='batch', pairing='permute', ...)
    """
    return MixConfig("mixup", alpha=alpha, granularity="batch", pairing="permute")


@dataclass(frozen=True, eq=False)
class RegMixupBatch:
    """The two halves of one RegMixup step (:meth:`RegMixup.mix`).

    Attributes:
        x: the clean inputs (B, ...), as given.
        x_mixed: the mixed inputs, x's shape, dtype and device.
        targets: float32 (B, C), the clean labels as distributions (smoothed like the mixed ones).
        targets_mixed: float32 (B, C), the mixed labels.
    """

    x: torch.Tensor
    x_mixed: torch.Tensor
    targets: torch.Tensor
    targets_mixed: torch.Tensor


@dataclass(frozen=True, eq=False)
class RegMixupOutput:
    """What one RegMixup step computed (:meth:`RegMixup.__call__`).

    Attributes:
        loss: float32 scalar, ``CE(logits, targets) + η · CE(logits_mixed, targets_mixed)``
            (batch means).
        logits, logits_mixed: (B, C) the model's outputs on the clean and the mixed halves.
        targets, targets_mixed: float32 (B, C), as in :class:`RegMixupBatch`.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    logits_mixed: torch.Tensor
    targets: torch.Tensor
    targets_mixed: torch.Tensor


class RegMixup(Counted):
    """RegMixup's loss for any model and training loop.

    Args:
        mixer: how the mixed half is made: a :class:`~vicinal.transforms.Mixer` (with
            ``targets="dense"``, not ``multi_label``; its seed, rank, label smoothing and
            step count are used), a :class:`~vicinal.sampling.MixConfig` (a Mixer is made
            from it with the keywords below), or None: :func:`regmixup_config` (α = 20).
        eta: η >= 0, the weight of the mixed term (1 in the paper).
        concat: one forward pass over the 2B concatenated samples (the official code's;
            BatchNorm normalises over both halves), or two passes of B each.
        num_classes, label_smoothing, seed, rank, data_format: the Mixer's, when
            ``mixer`` is a config or None (give them to the Mixer itself otherwise).

    The step count is the mixer's (:attr:`Mixer.counter`): a call without ``step=``
    uses it and advances it once the loss is computed, so a call that raised (in the
    model, say) does not use up a step.
    """

    def __init__(
        self,
        mixer: Mixer | MixConfig | None = None,
        *,
        eta: float = 1.0,
        concat: bool = True,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        data_format: DataFormat = "channels_first",
    ) -> None:
        if mixer is None or isinstance(mixer, MixConfig):
            config = regmixup_config() if mixer is None else mixer
            mixer = Mixer(
                config,
                num_classes=num_classes,
                label_smoothing=label_smoothing,
                seed=seed,
                rank=rank,
                data_format=data_format,
            )
        elif isinstance(mixer, Mixer):
            given = {
                "num_classes": num_classes is not None,
                "label_smoothing": check_probability("label_smoothing", label_smoothing) != 0.0,
                "seed": check_int("seed", seed, minimum=0) != 0,
                "rank": check_int("rank", rank, minimum=0) != 0,
                "data_format": data_format != "channels_first",
            }
            if any(given.values()):
                names = [name for name, on in given.items() if on]
                raise ValueError(f"{', '.join(names)} belong to the Mixer when a Mixer is given; set them there")
        else:
            raise TypeError(f"mixer must be a Mixer, a MixConfig or None, got {type(mixer).__name__}")
        if mixer.targets != "dense":
            raise ValueError("RegMixup needs a Mixer with targets='dense' (its loss takes soft targets)")
        if mixer.multi_label:
            raise ValueError("RegMixup's cross-entropy needs class distributions; the Mixer has multi_label=True")
        self.mixer = mixer
        self.counter: StepCounter = mixer.counter  # one count: the mixer's (epoch, step, set_epoch)
        self.eta = check_real_range("eta", eta, low=0.0, high=None)
        if not isinstance(concat, bool):
            raise TypeError(f"concat must be a bool, got {type(concat).__name__}")
        self.concat = concat

    def mix(self, x: torch.Tensor, y: Any, *, step: int, epoch: int | None = None) -> RegMixupBatch:
        """The clean and the mixed halves of step ``step`` (nothing is counted).

        Args:
            x: (B, ...) inputs (a torch tensor; see :func:`vicinal.apply_plan` for what it may hold).
            y: int class ids (B,) or soft labels (B, C).
        """
        if not is_torch_tensor(x):
            raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
        x_mixed, targets_mixed = self.mixer(x, y, step=step, epoch=epoch)  # validates y
        c = check_labels(y, self.mixer.num_classes, validate=False)
        targets = soft_unchecked(y, c, self.mixer.label_smoothing)
        return RegMixupBatch(x, x_mixed, targets, targets_mixed)

    def loss_of(
        self,
        logits: torch.Tensor,
        logits_mixed: torch.Tensor,
        targets: torch.Tensor,
        targets_mixed: torch.Tensor,
    ) -> torch.Tensor:
        """``CE(logits, targets) + η · CE(logits_mixed, targets_mixed)``: float32 scalar (batch means)."""
        clean = soft_target_cross_entropy(logits, targets)
        return clean + self.eta * soft_target_cross_entropy(logits_mixed, targets_mixed)

    def __call__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: Any,
        *,
        step: int | None = None,
        epoch: int | None = None,
    ) -> RegMixupOutput:
        """One step's loss: mix, run ``model``, combine the two cross-entropies.

        Args:
            model: returns (N, C) logits for N inputs (a module, or its DDP wrapper).
            x: (B, ...) clean inputs, a torch tensor.
            y: int class ids (B,) or soft labels (B, C).
            step, epoch: where this batch is; default: the mixer's count and epoch.
        """
        epoch, step, counted = self.counter.resolve(step, epoch)
        b = batch_size_of("x", x)
        batch = self.mix(x, y, step=step, epoch=epoch)
        if self.concat:
            both = _logits(model(torch.cat([batch.x, batch.x_mixed])), 2 * b)
            logits, logits_mixed = both[:b], both[b:]
        else:
            logits, logits_mixed = _logits(model(batch.x), b), _logits(model(batch.x_mixed), b)
        loss = self.loss_of(logits, logits_mixed, batch.targets, batch.targets_mixed)
        if counted:
            self.counter.advance()
        return RegMixupOutput(loss, logits, logits_mixed, batch.targets, batch.targets_mixed)

    def __repr__(self) -> str:
        return f"RegMixup({self.mixer!r}, eta={self.eta:g}, concat={self.concat})"


def _logits(out: Any, rows: int) -> torch.Tensor:
    """``out`` if it is (rows, C) logits, else a ValueError saying what the model returned."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != rows:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return (N, C) logits for its N = {rows} inputs, got {got}")
    return out
