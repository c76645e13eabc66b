"""The canvas dense dataset (vicinal.experiments.data.canvas): what it draws, that it is
deterministic, and that its cache is verified, never used damaged, and written atomically."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError
from vicinal.experiments.data import canvas as cv
from vicinal.experiments.data.canvas import CanvasConfig, build_canvas, canvas_cache_paths, load_canvas
from vicinal.experiments.data.checksums import digest_file

SMALL = CanvasConfig(n_train=40, n_test=10, side=16, max_items=3, min_size=4, max_size=7, threshold=48, noise=30)


def _items(n: int, seed: int, labels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 1, 7, 6) items: a rectangle of bright pixels on a faint (below threshold) square."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 1, 7, 6), dtype=np.uint8)
    for k in range(n):
        y0, x0 = rng.integers(0, 3, 2)
        x[k, 0, y0 : y0 + 4, x0 : x0 + 3] = rng.integers(60, 256, (4, 3))
    return x, np.asarray(labels, np.int64)[np.arange(n) % len(labels)]


def _small(config: CanvasConfig = SMALL) -> cv.CanvasData:
    x_train, y_train = _items(12, 0, (0, 1))  # the two splits' items have other classes:
    x_test, y_test = _items(6, 1, (2, 3))  # a test canvas holds test items only
    return build_canvas(x_train, y_train, x_test, y_test, config, class_names=("a", "b", "c", "d"))


def test_masks_boxes_and_images_agree() -> None:
    data = _small()
    c = data.config
    assert data.class_names == ("background", "a", "b", "c", "d") and data.num_classes == 5
    for split, ids in ((data.train, {1, 2}), (data.test, {3, 4})):
        assert split.images.shape == (len(split), 1, 16, 16) and split.images.dtype == np.uint8
        counts = np.diff(split.offsets)
        assert counts.min() >= 1 and counts.max() <= c.max_items
        assert set(split.box_labels.tolist()) <= ids
        for i in range(len(split)):
            image, mask = split.images[i, 0], split.masks[i]
            boxes, labels = split.boxes_of(i)
            drawn = np.zeros_like(mask)
            for (x1, y1, x2, y2), label in zip(boxes.astype(int), labels):
                region = mask[y1:y2, x1:x2]
                assert (drawn[y1:y2, x1:x2] == 0).all()  # boxes never overlap
                drawn[y1:y2, x1:x2] = 1
                assert set(np.unique(region).tolist()) <= {0, int(label)}
                # tight: the item's pixels touch each side of its box
                fg = region == label
                assert fg[0].any() and fg[-1].any() and fg[:, 0].any() and fg[:, -1].any()
            np.testing.assert_array_equal(mask > 0, (mask > 0) & (drawn > 0))  # no item pixel outside a box
            # the image shows exactly the mask's pixels: items >= threshold, background <= noise
            assert (image[mask > 0] >= c.threshold).all() and (image[mask == 0] <= c.noise).all()


def test_items_and_classes_are_drawn_uniformly() -> None:
    """Fixed seed, 600 canvases of up to 3 items: each item count within 20% of its
    share 1/3 (3.5 standard deviations), each of the 2 classes within 10% of 1/2 (about
    7 standard deviations over ~1200 boxes)."""
    config = CanvasConfig(n_train=600, n_test=0, side=32, max_items=3, min_size=4, max_size=7, seed=3)
    split = _small(config).train
    wanted = np.bincount(np.diff(split.offsets), minlength=4)[1:]  # 1, 2 or 3 items (all fit on 32x32)
    np.testing.assert_allclose(wanted / 600, 1 / 3, rtol=0.2)
    np.testing.assert_allclose(np.bincount(split.box_labels)[1:] / len(split.box_labels), 0.5, rtol=0.1)


def test_same_seed_same_bytes_other_seed_other_canvases() -> None:
    a, b = _small(), _small()
    # C-order strides, as an archive read back has: torch then takes batches as NCHW, not
    # channels-last (which convolves by other kernels, with other rounding).
    assert a.train.images.strides == (256, 256, 16, 1) and a.train.batch([0, 3])["image"].strides == (256, 256, 16, 1)
    other = _small(CanvasConfig(**{**SMALL.as_dict(), "seed": 1}))
    for field in ("images", "masks", "boxes", "box_labels", "offsets"):
        np.testing.assert_array_equal(getattr(a.train, field), getattr(b.train, field))
        np.testing.assert_array_equal(getattr(a.test, field), getattr(b.test, field))
    assert not np.array_equal(a.train.masks, other.train.masks)


def test_bad_configs_and_items_are_refused_naming_the_field() -> None:
    for changes, message in (
        ({"n_train": 0}, "n_train must be >= 1"),
        ({"max_size": 80}, "max_size must be <= side=64"),
        ({"min_size": 40, "max_size": 30}, "min_size must be in"),
        ({"noise": 60, "threshold": 48}, "noise must be in"),
        ({"seed": 1.5}, "seed must be an int"),
    ):
        with pytest.raises(DatasetError, match=message):
            CanvasConfig(**changes)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="items must be uint8"):
        cv.make_canvases(np.zeros((3, 7, 7), np.float32), np.arange(3), 2, SMALL, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="labels must be class ids"):
        cv.make_canvases(np.zeros((3, 7, 7), np.uint8), np.arange(2), 2, SMALL, np.random.default_rng(0))


def test_a_split_is_a_dataset_and_a_batch_mixes_with_its_masks_and_boxes() -> None:
    torch = pytest.importorskip("torch")
    from vicinal import MixConfig, sample_plan
    from vicinal.dense import collate_dense, mix_dense

    split = _small().train
    sample = split[3]
    assert sample["image"].shape == (1, 16, 16) and sample["boxes"].shape[1] == 4
    loader = torch.utils.data.DataLoader(split, batch_size=8, collate_fn=lambda s: collate_dense(s, as_torch=True))
    batch = next(iter(loader))
    direct = split.batch(range(8))
    np.testing.assert_array_equal(batch["mask"].numpy(), direct["mask"])
    for a, b in zip(batch["boxes"], direct["boxes"]):
        np.testing.assert_array_equal(a.numpy(), b)
    plan = sample_plan(MixConfig("cutmix", pairing="permute"), 8, seed=0, image_size=(16, 16))
    out = mix_dense(plan, batch, segmentation="hard", num_classes=5)
    for i in range(8):  # every kept box lies where the mixed mask shows its class
        for (x1, y1, x2, y2), label in zip(out["boxes"][i].int().tolist(), out["box_labels"][i].tolist()):
            assert (out["mask"][i, y1:y2, x1:x2] == label).any()


# --------------------------------------------------------------------------- the cache


@pytest.fixture
def tiny_canvas(tiny, tmp_path):  # type: ignore[no-untyped-def]
    """The conftest's registered 3-class IDX dataset "tiny" (4x5 items) on disk, and a config for it."""
    data_dir = tiny.write(tmp_path / "tiny")
    config = CanvasConfig(n_train=30, n_test=8, side=16, max_items=3, min_size=4, max_size=6, threshold=100)
    return data_dir, config, tmp_path / "cache"


