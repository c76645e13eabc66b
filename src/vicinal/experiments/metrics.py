"""Evaluation metrics: accuracy, NLL, Brier score, calibration, FGSM robustness.

The pure functions take probabilities (N, C) and labels (N,) as torch tensors;
:func:`evaluate_all` runs a model over a uint8 test set and gathers everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vicinal.experiments.loader import to_model_input

ECE_BINS = 15
FGSM_EPSILONS = (0.01, 0.03, 0.1)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(1) == labels).double().mean())


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (probabilities floored at 1e-12)."""
    p = probs.double().gather(1, labels[:, None]).clamp_min(1e-12)
    return float(-p.log().mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of Σ_c (p_c - 1[c = y])²  (range [0, 2])."""
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the
    per-bin data of a reliability diagram.

    Returns:
        ``{"ece": float, "bins": [{"lower", "upper", "count", "confidence", "accuracy"}, ...]}``;
        empty bins have ``count`` 0 and null confidence/accuracy.
    """
    conf, pred = probs.double().max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin i holds confidences in (edge_i, edge_{i+1}]; a confidence of exactly 0 goes to bin 0.
    idx = (torch.bucketize(conf, edges[1:-1], right=False)).clamp_(0, bins - 1)
    n = conf.numel()
    ece = 0.0
    out: list[dict[str, float | int | None]] = []
    for i in range(bins):
        sel = idx == i
        count = int(sel.sum())
        if count:
            c, a = float(conf[sel].mean()), float(correct[sel].mean())
            ece += count / n * abs(c - a)
            out.append(
                {"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": count, "confidence": c, "accuracy": a}
            )
        else:
            out.append(
                {
                    "lower": float(edges[i]),
                    "upper": float(edges[i + 1]),
                    "count": 0,
                    "confidence": None,
                    "accuracy": None,
                }
            )
    return {"ece": ece, "bins": out}


def fgsm_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float] = FGSM_EPSILONS,
    *,
    batch_size: int = 500,
    channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy under the fast gradient sign attack, one step of size ε on [0, 1] inputs.

    ``x_adv = clip(x + ε·sign(∇_x CE(model(x), y)), 0, 1)`` with the model in eval mode.

    Returns:
        ``{str(ε): accuracy}``.
    """
    model.eval()
    correct = {float(e): 0 for e in epsilons}
    n = int(images.shape[0])
    for start in range(0, n, batch_size):
        x = to_model_input(images[start : start + batch_size], channels_last=channels_last)
        y = labels[start : start + batch_size]
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
        sign = grad.sign()
        with torch.no_grad():
            for e in correct:
                adv = (x + e * sign).clamp_(0.0, 1.0)
                correct[e] += int((model(adv).argmax(1) == y).sum())
    return {str(e): c / n for e, c in correct.items()}


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, channels_last: bool = False
) -> torch.Tensor:
    """Softmax probabilities float32 (N, C) of uint8 images (N, C, H, W)."""
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, int(images.shape[0]), batch_size):
        x = to_model_input(images[start : start + batch_size], channels_last=channels_last)
        out.append(torch.softmax(model(x).float(), 1))
    return torch.cat(out)


def evaluate_all(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool = False,
    epsilons: Sequence[float] = FGSM_EPSILONS,
) -> dict[str, Any]:
    """accuracy, nll, brier, ece, reliability bins and FGSM accuracies of ``model``."""
    probs = predict_probs(model, images, channels_last=channels_last)
    rel = reliability(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": rel["ece"],
        "reliability": rel["bins"],
        "fgsm": fgsm_accuracy(model, images, labels, epsilons, channels_last=channels_last),
    }
