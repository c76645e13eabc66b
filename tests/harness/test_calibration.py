"""Calibration as the papers measure it: 15 equal-width bins (lower < c <= upper), and ECE
after temperature scaling fitted on the validation split by NLL minimisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vicinal.experiments.metrics import (
    ECE_BINS,
    TEMPERATURE_BOUNDS,
    evaluate_all,
    fit_temperature,
    nll,
    reliability,
    temperature_scaling,
)


def _calibrated(n: int, seed: int, c: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax *is* the label distribution: labels are drawn from it."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, c, generator=g)
    return z, torch.multinomial(torch.softmax(z, 1), 1, generator=g)[:, 0]


def test_bins_hold_lower_exclusive_upper_inclusive() -> None:
    assert ECE_BINS == 15
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    at_edge = edges[9]  # 0.6: the upper edge of bin 8
    above = at_edge + 1e-9
    probs = torch.tensor([[at_edge, 1 - at_edge], [above, 1 - above], [1.0, 0.0]], dtype=torch.float64)
    bins = reliability(probs, torch.tensor([0, 0, 0]))["bins"]
    assert bins[8]["count"] == 1 and bins[9]["count"] == 1 and bins[14]["count"] == 1
    assert bins[8]["upper"] == pytest.approx(0.6) and bins[9]["lower"] == pytest.approx(0.6)


def test_temperature_recovers_the_scale_of_over_and_under_confident_logits() -> None:
    """Fixed seeds, n = 10,000 per split, 10 classes. The calibrated logits z give T ≈ 1;
    s·z gives T ≈ s. Tolerance 5% (the fitted T of this draw is 1.2% off at n = 20,000)."""
    zv, yv = _calibrated(10_000, seed=0)
    z, y = _calibrated(10_000, seed=1)
    for scale in (1.0, 2.5, 0.5):
        ts = temperature_scaling(scale * zv, yv, scale * z, y)
        assert ts["temperature"] == pytest.approx(scale, rel=0.05)
        before = reliability(torch.softmax(scale * z, 1), y)["ece"]
        if scale == 1.0:
            assert ts["ece_ts"] < 0.03 and before < 0.03  # calibrated either way
        else:
            assert before > 0.1 and ts["ece_ts"] < 0.03 and ts["ece_ts"] < before / 4
        assert ts["nll_ts"] <= nll(torch.softmax(scale * z, 1), y) + 1e-9 or scale == 1.0
    # The over-confident case in the harness's words: T > 1 and the ECE drops.
    over = temperature_scaling(3.0 * zv, yv, 3.0 * z, y)
    assert over["temperature"] > 1 and over["ece_ts"] < reliability(torch.softmax(3.0 * z, 1), y)["ece"]


def test_fitted_temperature_minimises_the_validation_nll_and_is_deterministic() -> None:
    zv, yv = _calibrated(3000, seed=2)
    zv = 1.7 * zv
    t = fit_temperature(zv, yv)

    def val_nll(temp: float) -> float:
        return nll(torch.softmax(zv.double() / temp, 1), yv)

    assert val_nll(t) <= min(val_nll(t * 0.99), val_nll(t * 1.01))
    assert fit_temperature(zv, yv) == t  # same logits, same T, bit for bit
    perm = torch.randperm(3000, generator=torch.Generator().manual_seed(0))
    assert fit_temperature(zv[perm], yv[perm]) == pytest.approx(t, rel=1e-9)
    assert fit_temperature(zv.float(), yv) == pytest.approx(t, rel=1e-6)


def test_bounds_and_bad_input() -> None:
    # Every sample right by a wide margin: the NLL falls all the way to T_min.
    z = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert fit_temperature(z, torch.tensor([0, 1])) == TEMPERATURE_BOUNDS[0]
    # Every sample wrong: the flattest temperature allowed.
    assert fit_temperature(z, torch.tensor([1, 0])) == TEMPERATURE_BOUNDS[1]
    # Constant logits: the NLL does not depend on T, and T = 1 says "leave them".
    assert fit_temperature(torch.zeros(3, 4), torch.tensor([0, 1, 2])) == 1.0
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_temperature(torch.tensor([[math.nan, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        fit_temperature(z, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fit_temperature(z[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, torch.tensor([0, 1]), bounds=(2.0, 1.0))


class _Scaled(nn.Module):
    """A fixed linear model on 4 features, its logits multiplied by ``scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.lin(x)


def test_evaluate_all_records_the_temperature_and_ece_after_scaling() -> None:
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(400, 4, generator=g), torch.randn(300, 4, generator=g)
    model = _Scaled(1.0)
    with torch.no_grad():  # labels drawn from the model itself, then the model made over-confident
        y = torch.multinomial(torch.softmax(model(x), 1), 1, generator=g)[:, 0]
        yv = torch.multinomial(torch.softmax(model(xv), 1), 1, generator=g)[:, 0]
    model.scale = 4.0
    plain = evaluate_all(model, x, y, epsilons=(0.1,))
    assert not {"temperature", "ece_ts", "nll_ts"} & set(plain)
    m = evaluate_all(model, x, y, epsilons=(0.1,), val=(xv, yv))
    assert m["ece"] == plain["ece"] and m["accuracy"] == plain["accuracy"]
    assert m["temperature"] == pytest.approx(4.0, rel=0.3) and m["ece_ts"] < m["ece"]
    model.scale = math.nan  # a diverged model: no temperature, and no NaN recorded
    broken = evaluate_all(model, x, y, epsilons=(0.1,), val=(xv, yv))
    assert not {"temperature", "ece_ts", "nll_ts"} & set(broken)
