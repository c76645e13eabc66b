"""Corrupted test sets (vicinal.experiments.corruptions): generation, cache, metrics."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("kornia")

from vicinal.experiments import corruptions as C
from vicinal.experiments.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corrupted_test_set,
    corruption_accuracy,
    corruption_errors,
    images_sha256,
    mean_corruption_error,
)
from vicinal.experiments.report.plots import corruption_heatmap

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic_transform")
# The mean change grows strictly with severity for these; motion blur's severities 3 and
# 4 are one blur (as in CIFAR-10-C) and elastic_transform's are not ordered (module docs).
MONOTONE = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "contrast",
    "brightness",
    "pixelate",
    "jpeg",
)


def _digits(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> np.ndarray:
    """uint8 (n, C, size, size) rings with a bar: digit-like strokes on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(0.35 * size, 0.65 * size, (2, n, 1, 1))
    r = rng.uniform(0.18 * size, 0.3 * size, (n, 1, 1))
    img = np.clip(1.5 - np.abs(np.hypot(xx - cx, yy - cy) - r), 0, 1) * rng.uniform(150, 255, (n, 1, 1))
    img[:, size // 2 - 1 : size // 2 + 2, size // 6 : -size // 6] = 230
    out = np.repeat(img[:, None], channels, axis=1)
    if channels == 3:
        out = out * rng.uniform(0.3, 1.0, (n, 3, 1, 1))
    return out.astype(np.uint8)


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return _digits(48)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_severity_changes_the_images_and_keeps_dtype_and_shape(grey, corruption):
    changes = []
    for severity in SEVERITIES:
        out = corrupt(grey, corruption, severity)
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert np.array_equal(out, corrupt(grey, corruption, severity))  # deterministic
        changes.append(_change(out, grey))
    assert min(changes) > 0.5, changes  # every severity changes the images (mean |Δ| > 0.5 level)
    if corruption in MONOTONE:
        assert all(b > a for a, b in itertools.pairwise(changes)), changes
    elif corruption == "motion_blur":
        assert changes[0] < changes[1] < changes[2] < changes[4], changes
        assert abs(changes[3] - changes[2]) < 0.1 * changes[2], changes


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_rgb_images_are_corrupted_too(corruption):
    rgb = _digits(6, channels=3, size=32)
    out = corrupt(rgb, corruption, 3)
    assert out.dtype == np.uint8 and out.shape == rgb.shape and _change(out, rgb) > 0.5


@pytest.mark.parametrize("corruption", RANDOM)
def test_the_seed_selects_the_random_draws(grey, corruption):
    a, b = corrupt(grey, corruption, 4, seed=0), corrupt(grey, corruption, 4, seed=1)
    assert not np.array_equal(a, b)
    # Each severity draws from a stream of its own: not the same noise rescaled.
    assert np.array_equal(corrupt(grey, corruption, 4, seed=0), a)


def test_gaussian_noise_has_the_tabled_standard_deviation():
    flat = np.full((64, 1, 28, 28), 128, np.uint8)  # mid-grey: no clipping at σ ≤ 0.1
    for severity, sigma in zip(SEVERITIES, C.SEVERITY_TABLE["gaussian_noise"]):
        residual = (corrupt(flat, "gaussian_noise", severity).astype(np.float64) - 128) / 255
        # 50,176 draws: the sample sd is within 2% of σ (its standard error is ~0.3%),
        # plus the rounding to uint8 (variance 1/12 level²).
        expected = np.sqrt(sigma**2 + 1 / (12 * 255**2))
        assert abs(residual.std() / expected - 1) < 0.02, severity


def test_chunks_draw_from_their_own_streams(grey, monkeypatch):
    monkeypatch.setattr(C, "CHUNK", 16)
    out = corrupt(grey, "gaussian_noise", 2)  # 3 chunks of 16
    residual = out.astype(np.float64) - grey
    assert not np.allclose(residual[:16], residual[16:32])
    assert np.array_equal(out, corrupt(grey, "gaussian_noise", 2))


def test_arguments_are_validated(grey):
    with pytest.raises(ValueError):
        corrupt(grey.astype(np.float32), "jpeg", 1)
    with pytest.raises(ValueError):
        corrupt(grey, "fog", 1)
    with pytest.raises(ValueError):
        corrupt(grey, "jpeg", 6)
    with pytest.raises(ValueError):
        corrupted_test_set(grey, "unused", name="../escape")


# --------------------------------------------------------------------------- cache

WANTED = ("gaussian_noise", "jpeg")


def _count_generations(monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    real = C.corrupt

    def counting(images, corruption, severity, *, seed=0):
        calls.append((corruption, severity))
        return real(images, corruption, severity, seed=seed)

    monkeypatch.setattr(C, "corrupt", counting)
    return calls


def test_cache_round_trips_and_is_reused(grey, tmp_path, monkeypatch):
    calls = _count_generations(monkeypatch)
    first = corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    assert sorted(first) == sorted((c, s) for c in WANTED for s in SEVERITIES)
    assert len(calls) == 10
    for (c, s), arr in first.items():
        assert np.array_equal(arr, C.corrupt(grey, c, s))
    manifest = json.loads((tmp_path / "toy-manifest.json").read_text())
    assert manifest["source_sha256"] == images_sha256(grey) and manifest["seed"] == 0
    assert set(manifest["files"]) == set(WANTED)
    calls.clear()
    again = corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    assert calls == []  # read from the cache
    assert all(np.array_equal(again[k], first[k]) for k in first)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary files left


def test_a_tampered_cache_file_is_detected_and_regenerated(grey, tmp_path, monkeypatch):
    calls = _count_generations(monkeypatch)
    first = corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    path = tmp_path / "toy-jpeg.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    calls.clear()
    again = corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    assert sorted(calls) == [("jpeg", s) for s in SEVERITIES]  # only the tampered file
    assert all(np.array_equal(again[k], first[k]) for k in first)
    manifest = json.loads((tmp_path / "toy-manifest.json").read_text())
    assert manifest["files"]["jpeg"]["sha256"] == C._sha256(path.read_bytes())


def test_a_valid_file_of_the_wrong_contents_is_not_used(grey, tmp_path, monkeypatch):
    calls = _count_generations(monkeypatch)
    corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    # Swap in a well-formed file with other contents: its SHA-256 no longer matches.
    np.savez_compressed(tmp_path / "toy-jpeg.npz", **{f"severity_{s}": grey for s in SEVERITIES})
    (tmp_path / "toy-gaussian_noise.npz").unlink()
    calls.clear()
    out = corrupted_test_set(grey, tmp_path, name="toy", corruptions=WANTED)
    assert len(calls) == 10
    assert not np.array_equal(out[("jpeg", 5)], grey)


def test_another_test_set_or_seed_regenerates(grey, tmp_path, monkeypatch):
    calls = _count_generations(monkeypatch)
    corrupted_test_set(grey, tmp_path, name="toy", corruptions=("jpeg",))
    calls.clear()
    other = grey.copy()
    other[0, 0, 0, 0] ^= 1
    out = corrupted_test_set(other, tmp_path, name="toy", corruptions=("jpeg",))
    assert len(calls) == 5 and np.array_equal(out[("jpeg", 1)], C.corrupt(other, "jpeg", 1))
    calls.clear()
    corrupted_test_set(other, tmp_path, name="toy", seed=1, corruptions=("jpeg",))
    assert len(calls) == 5
    # A corrupt manifest is not trusted either.
    (tmp_path / "toy-manifest.json").write_text("{not json")
    calls.clear()
    corrupted_test_set(other, tmp_path, name="toy", seed=1, corruptions=("jpeg",))
    assert len(calls) == 5


# --------------------------------------------------------------------------- metrics


def test_corruption_errors_average_the_severities():
    acc = {("jpeg", s): a for s, a in zip(SEVERITIES, (0.9, 0.8, 0.7, 0.6, 0.5))}
    acc.update({("contrast", s): 0.95 for s in SEVERITIES})
    errors = corruption_errors(acc)
    assert list(errors) == ["contrast", "jpeg"]  # CORRUPTIONS order
    assert errors["jpeg"] == pytest.approx(0.3) and errors["contrast"] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        corruption_errors({("jpeg", 1): 1.5})


def test_mean_corruption_error_by_hand():
    # Per-severity errors of an arm and a baseline on two corruptions:
    arm = {"jpeg": [0.1, 0.1, 0.2, 0.2, 0.4], "contrast": [0.3] * 5}
    base = {"jpeg": [0.2, 0.2, 0.4, 0.4, 0.8], "contrast": [0.25] * 5}
    # CE_jpeg = 1.0 / 2.0 = 0.5, CE_contrast = 1.5 / 1.25 = 1.2: mCE = 100 · (0.5 + 1.2) / 2 = 85.
    to_acc = lambda errs: {(c, s): 1 - e for c, es in errs.items() for s, e in zip(SEVERITIES, es)}
    e_arm, e_base = corruption_errors(to_acc(arm)), corruption_errors(to_acc(base))
    assert mean_corruption_error(e_arm, e_base) == pytest.approx(85.0)
    assert mean_corruption_error(e_base, e_base) == pytest.approx(100.0)
    assert mean_corruption_error(e_arm, e_arm) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        mean_corruption_error({"jpeg": 0.1}, {"contrast": 0.1})
    with pytest.raises(ValueError):
        mean_corruption_error({"jpeg": 0.1}, {"jpeg": 0.0})


def test_heatmap_writes_a_png(tmp_path):
    table = {
        "erm": {c: 0.05 + 0.01 * i for i, c in enumerate(CORRUPTIONS)},
        "augmix": {c: 0.04 for c in CORRUPTIONS[:-1]},  # one cell missing: left blank
    }
    path = corruption_heatmap(table, tmp_path / "plots" / "corruptions.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    with pytest.raises(ValueError):
        corruption_heatmap({}, tmp_path / "empty.png")


def test_gaussian_blur_matches_scikit_images_filter():
    # CIFAR-10-C blurs with skimage.filters.gaussian: scipy's gaussian_filter, truncate 4, edges replicated.
    ndimage = pytest.importorskip("scipy.ndimage")
    images = _digits(8)
    for severity, sigma in zip(SEVERITIES, C.SEVERITY_TABLE["gaussian_blur"]):
        ref = ndimage.gaussian_filter(images / 255.0, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        ref = np.rint(np.clip(ref, 0, 1) * 255)
        assert np.abs(corrupt(images, "gaussian_blur", severity) - ref).max() <= 1, severity


def test_corruption_accuracy_feeds_corruption_errors(grey, tmp_path):
    # A "model" that is right where a background pixel (row 14, column 0) is still dark:
    # right on every image up to brightness severity 3 (+0.15), wrong on all from 4 (+0.2).
    accuracy = lambda x: float((x[:, 0, 14, 0] < 40).mean())
    acc = corruption_accuracy(accuracy, grey, tmp_path, name="toy", corruptions=("brightness", "contrast"))
    assert sorted(acc) == sorted((c, s) for c in ("brightness", "contrast") for s in SEVERITIES)
    assert acc[("brightness", 1)] == accuracy(corrupt(grey, "brightness", 1))
    assert [acc[("brightness", s)] for s in SEVERITIES] == [1.0, 1.0, 1.0, 0.0, 0.0]
    errors = corruption_errors(acc)
    assert errors["brightness"] == pytest.approx(0.4)
    assert errors["brightness"] == pytest.approx(np.mean([1 - acc[("brightness", s)] for s in SEVERITIES]))
