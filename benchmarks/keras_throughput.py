"""Throughput of Keras 3's MixUp/CutMix layers and vicinal's Keras front end, same batch.

Every row mixes the same batch of backend tensors (images and labels) on the active
Keras backend (``KERAS_BACKEND``, default torch) and reports the median time of one
call (the rows take turns, one call per round), images/s and the speed relative to
``keras.layers.MixUp``. Rows:

* ``keras.layers.MixUp`` / ``keras.layers.CutMix``: one-hot labels (they need floats);
* ``vicinal MixLayer ...``: the layer, host plan draw included, with one-hot or int labels;
* ``vicinal mix_with_plan``: the ``keras.ops`` mixing alone, on a plan drawn beforehand;
* ``vicinal sample_plan``: the host plan draw alone (NumPy);
* ``vicinal.apply_plan (torch)``: the core's fused PyTorch path on the same tensors
  (torch backend only), for reference.

Nothing is asserted; compare rows of one run only (a shared machine is noisy).

    KERAS_BACKEND=torch python benchmarks/keras_throughput.py [--batch 128] [--shape 32 32 3] \
        [--repeats 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from vicinal import MixConfig, sample_plan
from vicinal.keras import MixLayer, mix_with_plan, plan_tensors


def _sync(out: object) -> None:
    """Wait for asynchronous backends so that the time covers the work."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(out)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _median_seconds(table: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds of one call of each row; the rows take turns, one call each per
    round, so that a burst of load from other processes hits them all alike."""
    for fn in table.values():
        for _ in range(warmup):
            _sync(fn())
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(repeats):
        for name, fn in table.items():
            t0 = time.perf_counter()
            _sync(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rows(batch: int, shape: tuple[int, int, int], num_classes: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    x_np = rng.random((batch, *shape), dtype=np.float32)
    ids_np = rng.integers(0, num_classes, batch)
    x = keras.ops.convert_to_tensor(x_np)
    ids = keras.ops.convert_to_tensor(ids_np)
    onehot = keras.ops.convert_to_tensor(np.eye(num_classes, dtype=np.float32)[ids_np])
    data = {"images": x, "labels": onehot}
    data_ids = {"images": x, "labels": ids}
    image_size = shape[:2]

    mixup_cfg = MixConfig(alpha=0.2)
    cutmix_cfg = MixConfig("cutmix", cutmix_alpha=1.0)
    k_mixup, k_cutmix = keras.layers.MixUp(alpha=0.2, seed=0), keras.layers.CutMix(factor=1.0, seed=0)
    v_mixup = MixLayer(mixup_cfg, num_classes=num_classes)
    v_mixup_perm = MixLayer(MixConfig(alpha=0.2, pairing="permute"), num_classes=num_classes)
    v_cutmix = MixLayer(cutmix_cfg, num_classes=num_classes)
    v_switch = MixLayer(MixConfig("switch", alpha=0.2, cutmix_alpha=1.0), num_classes=num_classes)
    v_kway = MixLayer(MixConfig("kway", alpha=0.2, k=3), num_classes=num_classes)
    mixup_plan = plan_tensors(sample_plan(mixup_cfg, batch, seed=0))
    mixup_plan = {k: keras.ops.convert_to_tensor(v) for k, v in mixup_plan.items()}
    cutmix_plan = plan_tensors(sample_plan(cutmix_cfg, batch, seed=0, image_size=image_size))
    cutmix_plan = {k: keras.ops.convert_to_tensor(v) for k, v in cutmix_plan.items()}

    out: dict[str, Callable[[], object]] = {
        "keras.layers.MixUp (one-hot)": lambda: k_mixup(data, training=True),
        "vicinal MixLayer mixup (one-hot)": lambda: v_mixup(data),
        "vicinal MixLayer mixup (int ids)": lambda: v_mixup(data_ids),
        "vicinal MixLayer mixup permute (one-hot)": lambda: v_mixup_perm(data),
        "vicinal mix_with_plan mixup (one-hot)": lambda: mix_with_plan(mixup_plan, x, onehot),
        "vicinal sample_plan mixup (host only)": lambda: sample_plan(mixup_cfg, batch, seed=0, step=1),
        "keras.layers.CutMix (one-hot)": lambda: k_cutmix(data, training=True),
        "vicinal MixLayer cutmix (one-hot)": lambda: v_cutmix(data),
        "vicinal mix_with_plan cutmix (one-hot)": lambda: mix_with_plan(cutmix_plan, x, onehot),
        "vicinal MixLayer switch (one-hot)": lambda: v_switch(data),
        "vicinal MixLayer kway k=3 (one-hot)": lambda: v_kway(data),
    }
    if keras.backend.backend() == "torch":
        from vicinal import apply_plan

        plan = sample_plan(mixup_cfg, batch, seed=0)
        out["vicinal.apply_plan (torch, core)"] = lambda: apply_plan(
            plan, x, ids, num_classes=num_classes, data_format="channels_last"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 3), metavar=("H", "W", "C"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (torch backend)")
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        threads = f", torch threads {torch.get_num_threads()}"
    else:
        threads = ""
    shape = tuple(args.shape)
    print(
        f"keras {keras.__version__}, backend {backend}{threads}; batch {args.batch}x{shape[0]}x{shape[1]}x{shape[2]} "
        f"float32, {args.classes} classes; median of {args.repeats} calls"
    )
    medians = _median_seconds(rows(args.batch, shape, args.classes), args.repeats)
    base = medians["keras.layers.MixUp (one-hot)"]
    print(f"{'':44s} {'ms/batch':>9s} {'images/s':>10s} {'vs keras MixUp':>15s}")
    for name, t in medians.items():
        print(f"{name:44s} {t * 1e3:9.3f} {args.batch / t:10.0f} {base / t:14.2f}x")


if __name__ == "__main__":
    main()
