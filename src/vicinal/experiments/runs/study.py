"""Studies: a grid of arms × seeds, each cell one training run, resumable and parallel.

A study is described in TOML (a file of your own, or a preset shipped in
``vicinal/presets/``)::

    name = "alpha"
    seeds = 3                       # or a list: [0, 1, 2]
    [defaults]                      # CellSpec fields shared by every arm
    epochs = 10
    pairing = "stream"
    [[arms]]                        # explicit arms; "method" = "none" trains on plain batches
    name = "none"
    method = "none"
    [[arms]]
    name = "mixup"
    method = "mixup"
    [grid]                          # optional: every arm with a "grid" key set to true is
    alpha = [0.1, 0.2, 0.4]         # expanded over the cartesian product of these values

Every cell trains with :func:`vicinal.experiments.training.single.train_arm` into ``<study>/cells/<arm>/seed<k>/``.
Running a study again skips finished cells (``result.json``) and resumes interrupted
ones from their checkpoint, so a killed study loses no finished work. All arms of one
seed start from the same initial weights (``<study>/init/``) and see the same data
order, which makes per-seed differences paired.

Any number of processes may run one study folder at once (one machine, or several
sharing a file system: a Slurm job array with ``--shard I/N``, a Kubernetes indexed
job): a process trains a cell only while it holds the cell's OS file lock, so no cell
is trained twice, and a dead process's lock is released by the OS (see :func:`run_study`).

``run_study(..., batch_seeds=True)`` (``vicinal study --batch-seeds``) trains the cells
of each arm that differ only by seed together, in one process, as one batched model
(:mod:`vicinal.experiments.training.batched`); each cell's folder ends up as a cell trained alone
leaves it, up to float rounding.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from filelock import FileLock, Timeout

from vicinal._checks import check_choice
from vicinal.experiments.runs.compare import RunSpec
from vicinal.experiments.spec import JSD_WEIGHT, SCHEDULES
from vicinal.experiments.presets import PRESETS
from vicinal.experiments.runs.processes import epoch_hook, stop_on_signals, worker_pool
from vicinal.sampling import MixConfig

if TYPE_CHECKING:
    from vicinal.experiments.loader import InMemoryLoader

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class CellSpec(RunSpec):
    """Everything one training run of a study depends on (``method="none"``: no mixing)."""

    arm: str = "mixup"
    noise: float = 0.0
    lr: float = 1e-3
    schedule: str = "constant"
    corruptions: bool = False  # also evaluate on the corrupted test set (vicinal.experiments.corruptions)
    baseline: str | None = None  # arm(s) this one is compared with, comma-separated (default: chosen in the report)

    def mix_config(self) -> MixConfig | None:
        """The arm's mixing, or None for ``method="none"``."""
        return self.mixing()

    def validate(self, *, inherited: frozenset[str] = frozenset()) -> CellSpec:
        """Check every field; returns the resolved spec (see :meth:`RunSpec.resolved`)."""
        if not self.arm or "/" in self.arm or self.arm.startswith("."):
            raise ValueError(f"arm must be a plain folder name, got {self.arm!r}")
        resolved = self.resolved(inherited=inherited)
        resolved.check_common()
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_choice("schedule", self.schedule, SCHEDULES)
        resolved.mixing()
        return resolved


