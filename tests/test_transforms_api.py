"""The transforms' contracts: what they accept, refuse and count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vicinal
from vicinal import CutMix, MixConfig, MixUp, sample_plan


def test_a_failed_call_does_not_use_up_a_step() -> None:
    mix = MixUp(num_classes=3, seed=0)
    x = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="class ids"):
        mix(x, np.array([0, 1, 2, 7]))
    first, _ = mix(x, np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(first, MixUp(num_classes=3, seed=0)(x, np.array([0, 1, 2, 0]), step=0)[0])


def test_numpy_scalars_are_accepted_and_bools_refused() -> None:
    assert MixConfig(alpha=np.float32(0.2), k=2).alpha == pytest.approx(0.2)
    assert MixConfig("kway", k=np.int64(3)).k == 3
    assert sample_plan(MixConfig(), 4, seed=np.uint32(5)).batch_size == 4
    with pytest.raises(TypeError, match="alpha"):
        MixConfig(alpha=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        sample_plan(MixConfig(), 4, seed=np.bool_(True))  # type: ignore[arg-type]


def test_tiny_concentrations_are_refused_not_turned_into_nan() -> None:
    with pytest.raises(ValueError, match="alpha must be 0 .* or >= 1e-300"):
        MixConfig(alpha=1e-320)
    plan = sample_plan(MixConfig(alpha=1e-300), 10_000, seed=0)
    assert np.isfinite(plan.lam).all() and set(np.unique(plan.lam)) <= {0.0, 1.0}
    assert 0.45 < plan.lam.mean() < 0.55  # Beta(a, a) -> Bernoulli(1/2) as a -> 0


def test_mixer_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        MixUp(label_smoothing=1.5)
    with pytest.raises(ValueError, match="targets"):
        MixUp(targets="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data_format"):
        CutMix(data_format="NHWC")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets='pair'"):
        vicinal.KWayMix(targets="pair")


def test_one_call_functions_require_the_step() -> None:
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="step"):
        vicinal.mixup(x, seed=0)  # type: ignore[call-arg]
    a, _ = vicinal.mixup(x + np.arange(4)[:, None], seed=0, step=0)
    b, _ = vicinal.mixup(x + np.arange(4)[:, None], seed=0, step=1)
    assert not np.array_equal(a, b)


def test_channels_last_memory_format_is_kept_and_not_mistaken_for_nhwc() -> None:
    x = torch.rand(4, 3, 8, 6).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4) % 2
    out, _ = CutMix(num_classes=2, seed=0)(x, y)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # The box covers whole channels: every channel of a pixel comes from the same sample.
    from_partner = out != x
    assert torch.equal(from_partner.any(1, keepdim=True).expand_as(from_partner), from_partner)
    with pytest.raises(ValueError, match="torch.channels_last memory format"):
        CutMix(num_classes=2, data_format="channels_last")(x, y)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    out_nhwc, _ = CutMix(num_classes=2, seed=0, data_format="channels_last")(nhwc, y)
    torch.testing.assert_close(out_nhwc, out.permute(0, 2, 3, 1))


def test_torch_only_names_are_exported() -> None:
    from vicinal.torch.collate import MixCollate, mixing_loader
    from vicinal.torch.losses import SoftTargetCrossEntropy, soft_target_cross_entropy

    assert vicinal.MixCollate is MixCollate and vicinal.mixing_loader is mixing_loader
    logits, target = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1)
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, target), soft_target_cross_entropy(logits, target))
    with pytest.raises(ValueError, match="reduction"):
        SoftTargetCrossEntropy("avg")  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vicinal.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_mixer_passes_its_input_checks_to_apply_plan() -> None:
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="2"):
        MixUp(num_classes=3, check_finite=True)(x, np.arange(4) % 3)
    multi_hot = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]], np.float32)
    _, mixed = MixUp(alpha=1.0, multi_label=True)(np.ones((4, 3), np.float32), multi_hot)
    assert mixed.shape == (4, 3) and (mixed <= 1).all() and (mixed >= 0).all()
    with pytest.raises(ValueError, match="multi_label"):
        MixUp(alpha=1.0)(np.ones((4, 3), np.float32), multi_hot)
    with pytest.raises(TypeError, match="validate"):
        MixUp(validate="no")  # type: ignore[arg-type]
