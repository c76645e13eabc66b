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
CNN is too small to spread over several threads. On a GPU (``device="cuda"``) the arms'
processes share the device: a step of the reference CNN is bound by the host's kernel
launches, not by the GPU, so two processes launching at once overlap (not measured yet:
``benchmarks/gpu_compare.py`` times both modes; ``--sequential`` keeps one). Each arm
keeps its data on the device as ``uint8`` and makes its batches there
(:class:`~vicinal.experiments.loader.EpochPlan`); see ``docs/gpu.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vicinal._checks import check_choice, check_int, check_probability
from vicinal.experiments.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_json, load_tensors
from vicinal.experiments.data import ArrayDataset, available_datasets, load_dataset, load_image_folder, load_npz
from vicinal.experiments.distributed import (
    SINGLE,
    DistContext,
    barrier,
    collective_errors,
    init_from_env,
    launched_by_torchrun,
)
from vicinal.experiments.loader import InMemoryLoader, check_data_fits
from vicinal.experiments.models import available_models, build_model
from vicinal.experiments.spec import (
    JSD_WEIGHT,
    METHOD_DEFAULTS,
    MIX_OPTIONS,
    MIX_POLICIES,
    PRECISIONS,
    check_seed,
    resolve_mixing,
)
from vicinal.experiments.runs.processes import epoch_hook, stop_on_signals, worker_pool
from vicinal.experiments.training.single import ArmResult, OptimConfig, train_arm
from vicinal.sampling import MixConfig

if TYPE_CHECKING:
    from typing_extensions import Self

    from vicinal.augmix import AugMixConfig

ARMS = ("mixup", "none")


@dataclass(frozen=True)
class RunSpec:
    """What a comparison run and a study cell share: data, model, length, mixing.

    The mixing options (``alpha`` ... ``pairing``) are ``None`` for "the method's
    default"; :meth:`resolved` fills them in from
    :data:`~vicinal.experiments.spec.METHOD_DEFAULTS` and sets the ones the method
    doesn't use to ``None``. Runs record their resolved spec.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "reference-cnn"
    epochs: int = 10
    batch_size: int = 64
    method: str = "mixup"
    alpha: float | None = None
    cutmix_alpha: float | None = None
    switch_prob: float | None = None
    k: int | None = None
    granularity: str | None = None
    pairing: str | None = None
    mix_layers: tuple[str, ...] | None = None
    augmix: bool = False
    jsd: bool = False
    label_smoothing: float = 0.0
    val_size: int = 2000
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    channels_last: bool = True

    def resolved(self, *, inherited: frozenset[str] = frozenset()) -> Self:
        """This spec with the method's mixing defaults applied (see :func:`resolve_mixing`)."""
        values = {name: getattr(self, name) for name in MIX_OPTIONS}
        return replace(self, **resolve_mixing(self.method, values, inherited=inherited))

    def check_common(self) -> None:
        """Checks shared by every run: ranges of the data, length and seed options."""
        check_seed("seed", self.seed)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        # 0 would leave no validation set: "best epoch" and early stopping need one.
        check_int("val_size", self.val_size, minimum=1)
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_probability("label_smoothing", self.label_smoothing)
        check_choice("model", self.model, available_models())
        self.check_augmentation()

    def mixing(self) -> MixConfig | None:
        """The :class:`MixConfig` of the resolved spec (validated); None for ``method="none"``.

        For ``method="manifold"`` this is the MixUp applied at the chosen layer."""
        spec = self.resolved()
        if spec.method in ("none", "augmix"):
            return None
        params = {name: getattr(spec, name) for name in METHOD_DEFAULTS[spec.method] if name != "mix_layers"}
        return MixConfig("mixup" if spec.method == "manifold" else spec.method, **params)  # type: ignore[arg-type]

    def augmix_config(self) -> AugMixConfig | None:
        """AugMix per image (``method="augmix"``, or ``augmix`` on top of a mixing method)."""
        if self.method != "augmix" and not self.augmix:
            return None
        from vicinal.augmix import AugMixConfig

        return AugMixConfig()

    def check_augmentation(self) -> None:
        """AugMix needs kornia; JSD needs AugMix and no mixing of the inputs."""
        if self.augmix_config() is not None and importlib.util.find_spec("kornia") is None:
            raise ValueError("AugMix needs kornia: pip install 'vicinal[augmix]'")
        if self.jsd and (self.augmix_config() is None or self.loader_mixing() is not None):
            raise ValueError(
                "jsd needs AugMix without input mixing (method='augmix'): its views are clean, AugMix 1 and AugMix 2"
            )

    def loader_mixing(self) -> MixConfig | None:
        """What the data loader mixes: nothing for "none" and "manifold" (mixed in the model)."""
        return None if self.method == "manifold" else self.mixing()

    def manifold(self) -> tuple[MixConfig, tuple[str, ...]] | None:
        """``(config, layers)`` for ``method="manifold"``, else None."""
        if self.method != "manifold":
            return None
        spec = self.resolved()
        return spec.mixing(), spec.mix_layers  # type: ignore[return-value]

    def describe_mixing(self) -> str:
        """One line naming the method and the options it uses, e.g. ``cutmix, cutmix_alpha=1``."""
        spec = self.resolved()
        words = [spec.method] + [f"{n}={getattr(spec, n)}" for n in METHOD_DEFAULTS[spec.method]]
        if spec.method == "none":
            words = ["no mixing"]
        if spec.augmix and spec.method != "augmix":
            words.append("AugMix")
        if spec.jsd:
            words.append(f"JSD x{JSD_WEIGHT:g}")
        return ", ".join(words)