@dataclass(frozen=True)
class StudySpec:
    name: str
    seeds: tuple[int, ...]
    arms: tuple[CellSpec, ...]  # one per arm, seed unset
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[CellSpec]:
        return [replace(arm, seed=s) for s in self.seeds for arm in self.arms]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_study(text: str, *, overrides: dict[str, Any] | None = None, seeds: int | None = None) -> StudySpec:
    """A :class:`StudySpec` from TOML text; ``overrides`` replace CellSpec fields in every arm."""
    data = tomllib.loads(text)
    known = {f.name for f in fields(CellSpec)} - {"seed"}
    unknown_top = set(data) - {"name", "description", "seeds", "defaults", "arms", "grid"}
    if unknown_top:
        raise ValueError(f"study: unknown top-level keys {sorted(unknown_top)}")
    defaults = data.get("defaults", {})
    bad = set(defaults) - known
    if bad:
        raise ValueError(f"study [defaults]: unknown keys {sorted(bad)}; expected some of {sorted(known)}")
    raw_seeds = data.get("seeds", 3) if seeds is None else seeds
    seed_list = tuple(range(raw_seeds)) if isinstance(raw_seeds, int) else tuple(int(s) for s in raw_seeds)
    if not seed_list:
        raise ValueError("study: seeds must name at least one seed")
    grid = data.get("grid", {})
    bad = set(grid) - known
    if bad:
        raise ValueError(f"study [grid]: unknown keys {sorted(bad)}")
    arms: list[CellSpec] = []
    for entry in data.get("arms", []) or [{}]:
        entry = dict(entry)
        expand = entry.pop("grid", False)
        name = entry.pop("name", None) or entry.get("method", "arm")
        bad = set(entry) - known
        if bad:
            raise ValueError(f"study arm {name!r}: unknown keys {sorted(bad)}")
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if expand and grid else [{}]
        for combo in combos:
            arm_name = name + "".join(f"-{k}{_fmt(v)}" for k, v in combo.items())
            own = {**entry, **combo, "arm": arm_name, **(overrides or {})}
            values = {**defaults, **own}
            # Mixing options from [defaults] that an arm's method doesn't use are dropped;
            # the same option set on the arm itself is an error.
            arms.append(CellSpec(**values).validate(inherited=frozenset(defaults) - set(own)))
    names = [a.arm for a in arms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"study: arm names must be unique, repeated: {sorted(dupes)}")
    return StudySpec(
        name=data.get("name", "study"),
        seeds=seed_list,
        arms=tuple(arms),
        description=data.get("description", ""),
        overrides=dict(overrides or {}),
    )


def load_study(preset_or_path: str, *, overrides: dict[str, Any] | None = None, seeds: int | None = None) -> StudySpec:
    """A preset name (see :data:`PRESETS`) or the path of a TOML file."""
    if preset_or_path in PRESETS:
        text = resources.files("vicinal.experiments.presets").joinpath(f"{preset_or_path}.toml").read_text()
    else:
        path = Path(preset_or_path)
        if not path.is_file():
            raise ValueError(f"study must be one of {list(PRESETS)} or a TOML file, got {preset_or_path!r}")
        text = path.read_text()
    return parse_study(text, overrides=overrides, seeds=seeds)


# --------------------------------------------------------------------------- running

_DATA_CACHE: dict[tuple[Any, ...], Any] = {}


def _splits_for(cell: CellSpec):
    from vicinal.experiments.runs.compare import CompareConfig, load_any, make_splits

    key = (cell.dataset, cell.data_dir, cell.val_size, cell.train_limit, cell.test_limit)
    if key not in _DATA_CACHE:
        cfg = CompareConfig(
            dataset=cell.dataset,
            data_dir=cell.data_dir,
            val_size=cell.val_size,
            train_limit=cell.train_limit,
            test_limit=cell.test_limit,
        )
        _DATA_CACHE[key] = make_splits(load_any(cell.dataset, cell.data_dir), cfg)
    return _DATA_CACHE[key]


def cell_dir(study_dir: Path, cell: CellSpec) -> Path:
    return study_dir / "cells" / cell.arm / f"seed{cell.seed}"


def init_path(study_dir: Path, cell: CellSpec) -> Path:
    return study_dir / "init" / f"{cell.model}-seed{cell.seed}.pt"


def _corruption_metrics(study_dir: Path, cell: CellSpec, splits: Any) -> Callable[[torch.nn.Module], dict[str, Any]]:
    """Accuracy and ECE on every (corruption, severity) copy of the test set.

    The copies are made once per study (``<study>/corruptions/``, checksummed, shared
    by every cell under a file lock) with corruption seed 0, so every arm and seed is
    evaluated on the same images and their errors pair.
    """

    def measure(model: torch.nn.Module) -> dict[str, Any]:
        from vicinal.experiments.corruptions import CORRUPTIONS, SEVERITIES, corrupted_test_set
        from vicinal.experiments.metrics import predict_probs, reliability

        images, labels = splits.test
        name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(cell.dataset).name).lstrip("-._") + "-test"
        out: dict[str, Any] = {}
        for corruption in CORRUPTIONS:
            copies = corrupted_test_set(images.numpy(), study_dir / "corruptions", name=name, corruptions=(corruption,))
            accs, eces = [], []
            for severity in SEVERITIES:
                device = next(model.parameters()).device
                probs = predict_probs(
                    model, torch.from_numpy(copies[(corruption, severity)]).to(device), channels_last=cell.channels_last
                ).cpu()
                accs.append(float((probs.argmax(1) == labels).double().mean()))
                eces.append(float(reliability(probs, labels)["ece"]))
            out[corruption] = {"acc": accs, "ece": eces}
        return {"corruptions": out}

    return measure


