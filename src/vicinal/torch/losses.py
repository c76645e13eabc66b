"""Losses for mixed targets (PyTorch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from vicinal._checks import check_choice
from vicinal.mixing import MixedTargets

__all__ = [
    "REDUCTIONS",
    "SoftTargetCrossEntropy",
    "jensen_shannon_consistency",
    "mixed_loss",
    "soft_target_cross_entropy",
]

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


def jensen_shannon_consistency(
    logits_clean: torch.Tensor, logits_aug1: torch.Tensor, logits_aug2: torch.Tensor
) -> torch.Tensor:
    """AugMix's Jensen–Shannon consistency: JS(p_clean, p_aug1, p_aug2), batch mean.

    Computed as the AugMix reference code does: ``p_* = softmax(logits_*)``, the
    mixture ``M = clamp((p_clean + p_aug1 + p_aug2) / 3, 1e-7, 1)``, and the mean of
    ``KL(p_* ‖ M)`` over the three, each averaged over the batch
    (``F.kl_div(log M, p_*, reduction="batchmean")``). Returns the divergence itself:
    the paper's total loss is ``cross_entropy(logits_clean, y) + 12 · JS`` (λ = 12),
    so multiply by 12 to match it.

    Symmetric in its three arguments; 0 (up to the clamp and rounding) when the three
    distributions agree. Differentiable with respect to all three logits, with finite
    gradients even where a probability underflows to 0 (the KL terms take
    ``log_softmax`` as their log-target instead of ``log`` of a softmax).

    Args:
        logits_clean, logits_aug1, logits_aug2: (B, C) unnormalised scores of the clean
            batch and of its two AugMix views (any float dtype; computed in float32).

    Returns:
        A float32 scalar >= 0 (natural log units, at most log 3).
    """
    shapes = {tuple(t.shape) for t in (logits_clean, logits_aug1, logits_aug2)}
    if len(shapes) != 1 or logits_clean.ndim != 2:
        raise ValueError(
            "logits_clean, logits_aug1 and logits_aug2 must all be (B, C) of one shape, got "
            f"{[tuple(t.shape) for t in (logits_clean, logits_aug1, logits_aug2)]}"
        )
    log_probs = [F.log_softmax(t.float(), dim=1) for t in (logits_clean, logits_aug1, logits_aug2)]
    mixture = (log_probs[0].exp() + log_probs[1].exp() + log_probs[2].exp()) / 3.0
    log_mixture = torch.clamp(mixture, 1e-7, 1.0).log()
    # log_target: the reference's kl_div(log M, p) has a -inf gradient where a
    # probability underflows to 0 (softmax of logits ~100 apart), which the softmax turns
    # into NaN; with log p from log_softmax the value is the same and the gradient finite.
    kl = [F.kl_div(log_mixture, lp, reduction="batchmean", log_target=True) for lp in log_probs]
    js: torch.Tensor = (kl[0] + kl[1] + kl[2]) / 3.0
    return js
