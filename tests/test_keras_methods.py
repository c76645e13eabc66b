"""The mask family through the Keras front end: MixLayer (called as keras.layers.MixUp
is), keras.ops' paste against the core's reference, MixedBatches."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from vicinal import MixConfig, apply_plan, sample_plan  # noqa: E402
from vicinal.keras import MixedBatches, MixLayer  # noqa: E402
from vicinal.keras.ops import mix_with_plan, plan_to_tensors  # noqa: E402
from vicinal.mixing import place_boxes  # noqa: E402

METHODS = ["cutmix", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix"]


def test_mixlayer_takes_the_method_parameters_as_keywords() -> None:
    layer = MixLayer(alpha=0.4, num_classes=10, name="mix")
    assert layer.config == MixConfig(alpha=0.4) and layer.name == "mix"
    assert MixLayer(method="fmix", mask_alpha=2.0, num_classes=3).config.method == "fmix"
    with pytest.raises(ValueError, match="not both"):
        MixLayer(MixConfig(), alpha=0.4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_keras_ops_paste_equals_the_core(method: str, data_format: str) -> None:
    rng = np.random.default_rng(0)
    shape = (5, 9, 7, 3) if data_format == "channels_last" else (5, 3, 9, 7)
    x = rng.random(shape).astype(np.float32)
    y = rng.integers(0, 4, 5)
    layer = MixLayer(method=method, num_classes=4, data_format=data_format, seed=2)
    plan = layer.plan_for(x)
    want_x, want_y = apply_plan(plan, x, y, num_classes=4, data_format=data_format)
    got_x, got_y = mix_with_plan(plan_to_tensors(plan), x, y, num_classes=4, data_format=data_format)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_x), want_x, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got_y), want_y, atol=1e-6)
    out = layer({"images": x, "labels": y})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["images"]), want_x, atol=1e-6)
    assert layer.step == 1


@pytest.mark.parametrize("method", ["fmix", "saliencymix"])
def test_mixed_batches_take_mask_methods(method: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((20, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    data = MixedBatches(x, y, batch_size=8, mix=MixConfig(method), num_classes=3, seed=0)
    xb, yb = data[0]
    assert xb.shape == (8, 8, 8, 1) and yb.shape == (8, 3)
    np.testing.assert_allclose(yb.sum(axis=1), 1.0, atol=1e-6)
    plan = sample_plan(MixConfig(method), 8, seed=0, image_size=(8, 8))
    assert plan.cut is not None and plan.cut.all()


@pytest.mark.parametrize("method", ["mixup", "kway", *METHODS])
def test_keras_ops_uint8_in_uint8_out_like_the_core(method: str) -> None:
    """mix_with_plan rounds integer images back to their dtype, as apply_plan does (it
    used to return them as float: a second, drifted formula)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 10, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 6)
    config = MixConfig(method, alpha=1.0)
    plan = sample_plan(config, 6, seed=4, image_size=(10, 8) if config.needs_image_size else None)
    if plan.unplaced is not None:
        plan = place_boxes(plan, x, data_format="channels_last")
    want, _ = apply_plan(plan, x, y, num_classes=4, data_format="channels_last")
    got, _ = mix_with_plan(plan, x, y, num_classes=4, data_format="channels_last")
    got = keras.ops.convert_to_numpy(got)
    assert got.dtype == np.uint8 and want.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1  # float32 here, float64 in the reference: ties may round apart
    assert (diff > 0).mean() < 0.01
    with pytest.raises(TypeError, match="bool"):
        mix_with_plan(plan, x > 128, y, num_classes=4, data_format="channels_last")


def test_the_tf_namespace_has_every_op_the_shared_mixing_code_uses() -> None:
    tf = pytest.importorskip("tensorflow")
    from vicinal.keras.ops import _OPS_NAMES
    from vicinal.keras.tfdata import _TfOps

    xp = _TfOps(tf)
    assert all(callable(getattr(xp, name)) for name in (*_OPS_NAMES, "dtype_of"))
    assert all(callable(getattr(keras.ops, name)) for name in _OPS_NAMES)


def test_plan_tensors_is_the_deprecated_name_of_plan_to_tensors() -> None:
    from vicinal.keras import plan_tensors, plan_to_tensors

    plan = sample_plan(MixConfig("cutmix"), 4, seed=0, image_size=(6, 6))
    with pytest.warns(DeprecationWarning, match="plan_to_tensors"):
        old = plan_tensors(plan)
    new = plan_to_tensors(plan)
    assert old.keys() == new.keys() and all(np.array_equal(old[k], new[k]) for k in new)


def test_mixlayer_config_is_config_and_mix_config_is_deprecated() -> None:
    layer = MixLayer(alpha=0.4, num_classes=3)
    assert layer.config == MixConfig(alpha=0.4)
    with pytest.warns(DeprecationWarning, match="MixLayer.config"):
        assert layer.mix_config is layer.config
