"""Library inputs that mixing would otherwise take silently: non-finite images, labels
that are not distributions, multi-label targets, bool images, meta tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.labels import SOFT_LABEL_TOLERANCE, to_soft

BACKENDS = ["numpy", "torch"]


def _as(backend: str, a: np.ndarray) -> object:
    return torch.from_numpy(a) if backend == "torch" else a


def _plan(b: int = 6, **kw: object):  # type: ignore[no-untyped-def]
    return sample_plan(MixConfig(alpha=1.0, pairing="permute", **kw), b, seed=0)  # type: ignore[arg-type]


def _soft(b: int = 6, c: int = 4, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).random((b, c)).astype(np.float32) + 0.1
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- non-finite x


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_finite_names_the_samples(backend: str) -> None:
    x = np.random.default_rng(0).random((6, 2, 3, 3)).astype(np.float32)
    x[2, 1, 0, 0] = np.nan
    x[5, 0, 2, 1] = -np.inf
    plan = _plan()
    # By default NaN spreads into the sample paired with sample 2, silently.
    xm, _ = apply_plan(plan, _as(backend, x))
    took_2 = np.flatnonzero(plan.partners[:, 0] == 2)
    assert np.isnan(np.asarray(xm)[took_2]).any()
    with pytest.raises(ValueError, match=r"x holds NaN or inf in samples \[2, 5\]"):
        apply_plan(plan, _as(backend, x), check_finite=True)
    ok = np.nan_to_num(x, posinf=0.0, neginf=0.0)
    xm, _ = apply_plan(plan, _as(backend, ok), check_finite=True)
    np.testing.assert_array_equal(np.asarray(xm), np.asarray(apply_plan(plan, _as(backend, ok))[0]))


def test_check_finite_checks_the_partner_batch_too() -> None:
    plan = sample_plan(MixConfig(pairing="stream"), 4, seed=0)
    x, x2 = torch.rand(4, 5), torch.rand(4, 5)
    x2[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"x_partner holds NaN or inf in samples \[1\]"):
        apply_plan(plan, x, x_partner=x2, check_finite=True)
    # uint8 and integer inputs are finite by construction
    apply_plan(
        plan, torch.zeros(4, 5, dtype=torch.uint8), x_partner=torch.zeros(4, 5, dtype=torch.uint8), check_finite=True
    )


# --------------------------------------------------------------------------- soft labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_labels_must_be_distributions(backend: str) -> None:
    x = np.zeros((6, 3), np.float32)
    plan = _plan()
    y = _soft()
    apply_plan(plan, _as(backend, x), _as(backend, y))  # valid rows pass

    negative = y.copy()
    negative[1] = [1.2, -0.2, 0.0, 0.0]  # sums to 1
    with pytest.raises(ValueError, match=r"y holds soft labels that are negative, NaN or inf in rows \[1\]"):
        apply_plan(plan, _as(backend, x), _as(backend, negative))
    nan = y.copy()
    nan[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"negative, NaN or inf in rows \[4\]"):
        apply_plan(plan, _as(backend, x), _as(backend, nan))
    unnormalised = y.copy()
    unnormalised[[0, 3]] *= 2
    with pytest.raises(ValueError, match=r"rows must sum to 1.*rows \[0, 3\] sum to \[2\.0, 2\.0\].*multi_label=True"):
        apply_plan(plan, _as(backend, x), _as(backend, unnormalised))


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_sum_tolerance(backend: str) -> None:
    assert SOFT_LABEL_TOLERANCE == 1e-3
    y = _soft()
    y[:, 0] += np.float32(0.5 * SOFT_LABEL_TOLERANCE)  # within tolerance
    to_soft(_as(backend, y))
    y[2, 0] += np.float32(SOFT_LABEL_TOLERANCE)  # 1.5e-3 off
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        to_soft(_as(backend, y))


def test_partner_soft_labels_are_checked_by_name() -> None:
    plan = sample_plan(MixConfig(pairing="stream"), 6, seed=0)
    y = torch.from_numpy(_soft())
    bad = y.clone()
    bad[0] = -bad[0]
    with pytest.raises(ValueError, match="y_partner holds soft labels that are negative"):
        apply_plan(plan, torch.zeros(6, 2), y, x_partner=torch.zeros(6, 2), y_partner=bad)


# --------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_label_targets_are_mixed_without_renormalising(backend: str) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((6, 5)) < 0.4).astype(np.float32)  # multi-hot: rows sum to 0..5
    y[0] = [1, 1, 1, 0, 0]
    y[1, :] = 0.3  # independent probabilities
    plan = _plan()
    x = np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match="multi_label=True"):
        apply_plan(plan, _as(backend, x), _as(backend, y))
    _, ym = apply_plan(plan, _as(backend, x), _as(backend, y), multi_label=True)
    lam = plan.lam.astype(np.float32)[:, None]
    np.testing.assert_allclose(np.asarray(ym), y * lam + y[plan.partners[:, 0]] * (1 - lam), atol=1e-6)
    for as_dtype in (np.int64, np.bool_):  # integer and bool multi-hot give the same targets
        _, ym_int = apply_plan(plan, _as(backend, x), _as(backend, (y == 1).astype(as_dtype)), multi_label=True)
        expected = apply_plan(plan, _as(backend, x), _as(backend, (y == 1).astype(np.float32)), multi_label=True)[1]
        np.testing.assert_array_equal(np.asarray(ym_int), np.asarray(expected))
    bad = y.copy()
    bad[3, 1] = 1.5
    with pytest.raises(ValueError, match=r"multi-label targets outside \[0, 1\].*rows \[3\]"):
        apply_plan(plan, _as(backend, x), _as(backend, bad), multi_label=True)
    bad_int = (y == 1).astype(np.int64)
    bad_int[2, 0] = 2
    with pytest.raises(ValueError, match=r"outside \[0, 1\] in rows \[2\]"):
        apply_plan(plan, _as(backend, x), _as(backend, bad_int), multi_label=True)


def test_multi_label_pair_targets_and_smoothing() -> None:
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    plan = sample_plan(MixConfig(alpha=1.0, pairing="flip"), 4, seed=0)
    x = torch.zeros(4, 2)
    pair = apply_plan(plan, x, y, multi_label=True, targets="pair")[1]
    torch.testing.assert_close(pair.y_b, y.flip(0))
    dense = apply_plan(plan, x, y, multi_label=True, label_smoothing=0.3)[1]
    plain = apply_plan(plan, x, y, multi_label=True)[1]
    torch.testing.assert_close(dense, plain * 0.7 + 0.1)  # y·(1-ε) + ε/C, as timm


def test_bool_labels_still_need_multi_label() -> None:
    with pytest.raises(TypeError, match=r"dtype torch.bool.*multi_label=True"):
        apply_plan(_plan(), torch.zeros(6, 2), torch.ones(6, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- validate=False


def test_validate_false_skips_value_checks() -> None:
    plan = _plan()
    x = torch.rand(6, 3)
    ids = torch.tensor([0, 1, 2, 3, 4, 7])  # 7 is out of range for 5 classes
    with pytest.raises(ValueError, match=r"class ids in \[0, 7\]"):
        apply_plan(plan, x, ids, num_classes=5)
    _, ym = apply_plan(plan, x, ids, num_classes=5, validate=False)
    assert ym.shape == (6, 5)
    own = torch.from_numpy(plan.lam).float()
    torch.testing.assert_close(ym.sum(1)[5], 1 - own[5])  # the unknown id's share is dropped
    with pytest.raises(ValueError, match="same batch size"):  # shapes are still checked
        apply_plan(plan, x, ids[:5], num_classes=5, validate=False)


# --------------------------------------------------------------------------- dtypes and devices


def test_numpy_bool_images_are_refused_like_torch_bool_images() -> None:
    plan = _plan()
    with pytest.raises(TypeError, match="x must be a floating-point or integer array, got dtype bool"):
        apply_plan(plan, np.ones((6, 2, 2), dtype=bool))
    with pytest.raises(TypeError, match="x must be a floating-point or uint8 tensor, got dtype torch.bool"):
        apply_plan(plan, torch.ones(6, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="complex"):
        apply_plan(plan, np.ones((6, 2), dtype=np.complex64))


@pytest.mark.parametrize(
    ("config", "dtype"),
    [
        (MixConfig(alpha=1.0), torch.float32),
        (MixConfig("cutmix"), torch.bfloat16),
        (MixConfig("kway", k=3, pairing="permute"), torch.float32),
        (MixConfig("switch"), torch.uint8),
    ],
)
def test_meta_tensors_infer_shapes(config: MixConfig, dtype: torch.dtype) -> None:
    plan = sample_plan(config, 8, seed=0, image_size=(10, 12))
    x = torch.empty(8, 3, 10, 12, dtype=dtype, device="meta")
    for y, expected in (
        (torch.empty(8, dtype=torch.long, device="meta"), (8, 5)),
        (torch.empty(8, 5, device="meta"), (8, 5)),
    ):
        xm, ym = apply_plan(plan, x, y, num_classes=5, check_finite=True)
        assert xm.device.type == "meta" and xm.shape == x.shape and xm.dtype == dtype
        assert ym.device.type == "meta" and tuple(ym.shape) == expected and ym.dtype == torch.float32
    xm, _ = apply_plan(plan, x, out=torch.empty_like(x))
    assert xm.device.type == "meta"