def _ensure_init(study_dir: Path, cell: CellSpec) -> None:
    from vicinal.experiments.atomic import atomic_torch_save
    from vicinal.experiments.loader import check_data_fits
    from vicinal.experiments.models import build_model

    splits = _splits_for(cell)
    # Checked for every cell before any trains: the data fits the model and the mixing,
    # and a manifold arm's layers are modules of the model.
    check_data_fits(splits.train[0], model=cell.model, mix=cell.loader_mixing())
    manifold = cell.manifold()
    if manifold is not None:
        from vicinal.manifold import ManifoldMixup

        ManifoldMixup(build_model(cell.model, splits.input_shape, len(splits.class_names)), manifold[1], manifold[0])
    path = init_path(study_dir, cell)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cell.seed)
    atomic_torch_save(build_model(cell.model, splits.input_shape, len(splits.class_names)).state_dict(), path)


# Claims: any number of `vicinal study` processes (one machine, or several sharing the
# folder) may run one study. A process trains a cell only while it holds the cell's
# OS file lock; the OS releases the lock when the process ends, however it ends.
CLAIM_LOCK = "claim.lock"
CLAIMS_LOG = "claims.jsonl"
STUDY_LOCK = "study.lock"


def study_lock(study_dir: str | os.PathLike) -> FileLock:
    """The study's lock (``<study>/study.lock``), held while ``study.json``, the initial
    weights or the report are written, so concurrent processes never interleave them."""
    return FileLock(Path(study_dir) / STUDY_LOCK)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) as ``(I, N)``, checked: ``0 <= I < N``; None is ``(0, 1)``."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if match is None:
            raise ValueError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. --shard 0/4), got {shard!r}")
        index, count = int(match[1]), int(match[2])
    else:
        index, count = shard
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. --shard 0/4), got {index}/{count}")
    return index, count


def shard_cells(cells: list[CellSpec], shard: str | tuple[int, int] | None) -> list[CellSpec]:
    """The cells ``i`` (positions in ``cells``) with ``i % N == I``."""
    index, count = parse_shard(shard)
    return [cell for i, cell in enumerate(cells) if i % count == index]


def default_threads(jobs: int) -> int:
    """CPU threads per cell: the cores shared among ``jobs`` processes (torch's default for one)."""
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else torch.get_num_threads()


