"""The keras.io reference experiment: the same network trained with and without mixing.

:func:`run_compare` loads the data, holds out the first ``val_size`` training images,
saves one set of initial weights, trains every arm from them, and writes the run folder:

* ``config.json`` — the resolved configuration;
* ``init.pt`` — the shared initial weights;
* ``<arm>/`` — each arm's checkpoint, ``metrics.jsonl`` and ``result.json``;
* ``preview.png`` — nine mixed training images with their soft labels;
* ``curves.png`` — accuracy and loss per epoch for every arm;
* ``summary.md`` — the results table.

Arms can train in parallel processes (one per arm, threads split between them): on a
small CPU this is the fastest way to use all cores, because one step of the reference
CNN is too small to spread over several threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicinal.experiments.data import ArrayDataset, available_datasets, load_dataset, load_image_folder, load_npz
from vicinal.experiments.distributed import POLICIES, SINGLE, DistContext, barrier, init_from_env, launched_by_torchrun
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.models import build_model
from vicinal.experiments.train import (
    ArmResult,
    OptimConfig,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    train_arm,
)
from vicinal.sampling import MixConfig

ARMS = ("mixup", "none")


@dataclass(frozen=True)
class RunSpec:
    """What a comparison run and a study cell share: data, model, length, mixing."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "reference-cnn"
    epochs: int = 10
    batch_size: int = 64
    method: str = "mixup"
    alpha: float = 0.2
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    k: int = 3
    granularity: str = "elem"
    pairing: str = "stream"
    label_smoothing: float = 0.0
    val_size: int = 2000
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    channels_last: bool = True

    def mixing(self, *, pairing: str | None = None) -> MixConfig:
        """The :class:`MixConfig` these fields name (validated); ``pairing`` overrides."""
        return MixConfig(
            self.method,  # type: ignore[arg-type]
            alpha=self.alpha,
            cutmix_alpha=self.cutmix_alpha,
            switch_prob=self.switch_prob,
            k=self.k if self.method == "kway" else 2,
            granularity=self.granularity,  # type: ignore[arg-type]
            pairing=pairing or self.pairing,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class CompareConfig(RunSpec):
    """Everything that defines a comparison run (saved as ``config.json``)."""

    device: str = "cpu"
    threads: int | None = None
    parallel: bool = True
    arms: tuple[str, ...] = ARMS
    mix_policy: str = "independent"
    dist_timeout_s: float = 300.0
    precision: str = "fp32"

    def mix_config(self) -> MixConfig:
        """The mixing of the mixed arm (validated)."""
        return self.mixing()

    def validate(self) -> CompareConfig:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {self.val_size}")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was asked for but torch sees no CUDA device")
        if self.mix_policy not in POLICIES:
            raise ValueError(f"mix_policy must be one of {list(POLICIES)}, got {self.mix_policy!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {self.arms}")
        self.mix_config()
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompareConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config.json has unknown keys {sorted(unknown)}")
        if "arms" in data:
            data = dict(data, arms=tuple(data["arms"]))
        return cls(**data)


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, C, H, W) and int64 labels of each split, plus class names."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])  # type: ignore[return-value]


def load_any(dataset: str, data_dir: str | None) -> ArrayDataset:
    """A registered dataset by name, or your own: a ``.npz`` file or a class-folder tree."""
    if dataset in available_datasets():
        return load_dataset(dataset, data_dir)
    path = Path(dataset)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise ValueError(
        f"dataset must be one of {list(available_datasets())}, a .npz file or a folder of class folders; "
        f"got {dataset!r}"
    )


def make_splits(ds: ArrayDataset, cfg: CompareConfig) -> Splits:
    """The reference's split: the first ``val_size`` training images are the validation set."""
    n = len(ds.y_train)
    if cfg.val_size >= n:
        raise ValueError(f"val_size={cfg.val_size} leaves no training images (the training set has {n})")
    xv, yv = ds.x_train[: cfg.val_size], ds.y_train[: cfg.val_size]
    xt, yt = ds.x_train[cfg.val_size :], ds.y_train[cfg.val_size :]
    if cfg.train_limit is not None:
        xt, yt = xt[: cfg.train_limit], yt[: cfg.train_limit]
    xs, ys = ds.x_test, ds.y_test
    if cfg.test_limit is not None:
        xs, ys = xs[: cfg.test_limit], ys[: cfg.test_limit]
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Splits((as_t(xt), as_t(yt)), (as_t(xv), as_t(yv)), (as_t(xs), as_t(ys)), tuple(ds.class_names))


def make_loader(cfg: CompareConfig, splits: Splits, arm: str, dist: DistContext = SINGLE) -> InMemoryLoader:
    return InMemoryLoader(
        *splits.train,
        num_classes=len(splits.class_names),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        mix=cfg.mix_config() if arm == "mixup" else None,
        label_smoothing=cfg.label_smoothing,
        channels_last=cfg.channels_last,
        device=cfg.device,
        dist=dist,
        policy=cfg.mix_policy,
    )


def initial_weights(cfg: CompareConfig, splits: Splits, run_dir: Path) -> dict[str, torch.Tensor]:
    """The shared initial weights: loaded from ``init.pt`` if the run has them, else made."""
    path = run_dir / "init.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    torch.manual_seed(cfg.seed)
    state = build_model(cfg.model, splits.input_shape, len(splits.class_names)).state_dict()
    atomic_torch_save(state, path)
    return state


