"""Durable, atomic file writes for run folders.

Every result, config and checkpoint is written to a temporary file in the target's
folder, flushed and fsync'ed, renamed over the target, and the folder is fsync'ed, so
a crash leaves either the old file or the new one, never a torn one. The temporary
file is removed on every failure path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "DiskFullError",
    "UnreadableFileError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_writable_folder",
    "load_tensors",
    "read_json",
]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms and file systems can't open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it on success, removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


class DiskFullError(OSError):
    """No space left on the device while writing a run-folder file."""


def _no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as "PytorchStreamWriter failed writing file ...".
    return isinstance(exc, RuntimeError) and "failed writing file" in str(exc)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically and durably with ``write(file)``.

    Raises:
        DiskFullError: the file system is full (the temporary file is removed and the
            previous version of ``path``, if any, is left as it was).
    """
    try:
        with _atomic_target(path) as tmp, open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:
        if _no_space(exc):
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}") from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically and durably."""
    atomic_write(path, lambda f: torch.save(obj, f))


class UnreadableFileError(ValueError):
    """A run-folder file that is truncated, corrupt or unsafe to load; names the file."""


def load_tensors(path: Path) -> Any:
    """``torch.load`` of a checkpoint or weights file, refusing anything but data.

    ``weights_only=True``: tensors, numbers, strings and containers of them load;
    anything that would run code when unpickled (a callable, a custom class) is refused,
    so a run folder that someone else can write can't execute code on this machine.

    Raises:
        UnreadableFileError: the file is empty, truncated, corrupt or holds code.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnreadableFileError(
            f"{path} holds objects other than tensors and plain data; refused, since loading it could run code "
            "(delete it to retrain from scratch)"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableFileError(
            f"{path} is truncated or corrupt ({reason}); delete it to redo that part of the run"
        ) from exc


def read_json(path: Path) -> Any:
    """A JSON file of a run folder; a clear error naming it if it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path} is not valid JSON ({exc}); delete it to redo that part of the run") from exc


def check_writable_folder(folder: Path, *, option: str = "--out") -> None:
    """Refuse, before any work, a run folder that can't be created or written.

    Checks the folder itself if it exists, else its nearest existing parent; creates
    nothing.
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"{option} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {folder}: {probe} is not writable")
