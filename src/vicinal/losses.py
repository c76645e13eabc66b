"""Losses for mixed targets (PyTorch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from vicinal._checks import check_choice
from vicinal.mixing import MixedTargets

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def soft_target_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Cross-entropy against soft targets: ``-sum_c target_c · log_softmax(logits)_c``.

    Args:
        logits: (B, C) unnormalised scores (any float dtype; computed in float32).
        target: (B, C) float, rows summing to 1 (e.g. mixed labels).
        reduction: ``"mean"`` over the batch, ``"sum"`` or ``"none"`` (per sample, (B,)).
    """
    if logits.ndim != 2 or tuple(target.shape) != tuple(logits.shape):
        raise ValueError(f"logits and target must both be (B, C), got {tuple(logits.shape)} and {tuple(target.shape)}")
    per_sample = -(target.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mixed_loss(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    targets: MixedTargets,
) -> torch.Tensor:
    """``mean_i [lam_i · L(logits_i, y_a_i) + (1 - lam_i) · L(logits_i, y_b_i)]``.

    ``criterion`` must return per-sample losses (B,), e.g.
    ``functools.partial(torch.nn.functional.cross_entropy, reduction="none")``. For a
    loss linear in its target (cross-entropy) this equals the loss on dense mixed targets.
    """
    if not isinstance(targets, MixedTargets):
        raise TypeError(f"targets must be MixedTargets, got {type(targets).__name__}")
    la = criterion(logits, targets.y_a)
    lb = criterion(logits, targets.y_b)
    if la.ndim != 1:
        raise ValueError("criterion must return per-sample losses of shape (B,) (use reduction='none')")
    lam = targets.lam.to(la.dtype)
    loss: torch.Tensor = (lam * la + (1.0 - lam) * lb).mean()
    return loss


class SoftTargetCrossEntropy(torch.nn.Module):
    """:func:`soft_target_cross_entropy` as a module: ``criterion(logits, target)``.

    Args:
        reduction: ``"mean"`` over the batch, ``"sum"`` or ``"none"`` (per sample).

    Takes logits (B, C) and float targets (B, C) whose rows sum to 1 (mixed labels).
    """

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction: Reduction = check_choice("reduction", reduction, REDUCTIONS)  # type: ignore[assignment]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, target, reduction=self.reduction)
