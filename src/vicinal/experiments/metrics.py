"""Evaluation metrics: accuracy, NLL, Brier score, calibration, FGSM robustness.

The pure functions take probabilities (N, C) and labels (N,) as torch tensors;
:func:`evaluate_all` runs a model over a test set (uint8 images (N, C, H, W), or float
features (N, F) / (N, T, F)) and gathers everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vicinal.experiments.loader import input_kind, to_model_input

__all__ = [
    "ECE_BINS",
    "FGSM_EPSILONS",
    "accuracy",
    "brier",
    "evaluate_all",
    "fgsm_accuracy",
    "nll",
    "predict_probs",
    "reliability",
]

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
    """Accuracy under the fast gradient sign attack, one step of size ε.

    Images (uint8 (N, C, H, W), scaled to [0, 1]):
    ``x_adv = clip(x + ε·sign(∇_x CE(model(x), y)), 0, 1)``. Features (float (N, F) or
    (N, T, F)): ``x_adv = x + ε·sign(∇_x CE)``, unclipped, so ε is in feature units:
    on standardised features, a fraction of one standard deviation per feature. The
    model is in eval mode.

    Args:
        images: uint8 images or float features (see :func:`~vicinal.experiments.loader.input_kind`).
        labels: int64 class ids (N,).

    Returns:
        ``{str(ε): accuracy}``.
    """
    model.eval()
    clip = input_kind(images) == "images"
    eps = [float(e) for e in epsilons]
    # Hits per ε, counted on the images' device and read once at the end (no sync per batch).
    correct = torch.zeros(len(eps), dtype=torch.int64, device=images.device)
    n = int(images.shape[0])
    # cuDNN's RNN backward runs in training mode only: recurrent models take the native kernels.
    has_rnn = any(isinstance(m, nn.RNNBase) for m in model.modules())
    with torch.backends.cudnn.flags(enabled=not has_rnn and torch.backends.cudnn.enabled):
        for start in range(0, n, batch_size):
            _fgsm_batch(model, images, labels, start, batch_size, eps, correct, clip=clip, channels_last=channels_last)
    return {str(e): c / n for e, c in zip(eps, correct.tolist())}


def _fgsm_batch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    start: int,
    batch_size: int,
    epsilons: Sequence[float],
    correct: torch.Tensor,
    *,
    clip: bool,
    channels_last: bool,
) -> None:
    """Add the FGSM hits of rows ``[start, start + batch_size)`` to ``correct`` (int64, one count per ε)."""
    x = to_model_input(images[start : start + batch_size], channels_last=channels_last)
    if not clip:
        x = x.detach().clone()  # features pass through to_model_input as views of the test set
    y = labels[start : start + batch_size]
    x.requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    sign = grad.sign()
    with torch.no_grad():
        for i, e in enumerate(epsilons):
            adv = x + e * sign
            if clip:
                adv.clamp_(0.0, 1.0)
            correct[i] += (model(adv).argmax(1) == y).sum()


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, channels_last: bool = False
) -> torch.Tensor:
    """Softmax probabilities float32 (N, C) of uint8 images (N, C, H, W) or float features (N, F) / (N, T, F)."""
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
    """accuracy, nll, brier, ece, reliability bins and FGSM accuracies of ``model``.

    ``images``: uint8 images (N, C, H, W) or float features (N, F) / (N, T, F); for
    features FGSM's ε is in feature units (see :func:`fgsm_accuracy`). The model runs on
    the images' device; the probabilities are then scored on the CPU (one copy).
    """
    probs = predict_probs(model, images, channels_last=channels_last).cpu()
    fgsm = fgsm_accuracy(model, images, labels, epsilons, channels_last=channels_last)
    labels = labels.cpu()
    rel = reliability(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": rel["ece"],
        "reliability": rel["bins"],
        "fgsm": fgsm,
    }