def _log_claim(out: Path, resumed: bool) -> None:
    """Append who trains the cell (under its lock) to ``claims.jsonl``."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "resume": resumed}
    with open(out / CLAIMS_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_cell(
    study_dir: str, cell: CellSpec, threads: int, wait: bool = True, device: str = "cpu"
) -> dict[str, Any] | None:
    """Train (or resume, or just read) one cell on ``device``; returns its result record.

    The cell is claimed first: its lock (``<cell>/claim.lock``) is held while it trains,
    and each claim is logged in ``<cell>/claims.jsonl``. A cell another live process
    holds is waited for (``wait=True``: its result is then read, or, if that process
    died, the cell is resumed from its checkpoint) or skipped (``wait=False``: returns None).
    """
    from vicinal.experiments.atomic import read_json
    from vicinal.experiments.training.single import CHECKPOINT, RESULT

    torch.set_num_threads(threads)
    root = Path(study_dir)
    out = cell_dir(root, cell)
    if (out / RESULT).exists():
        return read_json(out / RESULT)
    out.mkdir(parents=True, exist_ok=True)
    try:
        claim = FileLock(out / CLAIM_LOCK).acquire(timeout=-1 if wait else 0)
    except Timeout:
        return None  # another live process trains this cell
    with claim:
        if (out / RESULT).exists():  # finished by the process that held it
            return read_json(out / RESULT)
        _log_claim(out, resumed=(out / CHECKPOINT).exists())
        return train_claimed_cell(root, cell, device)


def cell_loader(cell: CellSpec, splits: Any, device: str = "cpu") -> InMemoryLoader:
    """The training batches of ``cell``: its seed's order and plans, its label noise,
    made on ``device`` (where the loader keeps the training images)."""
    from vicinal.experiments.loader import InMemoryLoader
    from vicinal.experiments.noise import symmetric_label_noise

    x_train, y_train = splits.train
    num_classes = len(splits.class_names)
    if cell.noise > 0:
        y_train = torch.from_numpy(symmetric_label_noise(y_train.numpy(), cell.noise, num_classes, seed=cell.seed))
    return InMemoryLoader(
        x_train,
        y_train,
        num_classes=num_classes,
        batch_size=cell.batch_size,
        seed=cell.seed,
        mix=cell.loader_mixing(),
        augmix=cell.augmix_config(),
        jsd=cell.jsd,
        label_smoothing=cell.label_smoothing,
        channels_last=cell.channels_last,
        device=device,
    )


def cell_train_options(root: Path, cell: CellSpec, splits: Any, device: str = "cpu") -> dict[str, Any]:
    """The keyword arguments :func:`run_cell` gives :func:`~vicinal.experiments.training.single.train_arm`
    (validation and test sets on ``device``)."""
    from vicinal.experiments.training.single import OptimConfig

    return {
        "val": tuple(t.to(device) for t in splits.val),
        "test": tuple(t.to(device) for t in splits.test),
        "epochs": cell.epochs,
        "out_dir": cell_dir(root, cell),
        "optim": OptimConfig(lr=cell.lr, schedule=cell.schedule),
        "resume": True,
        "channels_last": cell.channels_last,
        "on_epoch": epoch_hook(cell.arm),
        "track_test": True,
        "full_metrics": True,
        "manifold": cell.manifold(),
        "jsd_weight": JSD_WEIGHT if cell.jsd else 0.0,
        "extra_metrics": _corruption_metrics(root, cell, splits) if cell.corruptions else None,
    }


def write_cell_record(root: Path, cell: CellSpec, splits: Any, **extra: Any) -> None:
    """``<cell>/cell.json``: what ran and on which data (the folder found, checksums verified, and the split rule)."""
    from vicinal.experiments.atomic import atomic_write_json

    record = {**asdict(cell), "data_source": splits.source, "split_rule": splits.rule, **extra}
    atomic_write_json(cell_dir(root, cell) / "cell.json", record)


def train_claimed_cell(root: Path, cell: CellSpec, device: str = "cpu") -> dict[str, Any]:
    """Train (or resume) ``cell`` on its own, on ``device``; the caller holds the cell's claim."""
    from vicinal.experiments.atomic import load_tensors
    from vicinal.experiments.models import build_model
    from vicinal.experiments.training.single import train_arm

    splits = _splits_for(cell)
    write_cell_record(root, cell, splits)
    loader = cell_loader(cell, splits, device)
    model = build_model(cell.model, splits.input_shape, len(splits.class_names))
    model.load_state_dict(load_tensors(init_path(root, cell)))
    model.to(device)
    result = train_arm(cell.arm, model, loader, **cell_train_options(root, cell, splits, device))
    return asdict(result)


def _record(spec: StudySpec) -> dict[str, Any]:
    """study.json's content, as it reads back from JSON (tuples become lists), so that a
    saved study compares equal to the same spec parsed again."""
    arms: list[dict[str, Any]] = json.loads(json.dumps([asdict(a) for a in spec.arms]))
    return {"name": spec.name, "description": spec.description, "seeds": list(spec.seeds), "arms": arms}


def check_device(device: str) -> str:
    """``device`` if it names a usable device: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` with CUDA present."""
    if device != "cpu" and device != "cuda" and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"device (--device) must be 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but PyTorch sees no CUDA GPU here; use --device cpu")
    return device


