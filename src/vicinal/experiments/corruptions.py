"""Corrupted copies of a test set, and the metrics of robustness to them.

The corruptions and their five severities follow CIFAR-10-C (Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019; the parameters are those of their ``make_cifar_c.py``), made with
kornia, Pillow and NumPy instead of scikit-image, OpenCV and ImageMagick, for uint8
images (N, C, H, W) with C = 1 (MNIST-like, 28×28) or 3:

=================  ==========================================  ================================
corruption         CIFAR-10-C severities 1..5                  here
=================  ==========================================  ================================
gaussian_noise     σ = .04 .06 .08 .09 .10 (on [0, 1])         same, NumPy
shot_noise         Poisson(x·λ)/λ, λ = 500 250 100 75 50       same, NumPy
impulse_noise      salt & pepper, amount .01 .02 .03 .05 .07   same, NumPy (per element)
gaussian_blur      σ = .4 .6 .7 .8 1 px                        same σ in px; kornia, kernel
                                                               radius int(4σ + .5), edges
                                                               replicated (scikit-image's)
motion_blur        ImageMagick (radius, σ) = (6,1) (6,1.5)     kornia line kernel (uniform,
                   (6,2) (8,2) (9,2.5), angle U(-45°, 45°)     same angles) of k = 3 5 7 7 9
                                                               taps: the odd k closest to
                                                               sqrt(12σ² + 1), whose rms
                                                               displacement matches
                                                               ImageMagick's one-sided
                                                               Gaussian's (σ). The radius
                                                               only truncates that kernel
                                                               (at 6σ or more), so severities
                                                               3 and 4 differ only in angles,
                                                               as in CIFAR-10-C
contrast           (x - mean)·c + mean, c = .75 .5 .4 .3 .15   same (per image and channel),
                                                               NumPy
brightness         HSV value + .05 .1 .15 .2 .3                same: kornia (RGB via HSV; grey:
                                                               adjust_brightness, the same)
pixelate           box resize to side·(.95 .9 .85 .75 .65)     same fractions of the actual
                   and back                                    side (28 px: 26 25 23 21 18),
                                                               Pillow BOX
jpeg               JPEG quality 80 65 58 50 40                 same, Pillow
elastic_transform  (α, σ, affine) = side · (0, 0, .08)         same fractions of the actual
                   (.05, .2, .07) (.08, .06, .06)              side: a random affine (corner
                   (.1, .04, .05) (.1, .03, .03)               points moved U(±affine) px,
                                                               reflected edges), then a
                                                               displacement of U(-1, 1) noise
                                                               smoothed by σ and scaled by α px
                                                               (kornia warp_affine and
                                                               elastic_transform2d)
=================  ==========================================  ================================

Adapted for 28×28 grey images: parameters that CIFAR-10-C gives in pixels or
intensities (noise, blur, contrast, brightness, JPEG) are kept as they are; those
it gives as fractions of the 32-px side (pixelate, elastic) are taken as fractions of
the actual side. Results are rounded to uint8 (CIFAR-10-C truncates). Severity grows
the change to the image for every corruption but two: motion blur's severities 3 and 4
are one blur (see above), and elastic_transform trades a shrinking affine part for a
growing local distortion, so its severities are not ordered by how much they change
an image (as in CIFAR-10-C).

Every (corruption, severity) draws from its own Philox stream, keyed by the seed and
the corruption's name, in chunks of :data:`CHUNK` images, so the corrupted set is a
pure function of ``(images, seed)``. Everything is batched except JPEG and pixelate,
which only Pillow does: those loop over the images in Python.

:func:`corrupted_test_set` caches the set on disk (one ``.npz`` per corruption and a
JSON manifest of SHA-256 sums); :func:`corruption_errors` and
:func:`mean_corruption_error` turn accuracies on it into the metrics of the AugMix
paper (drawn by :func:`vicinal.experiments.report.plots.corruption_heatmap`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from PIL import Image

from vicinal._checks import check_choice, check_int
from vicinal.experiments.atomic import atomic_write_bytes, atomic_write_json
from vicinal.experiments.spec import check_seed

__all__ = [
    "CHUNK",
    "CORRUPTIONS",
    "SEVERITIES",
    "SEVERITY_TABLE",
    "corrupt",
    "corrupted_test_set",
    "corruption_accuracy",
    "corruption_errors",
    "images_sha256",
    "mean_corruption_error",
]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "motion_blur",
    "contrast",
    "brightness",
    "pixelate",
    "jpeg",
    "elastic_transform",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# CIFAR-10-C's parameters (make_cifar_c.py), indexed by severity - 1.
SEVERITY_TABLE: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise σ on [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson rate λ
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt & pepper fraction
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # σ in px
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),  # ImageMagick (radius, σ) in px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor c
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # fraction of the side
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    # (α, σ, affine) as fractions of the side
    "elastic_transform": (
        (0.0, 0.0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
}

CHUNK = 2048
"""Images per chunk: each chunk of a (corruption, severity) has its own random stream."""

_FORMAT = 1  # bump when the generation changes: caches of older formats are regenerated
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- generation


def _rng(seed: int, corruption: str, severity: int, chunk: int) -> np.random.Generator:
    tag = zlib.crc32(f"{corruption}/{severity}".encode())
    return np.random.Generator(np.random.Philox(key=[seed, tag], counter=[0, chunk, 0, 0]))


def _motion_kernel_size(sigma: float) -> int:
    """The odd number of taps k whose centred line has rms displacement closest to σ."""
    k = float(np.sqrt(12.0 * sigma**2 + 1.0))
    return int(2 * np.round((k - 1.0) / 2.0) + 1)


def _torch(x: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _gaussian_kernel_size(sigma: float, truncate: float) -> int:
    return 2 * int(truncate * sigma + 0.5) + 1  # scipy / scikit-image's radius


def _elastic(x: np.ndarray, rng: np.random.Generator, params: tuple[float, float, float]) -> np.ndarray:
    import kornia  # the augmix extra: only corruptions that blur or warp need it

    n, _, h, w = x.shape
    side = min(h, w)
    alpha, sigma, affine = (p * side for p in params)
    # CIFAR-10-C's random affine: three points around the centre, each moved U(±affine).
    center = np.array([w // 2, h // 2], dtype=np.float64)
    s = side // 3
    src = np.array([center + s, [center[0] + s, center[1] - s], center - s])
    dst = src + rng.uniform(-affine, affine, size=(n, 3, 2))
    # The affine map A (2×3) with A·[src, 1] = dst: one 3×3 solve per image, batched.
    src_h = np.concatenate([src, np.ones((3, 1))], axis=1)
    matrix = np.linalg.solve(src_h[None], dst).transpose(0, 2, 1)
    t = kornia.geometry.transform.warp_affine(
        _torch(x), _torch(matrix), (h, w), mode="bilinear", padding_mode="reflection", align_corners=True
    )
    if alpha > 0:
        noise = _torch(rng.uniform(-1.0, 1.0, size=(n, 2, h, w)))
        size = min(_gaussian_kernel_size(sigma, 3.0), 2 * (max(h, w) // 2) + 1)
        # kornia's displacement is in normalised coordinates: with align_corners, 2/(side-1) per pixel.
        t = kornia.geometry.transform.elastic_transform2d(
            t,
            noise,
            kernel_size=(size, size),
            sigma=(sigma, sigma),
            alpha=(alpha * 2.0 / (w - 1), alpha * 2.0 / (h - 1)),
            align_corners=True,
            padding_mode="reflection",
        )
    out: np.ndarray = t.numpy()
    return out


def _pillow_each(images: np.ndarray, fn: Callable[[Any], Any]) -> np.ndarray:
    """``fn`` on every image as a Pillow image ("L" or "RGB"); a Python loop (Pillow only)."""
    hwc = images.transpose(0, 2, 3, 1)
    out = np.empty_like(hwc)
    for i, img in enumerate(hwc):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(fn(pil)).reshape(img.shape)
    return out.transpose(0, 3, 1, 2)


def _jpeg(quality: int) -> Callable[[Any], Any]:
    def fn(img: Any) -> Any:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert(img.mode)

    return fn


def _pixelate(fraction: float) -> Callable[[Any], Any]:
    def fn(img: Any) -> Any:
        w, h = img.size
        small = img.resize((int(w * fraction), int(h * fraction)), Image.Resampling.BOX)
        return small.resize((w, h), Image.Resampling.BOX)

    return fn


def _corrupt_chunk(x8: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One chunk: uint8 (n, C, H, W) -> float (n, C, H, W) in [0, 1] (or uint8 for Pillow)."""
    c = SEVERITY_TABLE[corruption][severity - 1]
    if corruption == "jpeg":
        return _pillow_each(x8, _jpeg(int(c)))
    if corruption == "pixelate":
        return _pillow_each(x8, _pixelate(float(c)))
    x = x8.astype(np.float32) / 255.0
    if corruption == "gaussian_noise":
        return x + rng.normal(scale=c, size=x.shape)
    if corruption == "shot_noise":
        return rng.poisson(x * c) / c
    if corruption == "impulse_noise":
        flipped = rng.random(x.shape) <= c
        salted = rng.random(x.shape) <= 0.5
        return np.where(flipped, salted.astype(np.float32), x)
    if corruption == "contrast":
        means = x.mean(axis=(2, 3), keepdims=True)
        return (x - means) * c + means
    if corruption == "elastic_transform":
        return _elastic(x, rng, c)

    import kornia  # the augmix extra: only corruptions that blur or warp need it

    t = _torch(x)
    if corruption == "gaussian_blur":
        k = _gaussian_kernel_size(c, 4.0)
        # One kernel for every plane: blurring the (1, N·C) stack of planes is the same
        # and ~7x faster on CPU than N images of C channels.
        planes = t.reshape(1, -1, *t.shape[-2:])
        out = kornia.filters.gaussian_blur2d(planes, (k, k), (c, c), border_type="replicate").reshape(t.shape)
    elif corruption == "motion_blur":
        angle = _torch(rng.uniform(-45.0, 45.0, size=len(x)))
        out = kornia.filters.motion_blur(
            t, _motion_kernel_size(c[1]), angle, torch.zeros_like(angle), border_type="replicate", mode="bilinear"
        )
    elif corruption == "brightness":
        if t.shape[1] == 3:
            hsv = kornia.color.rgb_to_hsv(t)
            hsv[:, 2:] = (hsv[:, 2:] + c).clamp(0.0, 1.0)
            out = kornia.color.hsv_to_rgb(hsv)
        else:  # one channel: its HSV value is the pixel itself
            out = kornia.enhance.adjust_brightness(t, c)
    else:
        raise ValueError(f"corruption must be one of {list(CORRUPTIONS)}, got {corruption!r}")
    result: np.ndarray = out.numpy()
    return result


