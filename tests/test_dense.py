"""Dense targets (vicinal.dense.mix_dense) tested against the mixed images themselves.

The test batches render filled boxes into a class-id mask and into the images (channel
0: the sample's row index, channel 1: the class-id rendering), so the mixed image says,
pixel for pixel, which sample each pixel came from and which class it shows; the mixed
masks and boxes must agree with it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vicinal import MixConfig, sample_plan
from vicinal.dense import collate_dense, mix_dense
from vicinal.mixing import MixedTargets, apply_plan, place_boxes
from vicinal.transforms import CutMix, SaliencyMix

H = W = 24
C = 5  # background 0 and one class per grid cell (1..4)
IGNORE = 255


def _batch(b: int, seed: int, *, h: int = H, w: int = W, ignore: bool = False) -> dict[str, object]:
    """Non-overlapping integer boxes, one per chosen cell of a 2×2 grid (class = cell + 1),
    rendered into the mask and into image channel 1; channel 0 holds the row index."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((b, h, w), np.int64)
    boxes, labels = [], []
    for i in range(b):
        cells = np.flatnonzero(rng.random(4) < 0.7)
        if i == 1:
            cells = cells[:0]  # an image without boxes
        rows = []
        for cell in cells.tolist():
            cy, cx = (cell // 2) * (h // 2), (cell % 2) * (w // 2)
            y1, x1 = cy + rng.integers(0, h // 4), cx + rng.integers(0, w // 4)
            y2, x2 = y1 + rng.integers(2, h // 4 + 1), x1 + rng.integers(2, w // 4 + 1)
            masks[i, y1:y2, x1:x2] = cell + 1
            rows.append([x1, y1, x2, y2])
        boxes.append(np.array(rows, np.float64).reshape(-1, 4))
        labels.append(cells + 1)
    if ignore:
        masks[rng.random((b, h, w)) < 0.2] = IGNORE
    image = np.stack([np.broadcast_to(np.arange(b)[:, None, None], (b, h, w)), masks, rng.random((b, h, w))], 1)
    return {
        "image": image.astype(np.float32),
        "mask": masks,
        "boxes": boxes,
        "box_labels": labels,
        "labels": np.eye(3, dtype=np.float32)[np.arange(b) % 3],  # soft image-level labels
        "meta": ["untouched"] * b,
    }


def _partner_weight(plan, h: int = H, w: int = W) -> np.ndarray:  # type: ignore[no-untyped-def]
    """float64 (B, H, W): the plan's rendered paste weight m (independent of vicinal.dense)."""
    m = np.zeros((plan.batch_size, h, w))
    if plan.boxes is not None:
        for i, (t, left, bottom, r) in enumerate(plan.boxes.tolist()):
            m[i, t:bottom, left:r] = 1.0
    if plan.masks is not None:
        m = np.maximum(m, plan.masks.astype(np.float64))
    return m


def _pix(box: np.ndarray) -> tuple[slice, slice]:
    x1, y1, x2, y2 = (int(v) for v in box)
    return slice(y1, y2), slice(x1, x2)


def _check_binary_paste(plan, batch, out, *, tau: float = 0.0) -> int:  # type: ignore[no-untyped-def]
    """The properties of a binary paste (box or mask): returns the number of rows checked."""
    src = out["image"][:, 0]
    mixed_render = out["image"][:, 1]
    np.testing.assert_array_equal(out["mask"], mixed_render.astype(np.int64))  # pixel for pixel
    checked = 0
    for i in range(plan.batch_size):
        p = int(plan.partners[i, 0])
        own, own_labels = batch["boxes"][i], batch["box_labels"][i]
        partner, partner_labels = batch["boxes"][p], batch["box_labels"][p]
        boxes, weights, sources, labels = (out[k][i] for k in ("boxes", "box_weights", "box_sources", "box_labels"))
        if not plan.cut[i] or p == i:
            continue
        checked += 1
        from_partner = src[i] == p  # the pixels the partner contributes
        # Own boxes: the visible fraction of the box's pixels, dropped exactly when < tau (or 0).
        visible = np.array([1.0 - from_partner[_pix(b)].mean() for b in own])
        keep = (visible > 0) & (visible >= tau)
        np.testing.assert_array_equal(boxes[sources == 0], own[keep])
        np.testing.assert_allclose(weights[sources == 0], visible[keep], rtol=1e-6)
        np.testing.assert_array_equal(labels[sources == 0], own_labels[keep])
        # Partner boxes: inside the pixels the partner contributes, showing their class.
        for box, label in zip(boxes[sources == 1], labels[sources == 1]):
            region = _pix(box)
            assert from_partner[region].all(), (i, box)
            if plan.source_rows is None:  # (ResizeMix's pixels are tested on their own)
                assert (out["mask"][i][region] == label).all(), (i, box, label)
        if plan.source_rows is None:  # CutMix, SaliencyMix: kept fraction = clipped area / area
            shown = np.array([from_partner[_pix(b)].mean() for b in partner])
            keep_p = (shown > 0) & (shown >= tau)
            assert (labels[sources == 1] == partner_labels[keep_p]).all()
            areas = (partner[:, 2] - partner[:, 0]) * (partner[:, 3] - partner[:, 1])
            kept_areas = (boxes[sources == 1, 2] - boxes[sources == 1, 0]) * (
                boxes[sources == 1, 3] - boxes[sources == 1, 1]
            )
            np.testing.assert_allclose(weights[sources == 1], kept_areas / areas[keep_p], rtol=1e-6)
            np.testing.assert_allclose(weights[sources == 1], shown[keep_p], rtol=1e-6)
    return checked


# --------------------------------------------------------------------------- box pastes


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_cutmix_masks_and_boxes_agree_with_the_mixed_image(tau: float) -> None:
    batch = _batch(12, seed=1)
    plan = sample_plan(MixConfig("cutmix", pairing="permute"), 12, seed=3, image_size=(H, W))
    out = mix_dense(plan, batch, num_classes=C, segmentation="hard", min_visibility=tau)
    assert _check_binary_paste(plan, batch, out, tau=tau) >= 8
    img, lab = apply_plan(plan, batch["image"], batch["labels"])
    np.testing.assert_array_equal(out["image"], img)  # the image is apply_plan's
    np.testing.assert_array_equal(out["labels"], lab)
    assert out["meta"] is batch["meta"]  # unknown keys pass through


def test_own_boxes_are_dropped_exactly_when_fully_covered() -> None:
    """A box entirely under the pasted rectangle is dropped even at min_visibility=0; one
    pixel outside it keeps the box with that visible fraction."""
    plan = sample_plan(MixConfig("cutmix"), 2, seed=0, image_size=(H, W))
    top, left, bottom, right = (int(v) for v in plan.boxes[0])
    assert bottom - top >= 3 and right - left >= 3
    inside = [left, top, right, bottom]
    one_out = [left, top, right, bottom + 1] if bottom < H else [left, top - 1, right, bottom]
    batch = {
        "image": np.zeros((2, 1, H, W), np.float32),
        "boxes": [np.array([inside, one_out], np.float64), np.zeros((0, 4))],
    }
    out = mix_dense(plan, batch)
    assert out["boxes"][0][out["box_sources"][0] == 0].tolist() == [one_out]
    area = (right - left) * (bottom - top + 1)
    np.testing.assert_allclose(out["box_weights"][0], [(right - left) / area], rtol=1e-6)


def test_resizemix_boxes_are_scaled_into_the_pasted_box() -> None:
    batch = _batch(12, seed=2)
    plan = sample_plan(MixConfig("resizemix", pairing="permute"), 12, seed=5, image_size=(H, W))
    out = mix_dense(plan, batch, num_classes=C, segmentation="hard")
    assert _check_binary_paste(plan, batch, out) >= 8
    for i in range(12):
        p = int(plan.partners[i, 0])
        if p == i:
            continue
        top, left, bottom, right = plan.boxes[i].tolist()
        sel = out["box_sources"][i] == 1
        scaled = batch["boxes"][p] * ([(right - left) / W, (bottom - top) / H] * 2) + [left, top, left, top]
        kept = out["boxes"][i][sel]
        assert ((kept[:, :2] >= [left, top]) & (kept[:, 2:] <= [right, bottom])).all()  # inside R
        # Exactly the pixels whose top-left corner lies in the scaled box show the box's
        # class (nearest-neighbour resampling), and a box is kept iff it shows.
        inside_r = np.zeros((H, W), bool)
        inside_r[top:bottom, left:right] = True
        for box, label in zip(scaled, batch["box_labels"][p]):
            ys, xs = np.arange(H), np.arange(W)
            corner = ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]
            showing = inside_r & (out["mask"][i] == label)
            np.testing.assert_array_equal(showing, corner & inside_r)
            was_kept = any(np.allclose(box, k) for k in kept)
            assert was_kept == bool(showing.any())
        np.testing.assert_allclose(out["box_weights"][i][sel], 1.0)


def test_saliencymix_is_placed_from_the_images_first() -> None:
    batch = _batch(10, seed=3)
    mixer = SaliencyMix(seed=4, num_classes=C)
    plan = mixer.plan(batch["image"], step=0)
    assert plan.is_placed
    out = mix_dense(plan, batch, num_classes=C, segmentation="hard")
    assert _check_binary_paste(plan, batch, out) >= 6
    raw = sample_plan(mixer.config, 10, seed=4, image_size=(H, W))
    assert not raw.is_placed  # an unplaced plan is placed from batch["image"]
    again = mix_dense(raw, batch, num_classes=C, segmentation="hard")
    placed = place_boxes(raw, batch["image"])
    np.testing.assert_array_equal(again["mask"], mix_dense(placed, batch, num_classes=C, segmentation="hard")["mask"])


# --------------------------------------------------------------------------- mask pastes


@pytest.mark.parametrize("method", ["gridmix", "fmix"])
@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_mask_pastes_weigh_boxes_by_the_mask_over_them(method: str, tau: float) -> None:
    batch = _batch(12, seed=4)
    plan = sample_plan(MixConfig(method, pairing="permute"), 12, seed=6, image_size=(H, W))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_weighted"):
        mix_dense(plan, batch, num_classes=C)
    out = mix_dense(plan, batch, num_classes=C, segmentation="hard", mask_boxes="mask_weighted", min_visibility=tau)
    src = out["image"][:, 0]
    np.testing.assert_array_equal(out["mask"], out["image"][:, 1].astype(np.int64))
    checked = 0
    for i in range(12):
        p = int(plan.partners[i, 0])
        if p == i:
            continue
        checked += 1
        from_partner = src[i] == p
        for source, row in ((0, i), (1, p)):
            shares = np.array(
                [(from_partner if source else ~from_partner)[_pix(b)].mean() for b in batch["boxes"][row]]
            )
            keep = (shares > 0) & (shares >= tau)
            sel = out["box_sources"][i] == source
            np.testing.assert_array_equal(out["boxes"][i][sel], batch["boxes"][row][keep])  # geometry kept
            np.testing.assert_allclose(out["box_weights"][i][sel], shares[keep], rtol=1e-6)
            np.testing.assert_array_equal(out["box_labels"][i][sel], batch["box_labels"][row][keep])
    assert checked >= 8


def test_smoothmix_gives_soft_targets_from_class_ids_or_soft_masks() -> None:
    batch = _batch(8, seed=5)
    plan = sample_plan(MixConfig("smoothmix"), 8, seed=7, image_size=(H, W))
    m = _partner_weight(plan)[:, None].astype(np.float32)
    onehot = (batch["mask"][:, None] == np.arange(C)[None, :, None, None]).astype(np.float32)
    expected = onehot * (1 - m) + onehot[plan.partners[:, 0]] * m
    out = mix_dense(plan, batch, num_classes=C, mask_boxes="mask_weighted")
    np.testing.assert_allclose(out["mask"], expected, atol=1e-6)
    np.testing.assert_allclose(out["mask"].sum(axis=1), 1.0, atol=1e-6)
    soft = mix_dense(plan, {**batch, "mask": onehot}, mask_boxes="mask_weighted")
    np.testing.assert_allclose(soft["mask"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="rows .* soft mask"):
        mix_dense(plan, batch, segmentation="hard", mask_boxes="mask_weighted")
    # The boxes' weights are the soft mask's mean over them.
    for i in range(8):
        p = int(plan.partners[i, 0])
        if p == i:
            continue
        mi = m[i, 0]
        own = np.array([1 - mi[_pix(b)].mean() for b in batch["boxes"][i]])
        np.testing.assert_allclose(out["box_weights"][i][out["box_sources"][i] == 0], own[own > 0], rtol=1e-5)
    with pytest.raises(ValueError, match="mask_weighted"):
        mix_dense(plan, batch, num_classes=C)


def test_pair_targets_weigh_the_two_masks_per_pixel() -> None:
    batch = _batch(8, seed=6)
    for config in (MixConfig("mixup", alpha=1.0), MixConfig("resizemix"), MixConfig("smoothmix")):
        plan = sample_plan(config, 8, seed=8, image_size=(H, W))
        soft = mix_dense(plan, batch, num_classes=C, mask_boxes="mask_weighted")["mask"]
        pair = mix_dense(plan, batch, segmentation="pair", mask_boxes="mask_weighted")["mask"]
        assert isinstance(pair, MixedTargets) and pair.lam.shape == (8, H, W) and pair.lam.dtype == np.float32
        assert pair.y_a is batch["mask"]

        def hot(a: np.ndarray) -> np.ndarray:
            return (a[:, None] == np.arange(C)[None, :, None, None]).astype(np.float32)

        lam = pair.lam[:, None]
        np.testing.assert_allclose(hot(pair.y_a) * lam + hot(pair.y_b) * (1 - lam), soft, atol=1e-6)


@pytest.mark.parametrize("method", ["cutmix", "resizemix", "gridmix"])
@pytest.mark.parametrize("ignore", [IGNORE, 0])
def test_soft_targets_of_binary_pastes_are_the_mixed_one_hot_masks(method: str, ignore: int) -> None:
    """Binary pastes one-hot the mixed ids (one paste instead of C): the same values as
    apply_plan on the one-hot masks, renormalised over the valid sources (ignore_index
    outside the classes, or a class: 0, the background)."""
    batch = _batch(8, seed=15, ignore=True)
    if ignore == 0:
        batch["mask"] = np.where(batch["mask"] == IGNORE, 1, batch["mask"])
    plan = sample_plan(MixConfig(method), 8, seed=2, image_size=(H, W))  # type: ignore[arg-type]
    valid = batch["mask"] != ignore
    hot = ((batch["mask"][:, None] == np.arange(C)[None, :, None, None]) & valid[:, None]).astype(np.float32)
    mixed = apply_plan(plan, hot)[0]
    expected = mixed / np.where(mixed.sum(axis=1, keepdims=True) > 0, mixed.sum(axis=1, keepdims=True), 1)
    for mask in (batch["mask"], torch.from_numpy(batch["mask"])):
        got = mix_dense(plan, {**batch, "mask": mask}, num_classes=C, ignore_index=ignore, mask_boxes="mask_weighted")
        got = got["mask"]
        np.testing.assert_array_equal(np.asarray(got), expected)
    assert (expected.sum(axis=1) == 0).any()


def test_mask_weighted_shares_of_fractional_boxes() -> None:
    """Boxes with fractional corners: the share is the area-weighted mean of m over the
    box, each pixel weighted by the area of the box it covers."""
    rng = np.random.default_rng(16)
    b = 6
    corners = rng.uniform(0, W - 6, (b, 5, 2))
    boxes = [np.concatenate([c, c + rng.uniform(0.3, 6, (5, 2))], axis=1) for c in corners]
    batch = {"image": np.zeros((b, 1, H, W), np.float32), "boxes": boxes}
    for config in (MixConfig("smoothmix"), MixConfig("fmix", fmix_max_soft=0.2)):
        plan = sample_plan(config, b, seed=3, image_size=(H, W))
        out = mix_dense(plan, batch, mask_boxes="mask_weighted")
        for i in range(b):
            m = plan.masks[i].astype(np.float64)
            p = int(plan.partners[i, 0])
            for source, row, weight in ((0, i, 1 - m), (1, p, m)):
                bx = boxes[row]
                oy = np.clip(np.minimum(bx[:, 3:], np.arange(H) + 1) - np.maximum(bx[:, 1:2], np.arange(H)), 0, None)
                ox = np.clip(np.minimum(bx[:, 2:3], np.arange(W) + 1) - np.maximum(bx[:, :1], np.arange(W)), 0, None)
                share = np.einsum("nh,hw,nw->n", oy, weight, ox) / (oy.sum(1) * ox.sum(1))
                sel = out["box_sources"][i] == source
                np.testing.assert_allclose(out["box_weights"][i][sel], share[share > 0], rtol=1e-5)
                np.testing.assert_array_equal(out["boxes"][i][sel], bx[share > 0])


# --------------------------------------------------------------------------- every method

EVERY_METHOD = {
    "mixup": MixConfig("mixup", alpha=1.0, pairing="permute"),
    "cutmix": MixConfig("cutmix", pairing="permute"),
    "switch": MixConfig("switch", alpha=1.0, pairing="permute"),
    "kway": MixConfig("kway", k=3, alpha=1.0, pairing="permute"),
    "fmix": MixConfig("fmix", pairing="permute"),
    "resizemix": MixConfig("resizemix", pairing="permute"),
    "gridmix": MixConfig("gridmix", pairing="permute"),
    "smoothmix": MixConfig("smoothmix", pairing="permute"),
    "saliencymix": MixConfig("saliencymix", pairing="permute"),
    "choice": MixConfig("choice", choices={"mixup": 0.3, "cutmix": 0.3, "fmix": 0.4}, pairing="permute"),
}


def test_every_method_is_tested_here() -> None:
    from vicinal.sampling import METHODS

    assert set(EVERY_METHOD) == set(METHODS)


@pytest.mark.parametrize("name", sorted(EVERY_METHOD))
def test_every_method_agrees_with_its_rendering(name: str) -> None:
    """For every method, with one plan: the soft mask's expected class is the mixed
    rendering of the class ids (image channel 1) pixel for pixel, and each source's boxes
    are kept exactly when that source shows in them, with a weight equal to the mean over
    the (original) box of the source's pixel weight in the row, rendered here from the
    plan; ResizeMix's scaled partner boxes are tested on their own above."""
    batch = _batch(12, seed=19)
    plan = place_boxes(sample_plan(EVERY_METHOD[name], 12, seed=8, image_size=(H, W)), batch["image"])
    out = mix_dense(plan, batch, num_classes=C, mask_boxes="mask_weighted")
    expected_class = (out["mask"] * np.arange(C)[None, :, None, None]).sum(axis=1)
    np.testing.assert_allclose(expected_class, out["image"][:, 1], atol=1e-4)
    m = _partner_weight(plan)
    iw = plan.input_weights
    for i in range(12):
        rows = [i, *plan.partners[i].tolist()]
        share: dict[int, np.ndarray] = {}  # source row -> its weight per pixel in row i
        for j, r in enumerate(rows):
            share[r] = share.get(r, 0.0) + iw[i, j] * (1 - m[i]) + (m[i] if j == 1 else 0.0)
        resized = plan.source_rows is not None and bool((plan.source_rows[i] != np.arange(H)).any())
        for r, weight_map in share.items():
            if resized and r != i:
                continue
            j = rows.index(r)  # (a repeated source is reported under its first column)
            sel = out["box_sources"][i] == j
            kept, weights, labels = out["boxes"][i][sel], out["box_weights"][i][sel], out["box_labels"][i][sel]
            means = np.array([weight_map[_pix(b)].mean() for b in batch["boxes"][r]])
            shown = means > 1e-9
            assert len(kept) == shown.sum(), (name, i, r)
            np.testing.assert_allclose(weights, means[shown], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(labels, batch["box_labels"][r][shown])
            for box, original in zip(kept, batch["boxes"][r][shown]):  # clipped boxes lie inside their original
                assert (box[:2] >= original[:2]).all() and (box[2:] <= original[2:]).all()


# --------------------------------------------------------------------------- blends


def test_mixup_masks_are_soft_and_boxes_are_the_union_with_the_weights() -> None:
    batch = _batch(10, seed=7)
    plan = sample_plan(MixConfig("mixup", alpha=1.0), 10, seed=9)
    out = mix_dense(plan, batch, num_classes=C)
    soft = out["mask"]
    assert soft.shape == (10, C, H, W) and soft.dtype == np.float32
    # Never blended as numbers: the expected class equals the mixed rendering.
    np.testing.assert_allclose((soft * np.arange(C)[None, :, None, None]).sum(axis=1), out["image"][:, 1], atol=1e-5)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="rows .* blend"):
        mix_dense(plan, batch, segmentation="hard")
    for i in range(10):
        p, lam = int(plan.partners[i, 0]), plan.weights[i, 0]
        own, partner = batch["boxes"][i], batch["boxes"][p]
        sources, weights = out["box_sources"][i], out["box_weights"][i]
        np.testing.assert_array_equal(out["boxes"][i], np.concatenate([own, partner]))
        np.testing.assert_array_equal(sources, [0] * len(own) + [1] * len(partner))
        np.testing.assert_allclose(weights[sources == 0], lam, rtol=1e-6)
        np.testing.assert_allclose(weights[sources == 1], 1 - lam, rtol=1e-6)
        # Per source, the weights are λ and 1 - λ: together the row's boxes carry weight 1 per source image.
        per_source = [weights[sources == s][:1].sum() for s in (0, 1)]
        assert abs(sum(per_source) - 1.0) < 1e-6 or not (len(own) and len(partner))


def test_kway_and_self_pairs() -> None:
    batch = _batch(6, seed=8)
    plan = sample_plan(MixConfig("kway", k=3, alpha=1.0, pairing="permute"), 6, seed=1)
    out = mix_dense(plan, batch, num_classes=C)
    for i in range(6):
        rows = [i, *plan.partners[i].tolist()]
        expected = {}
        for j, r in enumerate(rows):
            expected[r] = expected.get(r, 0.0) + plan.weights[i, j]
        got: dict[int, float] = {}
        for j, r in enumerate(rows):
            if r in rows[:j]:
                continue  # a source that is the same sample is merged into its first column
            sel = out["box_sources"][i] == j
            assert sel.sum() == len(batch["boxes"][r])
            if sel.any():
                got[r] = float(out["box_weights"][i][sel][0])
        for r, wr in got.items():
            assert abs(wr - expected[r]) < 1e-6
    # A sample paired with itself (B = 1): the image is unchanged, so are its boxes.
    one = {k: v[:1] for k, v in _batch(1, seed=2).items()}
    for config in (MixConfig("cutmix"), MixConfig("mixup")):
        single = mix_dense(sample_plan(config, 1, seed=0, image_size=(H, W)), one, num_classes=C)
        np.testing.assert_array_equal(single["boxes"][0], one["boxes"][0])
        np.testing.assert_allclose(single["box_weights"][0], 1.0)


# --------------------------------------------------------------------------- ignore_index


def test_ignore_index_is_ignored_only_where_every_source_ignores_it() -> None:
    batch = _batch(10, seed=9, ignore=True)
    mask = batch["mask"]
    plan = sample_plan(MixConfig("mixup", alpha=1.0), 10, seed=2)
    soft = mix_dense(plan, batch, num_classes=C, ignore_index=IGNORE)["mask"]
    partner = mask[plan.partners[:, 0]]
    own_ok, partner_ok = mask != IGNORE, partner != IGNORE
    np.testing.assert_array_equal(soft.sum(axis=1) == 0, ~own_ok & ~partner_ok)
    np.testing.assert_allclose(soft.sum(axis=1)[own_ok | partner_ok], 1.0, atol=1e-6)
    i, y, x = np.argwhere(own_ok & ~partner_ok)[0]
    assert soft[i, mask[i, y, x], y, x] == 1.0  # renormalised onto the valid source
    i, y, x = np.argwhere(~own_ok & partner_ok)[0]
    assert soft[i, partner[i, y, x], y, x] == 1.0
    with pytest.raises(ValueError, match="class ids in"):
        mix_dense(plan, batch, num_classes=C)  # 255 without ignore_index
    # A pasted pixel the partner ignores is ignored; the pair form says the same.
    plan = sample_plan(MixConfig("cutmix"), 10, seed=3, image_size=(H, W))
    soft = mix_dense(plan, batch, num_classes=C, ignore_index=IGNORE)["mask"]
    hard = mix_dense(plan, batch, ignore_index=IGNORE, segmentation="hard")["mask"]
    np.testing.assert_array_equal(soft.sum(axis=1) == 0, hard == IGNORE)
    pair = mix_dense(plan, batch, ignore_index=IGNORE, segmentation="pair")["mask"]
    one_valid = (pair.y_a != IGNORE) ^ (pair.y_b != IGNORE)
    np.testing.assert_array_equal(pair.lam[one_valid], (pair.y_a != IGNORE)[one_valid].astype(np.float32))


# --------------------------------------------------------------------------- formats and inputs


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_box_formats_round_trip(fmt: str) -> None:
    batch = _batch(8, seed=10)
    plan = sample_plan(MixConfig("cutmix"), 8, seed=4, image_size=(H, W))
    ref = mix_dense(plan, batch, num_classes=C)

    def convert(b: np.ndarray) -> np.ndarray:
        wh = b[:, 2:] - b[:, :2]
        return np.concatenate([b[:, :2] if fmt == "xywh" else b[:, :2] + wh / 2, wh], axis=1)

    out = mix_dense(plan, {**batch, "boxes": [convert(b) for b in batch["boxes"]]}, num_classes=C, box_format=fmt)
    for a, b in zip(out["boxes"], ref["boxes"]):
        np.testing.assert_allclose(a, convert(b), atol=1e-9)


def test_tuple_batches_and_channels_last() -> None:
    batch = _batch(6, seed=11)
    plan = sample_plan(MixConfig("cutmix"), 6, seed=5, image_size=(H, W))
    out = mix_dense(plan, (batch["image"], batch["mask"]), num_classes=C)
    assert set(out) == {"image", "mask"}
    ref = mix_dense(plan, {"image": batch["image"], "mask": batch["mask"]}, num_classes=C)
    np.testing.assert_array_equal(out["mask"], ref["mask"])
    nhwc = np.moveaxis(batch["image"], 1, -1)
    out = mix_dense(plan, (nhwc, batch["mask"], batch["boxes"]), data_format="channels_last", num_classes=C)
    np.testing.assert_array_equal(out["mask"], ref["mask"])
    np.testing.assert_array_equal(np.moveaxis(out["image"], -1, 1), ref["image"])


def test_bad_inputs_are_refused_naming_the_key() -> None:
    batch = _batch(4, seed=12)
    plan = sample_plan(MixConfig("cutmix"), 4, seed=0, image_size=(H, W))
    bad = {
        "image'] is required": {k: v for k, v in batch.items() if k != "image"},
        r"image'\]: x has spatial size": {**batch, "image": np.zeros((4, 3, 8, 8), np.float32)},
        r"mask'\] must be class ids \(B, H, W\) = \(4, 24, 24\)": {**batch, "mask": batch["mask"][:, :8]},
        r"mask'\] must be class ids .* got shape \(4, 24, 24\) of dtype float": {**batch, "mask": batch["mask"] * 1.0},
        r"mask'\] must be class ids .* dtype bool": {**batch, "mask": batch["mask"] > 0},
        r"boxes'\] must be a list of B=4": {**batch, "boxes": batch["boxes"][:3]},
        r"boxes'\] must be a list of B=4 .* got a ndarray": {**batch, "boxes": np.zeros((4, 2, 4))},
        r"boxes'\]\[0\] must be a real array \(Ni, 4\)": {**batch, "boxes": [np.zeros((1, 3))] + batch["boxes"][1:]},
        r"boxes'\]\[0\]\[0\] = \[5.0, 5.0, 2.0, 9.0\]": {
            **batch,
            "boxes": [np.array([[5.0, 5, 2, 9]])] + batch["boxes"][1:],
        },
        r"boxes'\]\[0\]\[0\] .* inside the image": {
            **batch,
            "boxes": [np.array([[0, 0, 30.0, 4]])] + batch["boxes"][1:],
        },
        r"box_labels'\]\[2\] must have shape \(Ni,\)": {
            **batch,
            "box_labels": batch["box_labels"][:2] + [np.zeros(9, int)] + batch["box_labels"][3:],
        },
        r"box_labels'\] needs batch\['boxes'\]": {k: v for k, v in batch.items() if k != "boxes"},
        r"labels'\]: .*num_classes": {**batch, "labels": np.arange(4)},  # class ids need label_classes
        r"box_weights'\] is an output": {**batch, "box_weights": []},
        "soft targets: pass num_classes": batch,
    }
    for message, entry in bad.items():
        classes = None if "soft targets" in message else C
        with pytest.raises(ValueError, match=message):
            mix_dense(plan, entry, num_classes=classes)
    with pytest.raises(ValueError, match="ignore_index applies to class-id masks"):
        mix_dense(plan, {"image": batch["image"], "mask": np.zeros((4, 2, H, W), np.float32)}, ignore_index=0)
    with pytest.raises(ValueError, match="tuple batch"):
        mix_dense(plan, (batch["image"],) * 6)
    with pytest.raises(ValueError, match="pairing='stream'"):
        mix_dense(sample_plan(MixConfig(pairing="stream"), 4, seed=0), batch)
    with pytest.raises(ValueError, match="two-source"):
        mix_dense(sample_plan(MixConfig("kway", k=3), 4, seed=0), batch, segmentation="pair")
    with pytest.raises(ValueError, match="min_visibility"):
        mix_dense(plan, batch, num_classes=C, min_visibility=1.5)
    with pytest.raises(ValueError, match="box_format"):
        mix_dense(plan, batch, num_classes=C, box_format="yxyx")  # type: ignore[arg-type]


def test_nested_lists_and_unvalidated_ids() -> None:
    batch = _batch(4, seed=17)
    plan = sample_plan(MixConfig("cutmix"), 4, seed=1, image_size=(H, W))
    ref = mix_dense(plan, batch, num_classes=C)
    listed = {
        **batch,
        "boxes": [b.tolist() for b in batch["boxes"]],
        "box_labels": [b.tolist() for b in batch["box_labels"]],
    }
    out = mix_dense(plan, listed, num_classes=C)
    for key in ("boxes", "box_weights", "box_labels"):
        for a, b in zip(out[key], ref[key]):
            np.testing.assert_array_equal(a, b)
    # With validate=False ids outside [0, num_classes) give all-zero targets (NumPy and torch alike).
    wild = {"image": batch["image"], "mask": batch["mask"].copy()}
    wild["mask"][:, :3, :3] = 7
    with pytest.raises(ValueError, match=r"class ids in \[7, 7\]"):
        mix_dense(plan, wild, num_classes=C)
    got = mix_dense(plan, wild, num_classes=C, validate=False)["mask"]
    got_t = mix_dense(plan, {k: torch.from_numpy(v) for k, v in wild.items()}, num_classes=C, validate=False)["mask"]
    np.testing.assert_array_equal(got_t.numpy(), got)
    hard = mix_dense(plan, wild, segmentation="hard", validate=False)["mask"]
    np.testing.assert_array_equal(got.sum(axis=1) == 0, hard == 7)


# --------------------------------------------------------------------------- torch


METHODS = {
    "mixup": MixConfig("mixup", alpha=1.0),
    "cutmix": MixConfig("cutmix"),
    "resizemix": MixConfig("resizemix"),
    "fmix": MixConfig("fmix"),
    "smoothmix": MixConfig("smoothmix"),
    "choice": MixConfig("choice", choices={"cutmix": 0.3, "resizemix": 0.3, "gridmix": 0.4}),
}


def _torch_batch(batch: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {"image": torch.from_numpy(batch["image"]), "mask": torch.from_numpy(batch["mask"])}
    out["boxes"] = [torch.from_numpy(b).float() for b in batch["boxes"]]
    out["box_labels"] = [torch.from_numpy(b) for b in batch["box_labels"]]
    out["labels"] = torch.from_numpy(batch["labels"])
    return out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_torch_equals_numpy(name: str) -> None:
    batch = _batch(8, seed=13, ignore=True)
    tb = _torch_batch(batch)
    plan = sample_plan(METHODS[name], 8, seed=6, image_size=(H, W))
    kw = {"num_classes": C, "ignore_index": IGNORE, "mask_boxes": "mask_weighted", "min_visibility": 0.2}
    modes = ["soft", "pair"] + ([] if name in ("mixup", "smoothmix") else ["hard"])
    for mode in modes:
        ref = mix_dense(plan, batch, segmentation=mode, **kw)
        got = mix_dense(plan, tb, segmentation=mode, **kw)
        # (lerp rounds relative to |b - a|: channel 1 holds ids up to 255)
        np.testing.assert_allclose(got["image"].numpy(), ref["image"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["labels"].numpy(), ref["labels"], atol=1e-6)
        if mode == "pair":
            for field in ("y_a", "y_b", "lam"):
                np.testing.assert_allclose(getattr(got["mask"], field).numpy(), getattr(ref["mask"], field), atol=1e-6)
        else:
            assert got["mask"].dtype == (torch.float32 if mode == "soft" else torch.int64)
            np.testing.assert_allclose(got["mask"].numpy(), ref["mask"], atol=1e-6)
        for key in ("boxes", "box_weights", "box_sources", "box_labels"):
            for a, b in zip(got[key], ref[key]):
                assert isinstance(a, torch.Tensor)
                np.testing.assert_allclose(a.numpy(), b, atol=1e-5)
        assert got["boxes"][0].dtype == torch.float32 and got["box_labels"][0].dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mixup", "resizemix", "choice"])
def test_cuda_stays_on_the_device_and_equals_the_cpu(name: str) -> None:
    batch = _torch_batch(_batch(8, seed=18, ignore=True))
    on_gpu = {k: [t.cuda() for t in v] if isinstance(v, list) else v.cuda() for k, v in batch.items()}
    plan = sample_plan(METHODS[name], 8, seed=7, image_size=(H, W))
    kw = {"num_classes": C, "ignore_index": IGNORE, "mask_boxes": "mask_weighted"}
    for mode in ("soft", "pair"):
        ref = mix_dense(plan, batch, segmentation=mode, **kw)
        got = mix_dense(plan, on_gpu, segmentation=mode, **kw)
        mask, ref_mask = (got["mask"].lam, ref["mask"].lam) if mode == "pair" else (got["mask"], ref["mask"])
        assert mask.device.type == "cuda" and got["boxes"][0].device.type == "cuda"
        np.testing.assert_allclose(mask.cpu().numpy(), ref_mask.numpy(), atol=1e-6)
        for key in ("boxes", "box_weights", "box_labels"):
            for a, b in zip(got[key], ref[key]):
                np.testing.assert_allclose(a.cpu().numpy(), b.numpy(), atol=1e-5)


def test_uint8_masks_and_a_dataloader_with_ragged_boxes() -> None:
    """A DataLoader batch (images and masks stacked, boxes kept as lists) goes through."""
    data = _batch(10, seed=14)

    class Dense(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> dict[str, object]:
            return {
                "image": torch.from_numpy(data["image"][i]),
                "mask": torch.from_numpy(data["mask"][i]).to(torch.uint8),
                "boxes": torch.from_numpy(data["boxes"][i]).float(),
                "box_labels": torch.from_numpy(data["box_labels"][i]),
                "id": i,
            }

    loader = torch.utils.data.DataLoader(Dense(), batch_size=5, shuffle=False, collate_fn=collate_dense)
    mixer = CutMix(seed=0)
    for step, batch in enumerate(loader):
        plan = mixer.plan(batch["image"], step=step)
        out = mix_dense(plan, batch, segmentation="hard")
        assert out["mask"].dtype == torch.uint8 and out["id"] == batch["id"]
        np.testing.assert_array_equal(out["mask"].numpy(), out["image"][:, 1].numpy())
        assert [len(b) for b in out["boxes"]] == [len(w) for w in out["box_weights"]]
        soft = mix_dense(plan, batch, num_classes=C)["mask"]
        np.testing.assert_array_equal(soft.argmax(dim=1).numpy(), out["mask"].numpy())


def test_collate_dense_stacks_what_has_one_shape_and_lists_the_rest() -> None:
    data = _batch(4, seed=20)
    samples = [
        {"image": data["image"][i], "mask": data["mask"][i], "boxes": data["boxes"][i], "labels": i % 3, "id": f"s{i}"}
        for i in range(4)
    ]
    batch = collate_dense(samples)
    np.testing.assert_array_equal(batch["image"], data["image"])
    np.testing.assert_array_equal(batch["mask"], data["mask"])
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["id"] == ["s0", "s1", "s2", "s3"]
    assert all(a is b for a, b in zip(batch["boxes"], data["boxes"]))  # boxes as they are
    tensors = collate_dense(samples, as_torch=True)
    assert isinstance(tensors["image"], torch.Tensor) and isinstance(tensors["boxes"][1], torch.Tensor)
    np.testing.assert_array_equal(tensors["mask"].numpy(), data["mask"])
    as_tuples = collate_dense([(data["image"][i], data["mask"][i], data["boxes"][i]) for i in range(4)])
    assert set(as_tuples) == {"image", "mask", "boxes"}
    plan = sample_plan(MixConfig("cutmix"), 4, seed=2, image_size=(H, W))
    np.testing.assert_array_equal(
        mix_dense(plan, as_tuples, num_classes=C)["mask"],
        mix_dense(plan, batch, num_classes=C, label_classes=3)["mask"],
    )
    with pytest.raises(ValueError, match=r"samples\[1\] has keys"):
        collate_dense([samples[0], {k: v for k, v in samples[1].items() if k != "id"}])
    with pytest.raises(ValueError, match=r"samples\[\*\]\['mask'\] must have one shape .*'\(8, 24\)'"):
        collate_dense([samples[0], {**samples[1], "mask": data["mask"][1][:8]}])
    with pytest.raises(ValueError, match="'image'\\] is required"):
        collate_dense([{"mask": data["mask"][0]}])
    with pytest.raises(ValueError, match="non-empty list"):
        collate_dense([])


# --------------------------------------------------------------------------- the picture page


def test_dense_example_draws_its_pictures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "examples" / "dense_targets.py"
    spec = importlib.util.spec_from_file_location("example_dense_targets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    written = module.main(["--out", str(tmp_path), "--methods", "cutmix", "--samples", "2"])
    assert [p.name for p in written] == ["cutmix.png"] and written[0].stat().st_size > 1000