def run_study(
    spec: StudySpec,
    study_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    progress: bool = True,
    shard: str | tuple[int, int] | None = None,
    threads: int | None = None,
    batch_seeds: bool = False,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Run every unfinished cell of ``spec`` (of its ``shard``) with ``jobs`` worker processes.

    Any number of processes may run one study folder at the same time, on one machine
    or on several sharing a file system: each cell is trained by one process only (see
    :func:`run_cell`). A process first trains the cells nobody holds, then waits for
    those other processes hold, so it returns once every cell of its shard is finished.

    Args:
        shard: ``"I/N"`` trains only the cells ``i`` with ``i % N == I`` (positions in
            ``spec.cells()``): the part of a scheduler's task ``I`` of ``N``.
        threads: CPU threads per cell (default: :func:`default_threads`), or per
            group of seeds with ``batch_seeds``.
        batch_seeds: train the cells of each arm that differ only by seed together, in
            one process, as one batched model (:mod:`vicinal.experiments.training.batched`); each
            cell's folder ends up as if it had trained alone. Refused (ValueError, before
            anything is written) for arms it can't train that way.
        device: where each cell trains (``"cpu"``, ``"cuda"``, ``"cuda:N"``); not part
            of a cell's identity, so a study may be resumed on another device.

    Returns:
        The result records of the shard's cells, in ``spec.cells()`` order.
    """
    from vicinal.experiments.atomic import atomic_write_json, read_json
    from vicinal.experiments.training.single import RESULT

    if jobs < 1:
        raise ValueError(f"jobs (--jobs) must be >= 1, got {jobs}")
    cells = shard_cells(spec.cells(), shard)
    if batch_seeds and device != "cpu":
        raise ValueError(f"--batch-seeds trains on the CPU only; got device={device!r}")
    check_device(device)
    if batch_seeds:
        from vicinal.experiments.training.batched import check_batch_seeds

        check_batch_seeds(cells)
    root = Path(study_dir)
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "study.json"
    record = _record(spec)
    with study_lock(root):
        if saved.exists():
            old = read_json(saved)
            if old["arms"] != record["arms"]:
                raise ValueError(f"{root} holds a different study; use another --out or the same options")
            record["seeds"] = sorted(set(old["seeds"]) | set(spec.seeds))  # adding seeds extends a study
        atomic_write_json(saved, record)
        for cell in cells:
            _ensure_init(root, cell)
    todo = [c for c in cells if not (cell_dir(root, c) / RESULT).exists()]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"study {spec.name}", unit="cell")
    threads = threads or default_threads(jobs)
    hint = f"run the same command again to resume: finished cells are kept in {root}"
    with stop_on_signals(hint), contextlib.ExitStack() as stack:
        if bar:
            stack.callback(bar.close)
        units = len({c.arm for c in todo}) if batch_seeds else len(todo)
        pool = stack.enter_context(worker_pool(jobs, hint=hint)) if jobs > 1 and units > 1 else None

        def run(batch: list[CellSpec], wait: bool) -> Iterator[tuple[CellSpec, dict[str, Any] | None]]:
            if batch_seeds and not wait:
                yield from run_groups(batch)
                return
            if pool is None:
                for c in batch:
                    yield c, run_cell(str(root), c, threads, wait, device)
                return
            futures = {pool.submit(run_cell, str(root), c, threads, wait, device): c for c in batch}
            for f in cf.as_completed(futures):
                yield futures[f], f.result()

        def run_groups(batch: list[CellSpec]) -> Iterator[tuple[CellSpec, dict[str, Any] | None]]:
            from vicinal.experiments.training.batched import run_seed_group, seed_groups

            groups = seed_groups(batch)
            if pool is None:
                for group in groups:
                    yield from run_seed_group(str(root), group, threads)
                return
            futures = [pool.submit(run_seed_group, str(root), group, threads) for group in groups]
            for f in cf.as_completed(futures):
                yield from f.result()

        held: list[CellSpec] = []  # cells another process trains: waited for once every free cell is done
        for cell, result in run(todo, False):
            if result is None:
                held.append(cell)
            elif bar:
                bar.update(1)
        for _ in run(held, True):
            if bar:
                bar.update(1)
    index, count = parse_shard(shard)
    timing = {
        "cells": len(cells),
        "unfinished_at_start": len(todo),
        "jobs": jobs,
        "batch_seeds": batch_seeds,
        "threads": threads,
        "device": device,
        "shard": f"{index}/{count}",
        "host": socket.gethostname(),
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(root / f"timing-{int(time.time())}-{socket.gethostname()}-{os.getpid()}.json", timing)
    return [read_json(cell_dir(root, c) / RESULT) for c in cells]


def load_results(study_dir: str | os.PathLike) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]]]:
    """The study record and every finished cell's (spec, result)."""
    root = Path(study_dir)
    record = json.loads((root / "study.json").read_text())
    out = []
    for arm in record["arms"]:
        for seed in record["seeds"]:
            cell = CellSpec(**{**arm, "seed": seed})
            path = cell_dir(root, cell) / "result.json"
            if path.exists():
                out.append((cell, json.loads(path.read_text())))
    return record, out