@dataclass(frozen=True)
class CompareConfig(RunSpec):
    """Everything that defines a comparison run (saved, resolved, as ``config.json``)."""

    device: str = "cpu"
    threads: int | None = None
    parallel: bool = True
    arms: tuple[str, ...] = ARMS
    mix_policy: str = "independent"
    dist_timeout_s: float = 300.0
    precision: str = "fp32"

    def mix_config(self) -> MixConfig:
        """The mixing of the mixed arm (validated)."""
        config = self.mixing()
        if config is None:
            raise ValueError(f"method={self.method!r} mixes no images: it has no MixConfig")
        return config

    def validate(self) -> CompareConfig:
        """Check every option (before anything is loaded or written); returns the resolved config."""
        self.check_common()
        if self.threads is not None:
            check_int("threads", self.threads, minimum=1)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was asked for but torch sees no CUDA device")
        check_choice("mix_policy", self.mix_policy, MIX_POLICIES)
        check_choice("precision", self.precision, PRECISIONS)
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {self.arms}")
        resolved = self.resolved()
        if resolved.method == "none":
            raise ValueError("vicinal compare needs a method for its treated arm, got method='none'")
        resolved.mixing()
        return resolved

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
    rule: str = "first images (the keras.io reference's split)"
    source: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])  # type: ignore[return-value]


def load_any(dataset: str, data_dir: str | None) -> ArrayDataset:
    """A registered dataset by name, or your own: a ``.npz`` file or a class-folder tree.

    A relative path that doesn't exist is also looked for in ``data_dir``, so a preset
    naming ``breast-cancer.npz`` runs from anywhere with ``--data-dir``.
    """
    if dataset in available_datasets():
        return load_dataset(dataset, data_dir)
    path = Path(dataset)
    if not path.exists() and not path.is_absolute() and data_dir is not None:
        path = Path(data_dir) / path
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise ValueError(
        f"dataset must be one of {list(available_datasets())}, a .npz file or a folder of class folders; "
        f"got {dataset!r}"
    )


#: Datasets split as the keras.io reference splits Fashion-MNIST: the *first* images.
FIRST_IMAGES_DATASETS = frozenset({"fashion-mnist", "mnist"})
SPLIT_SEED = 0