def _check_images(images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"images must be uint8 (N, C, H, W) with N >= 1 and C = 1 or 3, got {images.dtype} {images.shape}"
        )
    return images


def corrupt(images: np.ndarray, corruption: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """A corrupted copy of ``images``; a pure function of its arguments.

    Args:
        images: uint8 (N, C, H, W), C = 1 or 3 (H, W >= 8 for the blurs' padding).
        corruption: one of :data:`CORRUPTIONS`.
        severity: 1 to 5 (:data:`SEVERITY_TABLE`).
        seed: selects the random draws (noise, angles, displacements).

    Returns:
        uint8 (N, C, H, W), a new array (values rounded and clipped to 0..255).

    >>> x = np.full((2, 1, 28, 28), 128, np.uint8)
    >>> y = corrupt(x, "brightness", 1)
    >>> y.dtype, y.shape, int(y[0, 0, 0, 0])
    (dtype('uint8'), (2, 1, 28, 28), 141)
    """
    images = _check_images(images)
    check_choice("corruption", corruption, CORRUPTIONS)
    check_int("severity", severity, minimum=1, maximum=len(SEVERITIES))
    check_seed("seed", seed)
    out = np.empty_like(images)
    for chunk, start in enumerate(range(0, len(images), CHUNK)):
        part = _corrupt_chunk(
            images[start : start + CHUNK], corruption, severity, _rng(seed, corruption, severity, chunk)
        )
        if part.dtype != np.uint8:
            part = np.rint(np.clip(part, 0.0, 1.0) * 255.0)
        out[start : start + CHUNK] = part
    return out


# --------------------------------------------------------------------------- cache


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def images_sha256(images: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (identifies a test set)."""
    h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def _params_sha256() -> str:
    spec = {"format": _FORMAT, "chunk": CHUNK, "table": SEVERITY_TABLE}
    return _sha256(json.dumps(spec, sort_keys=True).encode())


def _file_name(name: str, corruption: str) -> str:
    return f"{name}-{corruption}.npz"


def _load_checked(path: Path, sha256: str | None, shape: tuple[int, ...]) -> dict[int, np.ndarray] | None:
    """The severities in ``path`` if its bytes have the SHA-256 ``sha256`` and hold
    uint8 arrays of ``shape``; None for a missing, tampered or malformed file."""
    if sha256 is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if _sha256(data) != sha256:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {s: npz[f"severity_{s}"] for s in SEVERITIES}
    except (OSError, ValueError, KeyError, zlib.error, EOFError):
        return None
    if any(a.dtype != np.uint8 or a.shape != shape for a in arrays.values()):
        return None
    return arrays


def corrupted_test_set(
    images: np.ndarray,
    cache_dir: str | os.PathLike,
    *,
    name: str,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
) -> dict[tuple[str, int], np.ndarray]:
    """Every (corruption, severity) copy of a test set, generated once and cached.

    The cache holds ``{name}-{corruption}.npz`` (arrays ``severity_1`` ..
    ``severity_5``) and ``{name}-manifest.json``: the SHA-256 of the source test set
    (:func:`images_sha256`), the seed, a hash of the generation parameters, and the
    SHA-256 of each ``.npz``. A file whose sum, shape or dtype does not match — or a
    manifest for another test set, seed or parameter table — is regenerated, never
    used. Files are written atomically (a temporary file in ``cache_dir``, fsync'ed,
    renamed) and the manifest after each one; a file lock keeps processes sharing the
    cache from generating the same corruption twice at once.

    Args:
        images: uint8 (N, C, H, W), C = 1 or 3: the clean test set.
        cache_dir: folder of the cache (created if missing).
        name: the test set's name in file names (letters, digits, ``.``, ``_``, ``-``).
        seed: the corruptions' seed (:func:`corrupt`).
        corruptions: the corruptions wanted (default: :data:`CORRUPTIONS`); load a few
            at a time to bound memory (each is 5 copies of the test set).

    Returns:
        ``{(corruption, severity): uint8 (N, C, H, W)}`` for the corruptions asked and
        severities 1..5.
    """
    images = _check_images(images)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '.', '_' or '-' (not first), got {name!r}")
    check_seed("seed", seed)
    wanted = tuple(CORRUPTIONS if corruptions is None else corruptions)
    for corruption in wanted:
        check_choice("corruption", corruption, CORRUPTIONS)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / f"{name}-manifest.json"
    header = {
        "format": _FORMAT,
        "source_sha256": images_sha256(images),
        "source_shape": list(images.shape),
        "seed": int(seed),
        "params_sha256": _params_sha256(),
    }
    result: dict[tuple[str, int], np.ndarray] = {}
    with FileLock(folder / f".{name}.lock"):
        manifest: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in header.items()):
            manifest = {**header, "files": {}}
        files = manifest.get("files")
        if not isinstance(files, dict):
            files = manifest["files"] = {}
        for corruption in wanted:
            path = folder / _file_name(name, corruption)
            entry = files.get(corruption)
            sha = entry.get("sha256") if isinstance(entry, dict) else None
            arrays = _load_checked(path, sha, images.shape)
            if arrays is None:
                arrays = {s: corrupt(images, corruption, s, seed=seed) for s in SEVERITIES}
                buf = io.BytesIO()
                save: Any = np.savez_compressed  # (numpy's stubs take ** for allow_pickle)
                save(buf, **{f"severity_{s}": a for s, a in arrays.items()})
                data = buf.getvalue()
                atomic_write_bytes(path, data)
                files[corruption] = {"file": path.name, "sha256": _sha256(data)}
                atomic_write_json(manifest_path, manifest)
            result.update({(corruption, s): a for s, a in arrays.items()})
    return result


def corruption_accuracy(
    accuracy: Callable[[np.ndarray], float],
    images: np.ndarray,
    cache_dir: str | os.PathLike,
    *,
    name: str,
    seed: int = 0,
    corruptions: Sequence[str] | None = None,
) -> dict[tuple[str, int], float]:
    """``accuracy`` of a model on every (corruption, severity) copy of a test set.

    Loads (or generates) one corruption at a time (:func:`corrupted_test_set`), so at
    most five copies of the test set are in memory.

    Args:
        accuracy: ``accuracy(images) -> float in [0, 1]`` for uint8 (N, C, H, W) images
            in the order of ``images`` (the caller holds the labels).
        images, cache_dir, name, seed, corruptions: as for :func:`corrupted_test_set`.
            Use one ``seed`` for every arm and run: their errors are compared.

    Returns:
        ``{(corruption, severity): accuracy}``, the input of :func:`corruption_errors`.
    """
    out: dict[tuple[str, int], float] = {}
    for corruption in CORRUPTIONS if corruptions is None else corruptions:
        copies = corrupted_test_set(images, cache_dir, name=name, seed=seed, corruptions=(corruption,))
        out.update({key: float(accuracy(x)) for key, x in copies.items()})
    return out


# --------------------------------------------------------------------------- metrics


def corruption_errors(accuracy_by_key: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Mean error of each corruption over its severities.

    Args:
        accuracy_by_key: ``{(corruption, severity): accuracy in [0, 1]}``.

    Returns:
        ``{corruption: mean over severities of (1 - accuracy)}``, in [0, 1], in the
        order of :data:`CORRUPTIONS` (others after, in order of appearance).

    >>> corruption_errors({("jpeg", 1): 0.75, ("jpeg", 2): 0.25, ("contrast", 1): 0.5})
    {'contrast': 0.5, 'jpeg': 0.5}
    """
    sums: dict[str, list[float]] = {}
    for key, acc in accuracy_by_key.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"keys must be (corruption, severity), got {key!r}")
        a = float(acc)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"accuracy of {key} must be in [0, 1], got {acc!r}")
        sums.setdefault(str(key[0]), []).append(1.0 - a)
    order = [c for c in CORRUPTIONS if c in sums] + [c for c in sums if c not in CORRUPTIONS]
    return {c: float(np.mean(sums[c])) for c in order}