def _load(tiny_canvas, **kw):  # type: ignore[no-untyped-def]
    data_dir, config, cache = tiny_canvas
    return load_canvas(config, source="tiny", data_dir=data_dir, cache_dir=cache, **kw)


def _same(a: cv.CanvasData, b: cv.CanvasData) -> None:
    for split in ("train", "test"):
        for field in ("images", "masks", "boxes", "box_labels", "offsets"):
            np.testing.assert_array_equal(getattr(getattr(a, split), field), getattr(getattr(b, split), field))
    assert a.class_names == b.class_names == ("background", "a", "b", "c")


def test_cache_is_written_atomically_and_read_back_without_the_source(tiny_canvas, monkeypatch) -> None:
    built = _load(tiny_canvas)
    archive, manifest = canvas_cache_paths(tiny_canvas[1], "tiny", tiny_canvas[2])
    assert sorted(p.name for p in archive.parent.iterdir()) == sorted([archive.name, manifest.name])  # no temp files
    meta = json.loads(manifest.read_text())
    assert meta["config"] == tiny_canvas[1].as_dict() and meta["size"] == archive.stat().st_size

    def no_source(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the cache was not used")

    monkeypatch.setattr("vicinal.experiments.data.sources.load_dataset", no_source)
    _same(_load(tiny_canvas), built)
    # Another config is another cache entry (and needs the source).
    other = CanvasConfig(**{**tiny_canvas[1].as_dict(), "seed": 5})
    assert canvas_cache_paths(other, "tiny", tiny_canvas[2])[0] != archive
    with pytest.raises(AssertionError, match="not used"):
        load_canvas(other, source="tiny", data_dir=tiny_canvas[0], cache_dir=tiny_canvas[2])


def _truncate(path):  # type: ignore[no-untyped-def]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):  # type: ignore[no-untyped-def]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _other_config(path):  # type: ignore[no-untyped-def]
    meta = json.loads(path.read_text())
    meta["config"]["seed"] += 1
    path.write_text(json.dumps(meta))


DAMAGES = {
    "truncated archive": ("npz", _truncate, "content does not match"),
    "one byte of the archive": ("npz", _flip_a_byte, "content does not match"),
    "deleted archive": ("npz", lambda p: p.unlink(), "archive is missing"),
    "truncated manifest": ("json", _truncate, "cannot read the canvas cache's manifest"),
    "deleted manifest": ("json", lambda p: p.unlink(), "cannot read the canvas cache's manifest"),
    "manifest of another config": ("json", _other_config, "not the one of this config"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_cache_is_refused_or_rebuilt_never_used(tiny_canvas, damage, caplog) -> None:
    built = _load(tiny_canvas)
    archive, manifest = canvas_cache_paths(tiny_canvas[1], "tiny", tiny_canvas[2])
    which, harm, message = DAMAGES[damage]
    harm(archive if which == "npz" else manifest)
    with pytest.raises(DatasetError, match=message) as refused:
        _load(tiny_canvas, on_damage="refuse")
    assert str(archive) in str(refused.value) or str(manifest) in str(refused.value)  # names the file
    with caplog.at_level(logging.WARNING, logger="vicinal.experiments.data.canvas"):
        rebuilt = _load(tiny_canvas)
    assert "rebuilding" in caplog.text and message.split(":")[0] in caplog.text
    _same(rebuilt, built)
    _same(_load(tiny_canvas, on_damage="refuse"), built)  # the rebuilt cache verifies


def test_an_archive_that_verifies_but_is_malformed_is_refused(tiny_canvas) -> None:
    """A manifest rewritten to match a crafted archive: the structure check still refuses it."""
    _load(tiny_canvas)
    archive, manifest = canvas_cache_paths(tiny_canvas[1], "tiny", tiny_canvas[2])
    with np.load(archive) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_masks"] = arrays["train_masks"].copy()
    arrays["train_masks"][0, 0, 0] = 9  # a class id past the 4 classes
    np.savez(archive, **arrays)
    meta = json.loads(manifest.read_text())
    meta["sha256"] = digest_file(archive, "sha256")
    meta["size"] = archive.stat().st_size
    manifest.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"masks hold ids up to 9, expected < 4"):
        _load(tiny_canvas, on_damage="refuse")


def test_bad_arguments(tiny_canvas) -> None:
    with pytest.raises(ValueError, match="on_damage"):
        _load(tiny_canvas, on_damage="ignore")
    with pytest.raises(DatasetError, match="IDX dataset"):
        load_canvas(SMALL, source="cifar10", cache_dir=tiny_canvas[2])


# --------------------------------------------------------------------------- the real data


def test_fashion_mnist_canvases(shared_data, tmp_path) -> None:
    config = CanvasConfig(n_train=50, n_test=20, seed=2)
    data = load_canvas(config, data_dir=shared_data / "fashion-mnist", cache_dir=tmp_path)
    assert data.class_names[:2] == ("background", "T-shirt/top") and data.num_classes == 11
    assert data.train.images.shape == (50, 1, 64, 64) and data.test.masks.shape == (20, 64, 64)
    assert data.train.box_labels.min() >= 1 and data.train.box_labels.max() <= 10
    assert np.diff(data.train.offsets).mean() > 2  # most canvases hold several items
    again = load_canvas(config, data_dir=shared_data / "fashion-mnist", cache_dir=tmp_path, on_damage="refuse")
    np.testing.assert_array_equal(again.train.images, data.train.images)