def stratified_order(labels: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """A seeded shuffle of ``range(len(labels))`` in which every prefix is stratified.

    Each sample is ranked by its position within its own class (in a random order of
    that class) divided by the class's size, so that any prefix of the order holds the
    classes in (nearly) their overall proportions: taking the first ``val_size`` for
    validation and the next ``train_limit`` for training leaves no class out.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    y = labels[perm]
    quantile = np.empty(len(labels))
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        quantile[where] = (np.arange(where.size) + rng.random()) / where.size
    return perm[np.argsort(quantile, kind="stable")]


def make_splits(ds: ArrayDataset, cfg: RunSpec) -> Splits:
    """Validation, training and test splits.

    For the reference datasets (:data:`FIRST_IMAGES_DATASETS`) the first ``val_size``
    training images are the validation set and ``train_limit`` takes the first of the
    rest, as in the keras.io example. Any other dataset (an image folder or ``.npz``,
    often sorted by class) is first put in a seeded stratified order
    (:func:`stratified_order`), so that neither split lacks a class. ``Splits.rule``
    records which rule was used.
    """
    n = len(ds.y_train)
    if cfg.val_size >= n:
        raise ValueError(f"val_size={cfg.val_size} leaves no training images (the training set has {n})")
    x_all, y_all = ds.x_train, ds.y_train
    rule = "first images (the keras.io reference's split)"
    if cfg.dataset not in FIRST_IMAGES_DATASETS:
        order = stratified_order(np.asarray(y_all))
        x_all, y_all = x_all[order], y_all[order]
        rule = f"stratified shuffle (seed {SPLIT_SEED})"
    xv, yv = x_all[: cfg.val_size], y_all[: cfg.val_size]
    xt, yt = x_all[cfg.val_size :], y_all[cfg.val_size :]
    if cfg.train_limit is not None:
        xt, yt = xt[: cfg.train_limit], yt[: cfg.train_limit]
    xs, ys = ds.x_test, ds.y_test
    if cfg.test_limit is not None:
        xs, ys = xs[: cfg.test_limit], ys[: cfg.test_limit]
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    source = str(ds.source)
    if ds.name in available_datasets():
        source += " (the SHA-256 of every file matched the published checksums)"
    train, val, test = (as_t(xt), as_t(yt)), (as_t(xv), as_t(yv)), (as_t(xs), as_t(ys))
    return Splits(train, val, test, tuple(ds.class_names), rule, source)


def config_differences(saved: dict[str, Any], current: dict[str, Any], *, ignore: Collection[str] = ()) -> list[str]:
    """``"name: saved -> current"`` for each option that differs, paths compared normalised."""

    def norm(name: str, value: Any) -> Any:
        if name == "data_dir" and value is not None:
            return os.path.normpath(os.path.abspath(os.path.expanduser(str(value))))
        return list(value) if isinstance(value, tuple) else value

    names = (set(saved) | set(current)) - set(ignore)
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(names)
        if norm(name, saved.get(name)) != norm(name, current.get(name))
    ]


def make_loader(cfg: CompareConfig, splits: Splits, arm: str, dist: DistContext = SINGLE) -> InMemoryLoader:
    return InMemoryLoader(
        *splits.train,
        num_classes=len(splits.class_names),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        mix=cfg.loader_mixing() if arm == "mixup" else None,
        augmix=cfg.augmix_config() if arm == "mixup" else None,
        jsd=cfg.jsd and arm == "mixup",
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
        return load_tensors(path)
    torch.manual_seed(cfg.seed)
    state = build_model(cfg.model, splits.input_shape, len(splits.class_names)).state_dict()
    atomic_torch_save(state, path)
    return state


def _progress_factory(position: int, arm: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    def make(epoch: int, steps: int):
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
    val = (splits.val[0].to(cfg.device), splits.val[1].to(cfg.device))
    test = (splits.test[0].to(cfg.device), splits.test[1].to(cfg.device))
    # A dead rank fails DDP's gradient all-reduce inside backward(): one line, not gloo's traceback.
    with collective_errors(dist, f"training arm {arm!r}"):
        return train_arm(
            arm,
            model,
            make_loader(cfg, splits, arm, dist),
            val=val,
            test=test,
            epochs=cfg.epochs,
            out_dir=Path(run_dir) / arm,
            optim=OptimConfig(),
            resume=resume,
            channels_last=cfg.channels_last,
            progress=_progress_factory(position, arm, progress and dist.is_main),
            on_epoch=epoch_hook(arm),
            dist=dist,
            precision=cfg.precision,
            manifold=cfg.manifold() if arm == "mixup" else None,
            jsd_weight=JSD_WEIGHT if cfg.jsd and arm == "mixup" else 0.0,
        )


def write_preview(cfg: CompareConfig, splits: Splits, path: Path) -> Path:
    """Nine images of the first mixed training batch with their soft labels."""
    from vicinal.experiments.report.plots import preview_grid

    loader = make_loader(replace(cfg, channels_last=False, device="cpu"), splits, "mixup")
    x, y = next(iter(loader.epoch(0)))
    title = cfg.describe_mixing()
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
    cfg = cfg.validate()
    dist = init_from_env(cfg.device, cfg.dist_timeout_s) if launched_by_torchrun() else SINGLE
    run = Path(run_dir)
    cfg_path = run / "config.json"
    if resume and cfg_path.exists():
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--resume: {cfg_path} is not a readable config ({exc}); start a new run") from exc
        diffs = config_differences(saved, asdict(cfg), ignore=("parallel", "threads"))
        if diffs:
            raise ValueError(
                f"--resume: {cfg_path} was written with other options; resume with the same ones. "
                f"Differences (saved -> now): {'; '.join(diffs)}"
            )
    elif cfg_path.exists() and not resume:
        raise FileExistsError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    barrier(dist)  # every rank has checked the folder before rank 0 writes into it
    if splits is None:
        splits = make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    check_data_fits(splits.train[0], model=cfg.model, mix=cfg.loader_mixing())
    manifold = cfg.manifold()
    if manifold is not None:  # the layer names are the model's: check them before writing anything
        from vicinal.manifold import ManifoldMixup

        ManifoldMixup(build_model(cfg.model, splits.input_shape, len(splits.class_names)), manifold[1], manifold[0])
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_path, asdict(cfg))
        initial_weights(cfg, splits, run)
    barrier(dist)

    t0 = time.perf_counter()
    total_threads = cfg.threads or torch.get_num_threads()
    # On CUDA too: each worker process makes its own CUDA context (spawned, not forked).
    parallel = cfg.parallel and not dist.enabled and len(cfg.arms) > 1 and (os.cpu_count() or 1) > 1
    # SIGINT/SIGTERM stop every worker (they also die with this process, even on kill -9)
    # and leave the run resumable: checkpoints are atomic.
    hint = f"resume with --resume --out {run}"
    with stop_on_signals(hint):
        if parallel:
            per_arm = max(1, total_threads // len(cfg.arms))
            with worker_pool(len(cfg.arms), hint=hint) as pool:
                futures = [
                    pool.submit(_train_one, cfg, splits, str(run), arm, i, per_arm, resume, progress)
                    for i, arm in enumerate(cfg.arms)
                ]
                results = [f.result() for f in futures]
        else:
            results = [
                _train_one(cfg, splits, str(run), arm, 0, total_threads, resume, progress, dist) for arm in cfg.arms
            ]
    wall = time.perf_counter() - t0
    if not dist.is_main:
        return results

    from vicinal.experiments.report.plots import learning_curves

    if "mixup" in cfg.arms and cfg.loader_mixing() is not None:
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
        f"Mixed arm: {cfg.describe_mixing()}"
        + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else "")
        + ".",
        f"Training images: {len(splits.train[1])}, validation: {len(splits.val[1])}, test: {len(splits.test[1])} "
        f"(split: {splits.rule}); seed {cfg.seed}.",
        f"Data: {splits.source}.",
        "",
        "A single seed: differences of about a point are within seed-to-seed noise on Fashion-MNIST.",
        "",
        "![preview](preview.png)" if "mixup" in cfg.arms and cfg.loader_mixing() is not None else "",
        "![curves](curves.png)",
        "",
    ]
    atomic_write_bytes(run / "summary.md", "\n".join(summary).encode())
    atomic_write_json(
        run / "results.json",
        {
            "wall_s": wall,
            "parallel": parallel,
            "world_size": dist.world_size,
            "split_rule": splits.rule,
            "data_source": splits.source,
            "arms": [asdict(r) for r in results],
        },
    )
    return results
