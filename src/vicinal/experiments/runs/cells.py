"""One cell of a study: its folder, initial weights, claim, loader and training.

A cell is trained into ``<study>/cells/<arm>/seed<k>/`` (:func:`cell_dir`) from the
initial weights its seed shares with every arm (``<study>/init/<model>-seed<k>.pt``,
:func:`ensure_init`). Claims: any number of ``vicinal study`` processes (one machine,
or several sharing the folder) may run one study; a process trains a cell only while
it holds the cell's OS file lock (:data:`CLAIM_LOCK`), which the OS releases when the
process ends, however it ends, and logs each claim in :data:`CLAIMS_LOG`.
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

from vicinal.experiments.atomic import atomic_torch_save, atomic_write_json, load_tensors, read_json
from vicinal.experiments.corruptions import CORRUPTIONS, SEVERITIES, corrupted_test_set
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.metrics import predict_probs, reliability
from vicinal.experiments.models import build_model
from vicinal.experiments.noise import symmetric_label_noise
from vicinal.experiments.spec import CellSpec, cell_dir
from vicinal.experiments.splits import Splits, check_fits, load_splits, training_batches
from vicinal.experiments.testing import epoch_hooks
from vicinal.experiments.training.loop import CHECKPOINT, RESULT
from vicinal.experiments.training.single import train_arm

__all__ = [
    "CLAIMS_LOG",
    "CLAIM_LOCK",
    "cell_loader",
    "cell_train_options",
    "corruption_metrics",
    "ensure_init",
    "init_path",
    "log_claim",
    "run_cell",
    "train_claimed_cell",
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


def ensure_init(study_dir: Path, cell: CellSpec) -> None:
    """Check that ``cell`` fits its data (:func:`check_fits`) and write its initial weights if missing.

    ``cell.model`` must be set (see :meth:`CellSpec.for_data`).
    """
    assert cell.model is not None
    splits = load_splits(cell)
    check_fits(cell, splits)
    path = init_path(study_dir, cell)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cell.seed)
    atomic_torch_save(build_model(cell.model, splits.input_shape, splits.num_classes).state_dict(), path)


def log_claim(out: Path, resumed: bool) -> None:
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
        log_claim(out, resumed=(out / CHECKPOINT).exists())
        return train_claimed_cell(root, cell, device)


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
    atomic_write_json(cell_dir(root, cell) / "cell.json", record)


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
    model.load_state_dict(load_tensors(init_path(root, cell)))
    model.to(device)
    result = train_arm(cell.arm, model, loader, **cell_train_options(root, cell, splits, device))
    return asdict(result)
