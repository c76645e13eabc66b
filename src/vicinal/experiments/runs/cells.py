"""One cell of a study: its folder, initial weights, claim, loader and training.

A cell is trained into ``<study>/cells/<arm>/seed<k>/`` (:func:`cell_dir`) from the
initial weights its seed shares with every arm (``<study>/init/<model>-seed<k>.pt``,
:func:`ensure_init`). Claims: any number of ``vicinal study`` processes (one machine,
or several sharing the folder) may run one study; a process trains a cell only while
it holds the cell's OS file lock (:data:`CLAIM_LOCK`), which the OS releases when the
process ends, however it ends, and logs each claim in :data:`CLAIMS_LOG`.

Failures: a cell whose training fails on its own (it diverges, a file of its folder is
damaged: a ``ValueError``) leaves ``failed.json`` (:class:`~vicinal.experiments.errors.CellFailure`,
never a result) and raises :class:`~vicinal.experiments.errors.CellFailed`, which the
study records and goes past; the record is removed when the cell is claimed again.
A full disk, a vanished folder or a dead worker stop the whole study instead.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from vicinal.experiments.atomic import (
    RunFolderGone,
    atomic_torch_save,
    atomic_write_json,
    checksum_path,
    load_tensors,
    remove_stale_temporaries,
    write_errors,
)
from vicinal.experiments.corruptions import CORRUPTIONS, SEVERITIES, corrupted_test_set
from vicinal.experiments.errors import FAILED, CellFailed, CellFailure
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.metrics import predict_probs, reliability
from vicinal.experiments.models import build_model
from vicinal.experiments.noise import symmetric_label_noise
from vicinal.experiments.spec import CellSpec, cell_dir, read_failure
from vicinal.experiments.splits import Splits, check_fits, load_splits, training_batches
from vicinal.experiments.testing import epoch_hooks
from vicinal.experiments.training.loop import CHECKPOINT, INIT_REMEDY, RESULT, check_weights, checkpoint_bytes
from vicinal.experiments.training.single import read_result, train_arm

__all__ = [
    "CLAIMS_LOG",
    "CLAIM_LOCK",
    "cell_label",
    "cell_loader",
    "cell_train_options",
    "check_cell",
    "clear_failure",
    "corruption_metrics",
    "ensure_init",
    "init_path",
    "log_claim",
    "make_cell_dir",
    "record_failure",
    "run_cell",
    "space_needed",
    "train_claimed_cell",
    "train_recorded",
    "write_cell_record",
]

CLAIM_LOCK = "claim.lock"
CLAIMS_LOG = "claims.jsonl"


def init_path(study_dir: Path, cell: CellSpec) -> Path:
    """The initial weights of ``cell``'s model and seed, shared by every arm: ``<study>/init/<model>-seed<k>.pt``."""
    return study_dir / "init" / f"{cell.model}-seed{cell.seed}.pt"


def corruption_metrics(study_dir: Path, cell: CellSpec, splits: Splits) -> Callable[[torch.nn.Module], dict[str, Any]]:
    """Accuracy and ECE on every (corruption, severity) copy of the test set.

    The copies are made once per study (``<study>/corruptions/``, checksummed, shared
    by every cell under a file lock) with corruption seed 0, so every arm and seed is
    evaluated on the same images and their errors pair.
    """

    def measure(model: torch.nn.Module) -> dict[str, Any]:
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


def cell_label(cell: CellSpec) -> str:
    """How messages name a cell: ``"<arm> seed <k>"``."""
    return f"{cell.arm} seed {cell.seed}"


def check_cell(cell: CellSpec) -> Splits:
    """Load ``cell``'s data and check that the cell fits it (:func:`check_fits`); writes nothing.

    Raises:
        DatasetError, ValueError: the data is missing or bad, or the sizes don't fit.
    """
    splits = load_splits(cell)
    check_fits(cell, splits)
    return splits