def _progress_factory(position: int, arm: str, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm.auto import tqdm

    def make(epoch: int, steps: int):  # type: ignore[no-untyped-def]
        return tqdm(
            total=steps,
            desc=f"{arm:>6} epoch {epoch + 1}",
            position=position,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    return make


def _train_one(
    cfg: CompareConfig,
    splits: Splits,
    run_dir: str,
    arm: str,
    position: int,
    threads: int,
    resume: bool,
    progress: bool,
    dist: DistContext = SINGLE,
) -> ArmResult:
    torch.set_num_threads(threads)
    state = initial_weights(cfg, splits, Path(run_dir))
    model = build_model(cfg.model, splits.input_shape, len(splits.class_names))
    model.load_state_dict(state)
    model.to(cfg.device)
    val = tuple(t.to(cfg.device) for t in splits.val)
    test = tuple(t.to(cfg.device) for t in splits.test)
    return train_arm(
        arm,
        model,
        make_loader(cfg, splits, arm, dist),
        val=val,
        test=test,
        epochs=cfg.epochs,  # type: ignore[arg-type]
        out_dir=Path(run_dir) / arm,
        optim=OptimConfig(),
        resume=resume,
        channels_last=cfg.channels_last,
        progress=_progress_factory(position, arm, progress and dist.is_main),
        dist=dist,
        precision=cfg.precision,
    )


def write_preview(cfg: CompareConfig, splits: Splits, path: Path) -> Path:
    """Nine images of the first mixed training batch with their soft labels."""
    from vicinal.experiments.plots import preview_grid

    loader = make_loader(replace(cfg, channels_last=False, device="cpu"), splits, "mixup")
    x, y = next(iter(loader.epoch(0)))
    title = f"{cfg.method}, alpha={cfg.alpha}, {cfg.granularity} lambda, pairing={cfg.pairing}"
    return preview_grid(x[:9].numpy(), y[:9].numpy(), splits.class_names, path, title=title)


def summary_table(results: list[ArmResult]) -> str:
    lines = [
        "| arm | test accuracy | test loss | best val accuracy (epoch) | wall time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {100 * r.test_acc:.2f}% | {r.test_loss:.4f} | "
            f"{100 * r.best_val_acc:.2f}% ({r.best_epoch + 1}) | {r.wall_s:.1f} s |"
        )
    return "\n".join(lines)


def run_compare(
    cfg: CompareConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    splits: Splits | None = None,
) -> list[ArmResult]:
    """Run (or resume) the comparison into ``run_dir``; returns one result per arm.

    Under ``torchrun`` (WORLD_SIZE > 1) every arm trains with DistributedDataParallel
    across the ranks, one arm after the other, and only rank 0 writes files.
    """
    cfg.validate()
    dist = init_from_env(cfg.device, cfg.dist_timeout_s) if launched_by_torchrun() else SINGLE
    run = Path(run_dir)
    cfg_path = run / "config.json"
    if resume and cfg_path.exists():
        saved = CompareConfig.from_json(json.loads(cfg_path.read_text()))
        if replace(saved, parallel=cfg.parallel, threads=cfg.threads) != cfg:
            raise ValueError(f"--resume: {cfg_path} holds a different configuration; resume with the same options")
    elif cfg_path.exists() and not resume:
        raise FileExistsError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    barrier(dist)  # every rank has checked the folder before rank 0 writes into it
    if splits is None:
        splits = make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_path, asdict(cfg))
        initial_weights(cfg, splits, run)
    barrier(dist)

    t0 = time.perf_counter()
    total_threads = cfg.threads or torch.get_num_threads()
    parallel = (
        cfg.parallel and not dist.enabled and len(cfg.arms) > 1 and cfg.device == "cpu" and (os.cpu_count() or 1) > 1
    )
    if parallel:
        per_arm = max(1, total_threads // len(cfg.arms))
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=len(cfg.arms), mp_context=ctx) as pool:
            futures = [
                pool.submit(_train_one, cfg, splits, str(run), arm, i, per_arm, resume, progress)
                for i, arm in enumerate(cfg.arms)
            ]
            results = [f.result() for f in futures]
    else:
        results = [_train_one(cfg, splits, str(run), arm, 0, total_threads, resume, progress, dist) for arm in cfg.arms]
    wall = time.perf_counter() - t0
    if not dist.is_main:
        return results

    from vicinal.experiments.plots import learning_curves

    if "mixup" in cfg.arms:
        write_preview(cfg, splits, run / "preview.png")
    learning_curves({r.name: r.history for r in results}, run / "curves.png")
    table = summary_table(results)
    mode = (
        f"DDP over {dist.world_size} processes, mix policy {cfg.mix_policy}"
        if dist.enabled
        else "arms in parallel"
        if parallel
        else "arms one after another"
    )
    summary = [
        f"# vicinal compare: {cfg.dataset}, {cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}",
        "",
        table,
        "",
        f"Total wall time: {wall:.1f} s ({mode}).",
        f"Mixed arm: {cfg.method}, alpha={cfg.alpha}, {cfg.granularity} lambda, pairing={cfg.pairing}"
        + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else "")
        + ".",
        f"Training images: {len(splits.train[1])}, validation: {len(splits.val[1])}, test: {len(splits.test[1])}; "
        f"seed {cfg.seed}.",
        "",
        "A single seed: differences of about a point are within seed-to-seed noise on Fashion-MNIST.",
        "",
        "![preview](preview.png)" if "mixup" in cfg.arms else "",
        "![curves](curves.png)",
        "",
    ]
    atomic_write_bytes(run / "summary.md", "\n".join(summary).encode())
    atomic_write_json(
        run / "results.json",
        {"wall_s": wall, "parallel": parallel, "world_size": dist.world_size, "arms": [asdict(r) for r in results]},
    )
    return results