def mean_corruption_error(errors_arm: Mapping[str, float], errors_baseline: Mapping[str, float]) -> float:
    """mCE as the AugMix paper defines it, in percent.

    ``CE_c = Σ_s E_arm(c, s) / Σ_s E_baseline(c, s)`` for each corruption ``c``, and
    ``mCE = 100 · mean_c CE_c``. The arguments are the mean errors over severities
    (:func:`corruption_errors`); over the same severities a ratio of means is the ratio
    of sums. The baseline against itself scores 100; below 100 is more robust.

    Args:
        errors_arm, errors_baseline: ``{corruption: mean error}`` with the same keys.

    Raises:
        ValueError: the corruptions differ, or the baseline has zero error on one.

    >>> mean_corruption_error({"jpeg": 0.1, "contrast": 0.3}, {"jpeg": 0.2, "contrast": 0.3})
    75.0
    """
    if set(errors_arm) != set(errors_baseline) or not errors_arm:
        raise ValueError(
            f"errors_arm and errors_baseline must cover the same corruptions, got {sorted(errors_arm)} "
            f"and {sorted(errors_baseline)}"
        )
    zero = [c for c, e in errors_baseline.items() if not float(e) > 0.0]
    if zero:
        raise ValueError(f"the baseline's error is 0 on {zero}: the corruption error is undefined there")
    ratios = [float(errors_arm[c]) / float(errors_baseline[c]) for c in errors_arm]
    return 100.0 * float(np.mean(ratios))