def ensure_init(study_dir: Path, cell: CellSpec, splits: Splits | None = None) -> None:
    """Check that ``cell`` fits its data (:func:`check_cell`) and write its initial weights if missing.

    ``cell.model`` must be set (see :meth:`CellSpec.for_data`).

    Args:
        splits: what :func:`check_cell` returned for ``cell``, if it was called already.
    """
    assert cell.model is not None
    splits = check_cell(cell) if splits is None else splits
    path = init_path(study_dir, cell)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cell.seed)
    model = build_model(cell.model, splits.input_shape, splits.num_classes)
    atomic_torch_save(model.state_dict(), path, checksum=True)


def space_needed(study_dir: Path, cells: list[CellSpec]) -> int:
    """A lower bound of the bytes ``cells`` still write and keep: the missing initial
    weights, a checkpoint (with its best weights) per unfinished cell that has none yet,
    and the one being replaced."""
    sizes: dict[tuple[Any, ...], tuple[int, int]] = {}  # (weights, checkpoint) per model and data shape
    need, inits, replacing = 0, set(), False
    for cell in cells:
        assert cell.model is not None
        out = cell_dir(study_dir, cell)
        if (out / RESULT).exists():
            continue
        splits = load_splits(cell)
        key = (cell.model, splits.input_shape, splits.num_classes)
        if key not in sizes:
            with torch.random.fork_rng(devices=[]):  # measured on a throw-away model
                model = build_model(cell.model, splits.input_shape, splits.num_classes)
            weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            sizes[key] = (weights, checkpoint_bytes(model, keep_best=True))
        weights, checkpoint = sizes[key]
        path = init_path(study_dir, cell)
        if path not in inits and not path.exists():
            inits.add(path)
            need += weights
        started = (out / CHECKPOINT).exists()
        need += 0 if started else checkpoint
        replacing = replacing or started or cell.epochs > 1
    return need + (max(c for _, c in sizes.values()) if replacing and sizes else 0)


def make_cell_dir(study_dir: Path, cell: CellSpec) -> Path:
    """Create ``cell``'s folder inside the study folder, never the study folder itself.

    Raises:
        RunFolderGone: the study folder was deleted (it is not made again, empty).
    """
    out = cell_dir(study_dir, cell)
    if not Path(study_dir).is_dir():
        raise RunFolderGone(
            f"the study folder {study_dir} disappeared (deleted, moved or unmounted?); the study stopped. "
            "Restore the folder and run the same command again, or start a new study"
        )
    with write_errors(out / CLAIM_LOCK):
        for folder in (out.parent.parent, out.parent, out):
            folder.mkdir(exist_ok=True)
    return out


def log_claim(out: Path, resumed: bool) -> None:
    """Append who trains the cell (under its lock) to ``claims.jsonl``."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "resume": resumed}
    with write_errors(out / CLAIMS_LOG), open(out / CLAIMS_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_failure(study_dir: Path, cell: CellSpec, exc: BaseException) -> CellFailed:
    """Write ``cell``'s ``failed.json`` for ``exc`` (under the cell's claim); returns the
    :class:`CellFailed` to raise."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    failure = CellFailure(message, type(exc).__name__, socket.gethostname(), os.getpid(), time.time())
    atomic_write_json(cell_dir(study_dir, cell) / FAILED, asdict(failure), checksum=True)
    return CellFailed(message, cell_label(cell))


def clear_failure(out: Path) -> None:
    """Remove a cell's failure record (it is claimed again: the failure is retried)."""
    for path in (out / FAILED, checksum_path(out / FAILED)):
        path.unlink(missing_ok=True)


