"""Evaluation metrics: accuracy, NLL, Brier score, calibration, FGSM robustness.

The pure functions take probabilities (N, C) and labels (N,) as torch tensors (the
temperature fit takes logits); :func:`evaluate_all` runs a model over a test set (uint8
images (N, C, H, W), or float features (N, F) / (N, T, F)) and gathers everything.

Calibration is measured as the calibration papers measure it (Guo et al., 2017): ECE over
15 equal-width confidence bins, bin ``i`` holding ``lower < confidence <= upper``; and
ECE after temperature scaling (:func:`fit_temperature`: one T fitted on the validation
split by minimising its NLL, then applied to the test logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vicinal.experiments.loader import input_kind, to_model_input

__all__ = [
    "ECE_BINS",
    "FGSM_EPSILONS",
    "TEMPERATURE_BOUNDS",
    "accuracy",
    "brier",
    "evaluate_all",
    "fgsm_accuracy",
    "fit_temperature",
    "nll",
    "predict_logits",
    "predict_probs",
    "reliability",
    "temperature_scaling",
]

ECE_BINS = 15
FGSM_EPSILONS = (0.01, 0.03, 0.1)
#: The range :func:`fit_temperature` searches: T in [0.01, 100].
TEMPERATURE_BOUNDS = (0.01, 100.0)
# Bisection halvings of the log(1/T) interval (width ln 1e4 ~ 9.2): 40 leave it 1e-11
# wide, a relative error of 1e-11 in T.
_BISECTIONS = 40


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

    ECE = Σ_i (n_i / N)·|mean confidence_i − accuracy_i| over the bins, bin ``i`` holding
    the samples whose top-class probability c has ``i/bins < c <= (i+1)/bins`` (Guo et
    al.'s bins; a confidence of exactly 0, impossible for a top class, would count in bin 0).

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
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, channels_last: bool = False
) -> torch.Tensor:
    """Logits float32 (N, C) of uint8 images (N, C, H, W) or float features (N, F) / (N, T, F),
    in eval mode, on the images' device."""
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, int(images.shape[0]), batch_size):
        x = to_model_input(images[start : start + batch_size], channels_last=channels_last)
        out.append(model(x).float())
    return torch.cat(out)


def predict_probs(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, channels_last: bool = False
) -> torch.Tensor:
    """Softmax probabilities float32 (N, C) of :func:`predict_logits`."""
    return torch.softmax(predict_logits(model, images, batch_size=batch_size, channels_last=channels_last), 1)


def _checked_logits(logits: torch.Tensor, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 CPU copies of (N, C) finite logits and their int64 labels (N,) in [0, C)."""
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0] or logits.shape[0] == 0:
        raise ValueError(
            f"{name} must be (N, C) logits with N >= 1 and labels (N,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    z, y = logits.detach().double().cpu(), labels.detach().cpu().long()
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} hold NaN or inf: no temperature can be fitted to them")
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise ValueError(f"{name}' labels must be class ids in [0, {z.shape[1]}), got [{int(y.min())}, {int(y.max())}]")
    return z, y


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature T that minimises the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Deterministic: the NLL is convex in β = 1/T (a log-sum-exp of functions linear in β,
    minus a linear term), so its derivative ``mean(E_softmax(βz)[z] - z_y)`` increases
    with β, and its root is found by bisection on log β (40 halvings, float64). No
    random start, no optimiser state, the same T for the same logits on any machine.

    Args:
        logits: (N, C) finite logits of the validation split (any float dtype).
        labels: int class ids (N,).
        bounds: ``(T_min, T_max)`` searched, ``0 < T_min < T_max``; T is clipped to them
            when the NLL still decreases at the bound (e.g. every sample right and
            separable: T -> 0). Logits whose NLL does not depend on T (constant rows) give 1.

    Returns:
        T > 0 (T > 1: the logits were over-confident; T < 1: under-confident).

    Raises:
        ValueError: bad shapes, labels out of range, NaN/inf logits, bad bounds.
    """
    t_min, t_max = (float(b) for b in bounds)
    if not 0 < t_min < t_max < math.inf:
        raise ValueError(f"bounds must be (T_min, T_max) with 0 < T_min < T_max < inf, got {bounds!r}")
    z, y = _checked_logits(logits, labels, "logits")
    z_y = z.gather(1, y[:, None])[:, 0]

    gaps = z - z_y[:, None]  # z_c - z_y: the slope summed this way keeps its tiny terms

    def slope(log_beta: float) -> float:  # dNLL/dβ at β = exp(log_beta)
        p = torch.softmax(math.exp(log_beta) * z, dim=1)
        return float((p * gaps).sum(1).mean())

    lo, hi = -math.log(t_max), -math.log(t_min)
    at_lo, at_hi = slope(lo), slope(hi)
    if at_lo == 0 and at_hi == 0:  # the NLL does not depend on T (e.g. constant logits)
        return 1.0
    if at_hi <= 0:  # still falling (or flat to float precision) at the sharpest β allowed
        return t_min
    if at_lo >= 0:  # already rising at the flattest
        return t_max
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp(-0.5 * (lo + hi))


def temperature_scaling(
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    bins: int = ECE_BINS,
) -> dict[str, float]:
    """Calibration after temperature scaling: T fitted on the validation logits
    (:func:`fit_temperature`), then the test logits' ECE and NLL at that T.

    Returns:
        ``{"temperature": T, "ece_ts": ECE of softmax(logits / T) (``bins`` equal-width
        bins), "nll_ts": its mean NLL}``.
    """
    t = fit_temperature(val_logits, val_labels)
    z, y = _checked_logits(logits, labels, "logits")
    probs = torch.softmax(z / t, dim=1)
    return {"temperature": t, "ece_ts": reliability(probs, y, bins)["ece"], "nll_ts": nll(probs, y)}


def evaluate_all(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool = False,
    epsilons: Sequence[float] = FGSM_EPSILONS,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """accuracy, nll, brier, ece, reliability bins and FGSM accuracies of ``model``, and
    with ``val`` the calibration after temperature scaling.

    ``images``: uint8 images (N, C, H, W) or float features (N, F) / (N, T, F); for
    features FGSM's ε is in feature units (see :func:`fgsm_accuracy`). The model runs on
    the images' device; the logits are then scored on the CPU (one copy).

    Args:
        val: the validation split (inputs, labels), as ``images``: a temperature is fitted
            on it (:func:`temperature_scaling`) and ``temperature``, ``ece_ts`` and
            ``nll_ts`` are added. They are left out when the model's logits hold NaN or
            inf (a diverged model has no temperature).
    """
    logits = predict_logits(model, images, channels_last=channels_last).cpu()
    probs = torch.softmax(logits, 1)
    fgsm = fgsm_accuracy(model, images, labels, epsilons, channels_last=channels_last)
    labels = labels.cpu()
    rel = reliability(probs, labels)
    out: dict[str, Any] = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": rel["ece"],
        "reliability": rel["bins"],
        "fgsm": fgsm,
    }
    if val is not None:
        val_logits = predict_logits(model, val[0], channels_last=channels_last).cpu()
        if bool(torch.isfinite(val_logits).all()) and bool(torch.isfinite(logits).all()):
            out.update(temperature_scaling(val_logits, val[1].cpu(), logits, labels))
    return out