def run_cell(
    study_dir: str, cell: CellSpec, threads: int, wait: bool = True, device: str = "cpu"
) -> dict[str, Any] | None:
    """Train (or resume, or just read) one cell on ``device``; returns its result record.

    The cell is claimed first: its lock (``<cell>/claim.lock``) is held while it trains,
    and each claim is logged in ``<cell>/claims.jsonl``. A cell another live process
    holds is waited for (``wait=True``: its result is then read, or, if that process
    died, the cell is resumed from its checkpoint; if it failed there, so it has here)
    or skipped (``wait=False``: returns None). Once claimed, the temporary files of dead
    processes are removed from the cell's folder and an earlier failure is retried.

    Raises:
        CellFailed: the cell's training failed; its ``failed.json`` says why.
    """
    torch.set_num_threads(threads)
    root = Path(study_dir)
    out = cell_dir(root, cell)
    if (out / RESULT).exists():
        return read_result(out / RESULT)
    make_cell_dir(root, cell)
    lock = FileLock(out / CLAIM_LOCK)
    waited = False
    try:
        claim = lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            return None  # another live process trains this cell
        claim, waited = lock.acquire(timeout=-1), True
    with claim:
        if (out / RESULT).exists():  # finished by the process that held it
            return read_result(out / RESULT)
        failure = read_failure(out) if waited else None
        if failure is not None:  # it just failed in the process that held it: not retried at once
            raise CellFailed(failure.error, cell_label(cell))
        remove_stale_temporaries(out)  # under the claim, no other process writes here
        clear_failure(out)
        log_claim(out, resumed=(out / CHECKPOINT).exists())
        return train_recorded(root, cell, device)


def train_recorded(root: Path, cell: CellSpec, device: str = "cpu", **options: Any) -> dict[str, Any]:
    """:func:`train_claimed_cell`, recording a failure of the cell's own (any ``ValueError``:
    a diverged loss, a damaged file of the cell) in its ``failed.json``.

    Raises:
        CellFailed: for such a failure (other errors pass unchanged).
    """
    try:
        return train_claimed_cell(root, cell, device, **options)
    except CellFailed:
        raise
    except ValueError as exc:
        raise record_failure(root, cell, exc) from exc


def cell_loader(cell: CellSpec, splits: Splits, device: str = "cpu") -> InMemoryLoader:
    """The training batches of ``cell``: its seed's order and plans, its label noise,
    made on ``device`` (where the loader keeps the training images)."""
    labels = None
    if cell.noise > 0:
        noisy = symmetric_label_noise(splits.train[1].numpy(), cell.noise, splits.num_classes, seed=cell.seed)
        labels = torch.from_numpy(noisy)
    return training_batches(cell, splits, labels=labels, device=device)


def cell_train_options(root: Path, cell: CellSpec, splits: Splits, device: str = "cpu") -> dict[str, Any]:
    """The keyword arguments a cell gives :func:`~vicinal.experiments.training.single.train_arm`
    (validation and test sets on ``device``)."""
    return {
        "val": tuple(t.to(device) for t in splits.val),
        "test": tuple(t.to(device) for t in splits.test),
        "epochs": cell.epochs,
        "out_dir": cell_dir(root, cell),
        "optim": cell.optim(),
        "precision": cell.precision,
        "resume": True,
        "channels_last": cell.channels_last,
        "on_epoch": epoch_hooks(cell.arm),
        "track_test": True,
        "full_metrics": True,
        "manifold": cell.manifold(),
        "jsd_weight": cell.jsd_weight(),
        "extra_metrics": corruption_metrics(root, cell, splits) if cell.corruptions else None,
    }


def write_cell_record(root: Path, cell: CellSpec, splits: Splits, **extra: Any) -> None:
    """``<cell>/cell.json``: what ran and on which data (the folder found, checksums verified, and the split rule)."""
    record = {**asdict(cell), "data_source": splits.source, "split_rule": splits.rule, **extra}
    atomic_write_json(cell_dir(root, cell) / "cell.json", record, checksum=True)


def train_claimed_cell(root: Path, cell: CellSpec, device: str = "cpu", *, write_record: bool = True) -> dict[str, Any]:
    """Train (or resume, or finish) ``cell`` on its own, on ``device``; the caller holds the cell's claim.

    Args:
        write_record: write ``cell.json`` (False: the caller wrote it, e.g. the stacked-seeds
            trainer, whose record says so).
    """
    assert cell.model is not None
    splits = load_splits(cell)
    if write_record:
        write_cell_record(root, cell, splits)
    loader = cell_loader(cell, splits, device)
    model = build_model(cell.model, splits.input_shape, splits.num_classes)
    model.load_state_dict(load_tensors(init_path(root, cell), check=check_weights, remedy=INIT_REMEDY))
    model.to(device)
    result = train_arm(cell.arm, model, loader, **cell_train_options(root, cell, splits, device))
    return asdict(result)
