"""Run-folder files: durable atomic writes, a checksum written with every file read back, validated reads.

Writes. Every result, config and checkpoint is written to a temporary file in the
target's folder (``.<name>.<pid>.tmp``), flushed and fsync'ed, renamed over the target,
and the folder is fsync'ed, so a crash leaves either the old file or the new one, never
a torn one. The temporary file is removed on every failure path; a ``kill -9`` skips
that, so :func:`remove_stale_temporaries` removes those of dead processes when a run
resumes. Tensors are serialized in memory first, so a full disk fails in our own write
(not inside ``torch.save``'s zip writer). The failures a user can act on are one line:
a full disk is :class:`DiskFullError` ("no space left on device while writing <path>";
:func:`check_free_space` refuses a run that cannot fit before it starts), a folder
deleted during the run is :class:`RunFolderGone`.

Checksums. A file the harness reads back (checkpoints, initial weights, ``result.json``,
``config.json``, ``cell.json``, ``results.json``, ``study.json``, ``failed.json``) is
written with ``checksum=True``: beside it, ``<name>.sha256`` (:data:`CHECKSUM_SUFFIX`,
JSON) records the SHA-256 of its bytes in the ``"sha256:<hex>"`` form of
:mod:`vicinal.experiments.data.checksums`, and its size. The two files can't be renamed
into place at once, so the record is written first and also accepts the digest of the
file being replaced: a crash between the two renames leaves a pair that still verifies.

Reads. :func:`read_json` and :func:`load_tensors` read a file's bytes once, verify them
against its record (a file without one, written by an earlier vicinal or by hand, is
read unverified), parse them, refuse NaN and infinities (vicinal never writes them) and
run the caller's schema check (:func:`check_fields`); every refusal is an
:class:`UnreadableFileError`: one line that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from vicinal.experiments.errors import RunFailed

__all__ = [
    "CHECKSUM_SUFFIX",
    "DEFAULT_REMEDY",
    "DiskFullError",
    "RunFolderGone",
    "UnreadableFileError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_arms",
    "check_fields",
    "check_free_space",
    "check_type",
    "check_writable_folder",
    "checksum_path",
    "load_tensors",
    "read_json",
    "read_verified",
    "remove_stale_temporaries",
    "write_errors",
]

#: The checksum record of ``<name>`` is ``<name>.sha256``.
CHECKSUM_SUFFIX = ".sha256"
#: What a refusal tells the user to do when the caller does not say better.
DEFAULT_REMEDY = "delete it to redo that part of the run"
_ALGORITHM = "sha256"
#: A temporary file of :func:`atomic_write`: ``.<target name>.<pid>.tmp``.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")


# --------------------------------------------------------------------------- errors


class DiskFullError(OSError):
    """No space left on the device while writing a run-folder file (or, with
    ``started=False``, not enough to start: :func:`check_free_space`)."""

    def __init__(self, code: int, message: str, *, started: bool = True) -> None:
        super().__init__(code, message)
        #: False when the run was refused before it wrote anything (nothing to resume).
        self.started = started


class RunFolderGone(RunFailed):
    """The run or study folder was deleted (or moved, or unmounted) while the run wrote into it."""


class UnreadableFileError(ValueError):
    """A run-folder file that is truncated, corrupt, of the wrong schema or unsafe to load; names the file."""


def _missing_root(path: Path) -> Path:
    """The highest missing folder above ``path``: the one that was deleted."""
    gone = path.parent
    while not gone.parent.exists() and gone.parent != gone:
        gone = gone.parent
    return gone


def _translated(exc: BaseException, path: Path) -> Exception | None:
    """The one-line error a failed write of ``path`` means to a user, or None to let ``exc`` through."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}")
    # torch.save reports a failed write as "PytorchStreamWriter failed writing file ...".
    if isinstance(exc, RuntimeError) and "failed writing file" in str(exc):
        return DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}")
    if isinstance(exc, FileNotFoundError) and not path.parent.is_dir():
        return RunFolderGone(
            f"the folder {_missing_root(path)} disappeared while writing {path.name} (deleted, moved or "
            "unmounted?); the run stopped. Restore the folder and resume, or start a new run"
        )
    return None


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Within the block, a write of ``path`` that fails for a full disk raises
    :class:`DiskFullError` and one into a vanished folder :class:`RunFolderGone`
    (for files appended to in place, such as ``metrics.jsonl``)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        mapped = _translated(exc, Path(path))
        if mapped is None:
            raise
        raise mapped from exc


# --------------------------------------------------------------------------- writes


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


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], Any], *, before_replace: Callable[[], None] | None = None
) -> None:
    """Write ``path`` atomically and durably with ``write(file)``.

    Args:
        before_replace: called once the new content is durable, before it is renamed
            over ``path`` (the checksum record is written there).

    Raises:
        DiskFullError: the file system is full (the temporary file is removed and the
            previous version of ``path``, if any, is left as it was).
        RunFolderGone: ``path``'s folder no longer exists.
    """
    path = Path(path)
    tmp = _temporary(path)
    with write_errors(path):
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def checksum_path(path: Path) -> Path:
    """The checksum record of ``path``: ``<name>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _digest(data: bytes) -> str:
    # The "<algorithm>:<hex>" form of the data package's checksums; hashlib directly, as
    # the data package writes its caches through this module (it sits below data).
    return f"{_ALGORITHM}:{hashlib.new(_ALGORITHM, data).hexdigest()}"


def _record(path: Path) -> dict[str, Any] | None:
    """``path``'s checksum record; None if it has none.

    Raises:
        UnreadableFileError: the record itself is damaged.
    """
    sidecar = checksum_path(path)
    try:
        raw = sidecar.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
        check_type(record.get("checksum"), str, "checksum")
        check_type(record.get("previous"), str | None, "previous")
        check_type(record.get("size"), int, "size")
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnreadableFileError(
            f"{sidecar} is damaged (not a checksum record: {exc}); delete it to read {path.name} unverified, "
            "or restore it"
        ) from None
    return dict(record)


def _write_record(path: Path, data: bytes) -> None:
    """Write ``path``'s checksum record for its new content ``data``, before ``data`` replaces it."""
    previous = None
    with contextlib.suppress(OSError):
        old = _digest(path.read_bytes())
        try:
            record = _record(path)
        except UnreadableFileError:
            record = {}
        # The file now in place stays acceptable until the rename, unless it was
        # already damaged (a file without a record was accepted unverified: it stays so).
        if record is None or old in (record.get("checksum"), record.get("previous")):
            previous = old
    record = {"file": path.name, "checksum": _digest(data), "size": len(data), "previous": previous}
    atomic_write_bytes(checksum_path(path), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_bytes(path: Path, data: bytes, *, checksum: bool = False) -> None:
    """Write ``data`` to ``path`` atomically and durably; with ``checksum``, and its checksum record."""
    path = Path(path)
    atomic_write(
        path, lambda f: f.write(data), before_replace=(lambda: _write_record(path, data)) if checksum else None
    )


def atomic_write_json(path: Path, obj: Any, *, checksum: bool = False) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically and durably (NaN refused)."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode(), checksum=checksum
    )


def atomic_torch_save(obj: Any, path: Path, *, checksum: bool = False) -> None:
    """``torch.save(obj, path)``, atomically and durably.

    The object is serialized in memory, then written: a full disk then fails in a plain
    write (ENOSPC) rather than inside torch's zip writer, whose error ("unexpected pos")
    does not say so.
    """
    buffer = io.BytesIO()
    with write_errors(Path(path)):
        torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), checksum=checksum)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.<pid>.tmp``) that dead processes left in ``folder``.

    A temporary file of a live process on this machine (this one, a sibling worker) is
    kept; so is every one on Windows, where a process can't be probed safely. Call it
    where only one process writes (a claimed cell, a resumed compare run): on a file
    system shared by several machines a pid names a process of this machine only.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process of this machine (True where that can't be told)."""
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Refuse, before anything is written, a run whose files can't fit in ``folder``'s file system.

    ``need`` is a lower bound in bytes (what the run keeps at its end, plus one
    checkpoint being replaced), so a refusal is certain, not a guess; checking the free
    space once is cheap, discovering it at the last epoch is not.

    Raises:
        DiskFullError: with ``started=False``, naming the folder, the free and needed space.
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:  # no answer: the writes themselves will tell
        return
    if free < need:
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on device for {folder}: {_size(free)} free, but {what} need at least {_size(need)}; "
            "free some space or choose another --out (nothing was written)",
            started=False,
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


# --------------------------------------------------------------------------- reads


def read_verified(path: Path, *, remedy: str = DEFAULT_REMEDY) -> bytes:
    """The bytes of ``path``, checked against its checksum record if it has one.

    A content that matches neither the digest written with it nor that of the file it
    replaced (see the module's docstring) is refused.

    Raises:
        UnreadableFileError: the content or its record is damaged; the message ends with ``remedy``.
        RunFolderGone: ``path``'s folder no longer exists.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        if not path.parent.is_dir():
            raise RunFolderGone(
                f"the folder {_missing_root(path)} disappeared (deleted, moved or unmounted?) before {path.name} "
                "could be read; the run stopped. Restore the folder and resume, or start a new run"
            ) from exc
        raise
    record = _record(path)
    if record is not None and _digest(data) not in (record["checksum"], record["previous"]):
        if len(data) == record["size"]:
            how = f"bytes were changed: the size is the same, {len(data)} bytes"
        else:
            how = f"{len(data)} bytes, {record['size']} when it was written"
        raise UnreadableFileError(
            f"{path} is truncated or corrupt: its content does not match the checksum written with it in "
            f"{checksum_path(path).name} ({how}); {remedy}"
        )
    return data


class _NonFinite(ValueError):
    pass


def _refuse_constant(token: str) -> Any:
    raise _NonFinite(token)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFinite(text)
    return value


def _checked(path: Path, obj: Any, check: Callable[[Any], None] | None, remedy: str) -> Any:
    if check is not None:
        try:
            check(obj)
        except (ValueError, TypeError) as exc:
            raise UnreadableFileError(f"{path}: {exc}; {remedy}") from None
    return obj


def read_json(path: Path, *, check: Callable[[Any], None] | None = None, remedy: str = DEFAULT_REMEDY) -> Any:
    """A JSON file of a run folder: verified (:func:`read_verified`), parsed, NaN and
    infinities refused, then ``check(obj)`` (which raises ValueError or TypeError).

    Raises:
        UnreadableFileError: naming the file, what is wrong and ``remedy``.
    """
    path = Path(path)
    data = read_verified(path, remedy=remedy)
    try:
        obj = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise UnreadableFileError(
            f"{path} holds {exc}, a non-finite number that vicinal never writes (damaged or edited); {remedy}"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path} is not valid JSON ({exc}); {remedy}") from None
    return _checked(path, obj, check, remedy)


def load_tensors(path: Path, *, check: Callable[[Any], None] | None = None, remedy: str = DEFAULT_REMEDY) -> Any:
    """``torch.load`` of a checkpoint or weights file (verified, :func:`read_verified`), refusing anything but data.

    ``weights_only=True``: tensors, numbers, strings and containers of them load;
    anything that would run code when unpickled (a callable, a custom class) is refused,
    so a run folder that someone else can write can't execute code on this machine.
    ``check(obj)`` then validates the content.

    Raises:
        UnreadableFileError: the file is empty, truncated, corrupt, holds code or fails ``check``.
    """
    path = Path(path)
    data = read_verified(path, remedy=remedy)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnreadableFileError(
            f"{path} holds objects other than tensors and plain data; refused, since loading it could run code "
            f"({remedy})"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableFileError(f"{path} is truncated or corrupt ({reason}); {remedy}") from exc
    return _checked(path, obj, check, remedy)


# --------------------------------------------------------------------------- schemas


def _describe(hint: Any) -> str:
    """``int``, ``float | None``, ``list[dict[str, float]]``: a type as it is written."""
    plain = isinstance(hint, type) and typing.get_origin(hint) is None
    return hint.__name__ if plain else str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as JSON or ``torch.load`` gives it back) has the type ``hint``."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a number too (JSON writes 1.0 as 1.0, TOML may write 1)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (list, tuple, Sequence, Collection):  # JSON gives lists for tuples
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0] if args else Any) for v in value)
    if origin in (dict, Mapping):
        key, item = args if args else (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # Literal and the like: checked by the spec's own checks


def check_type(value: Any, hint: Any, name: str) -> None:
    """Raise TypeError unless ``value`` has the type ``hint`` (``int``, ``float | None``,
    ``list[dict[str, float]]``, a class, ...); the message names ``name``."""
    if not _matches(value, hint):
        shown = f"{type(value).__name__} {value!r}" if isinstance(value, (str, int, float)) else type(value).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise TypeError(f"{name} must be {_describe(hint)}, got {shown}")


def check_arms(cls: type[Any], arms: Any, *, what: str) -> None:
    """:func:`check_fields` of ``cls`` on each entry of a record's ``arms`` list, the
    error prefixed with the arm's 1-based position."""
    for i, arm in enumerate(arms):
        try:
            check_fields(cls, arm, what=what)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"arm {i + 1}: {exc}") from None


def check_fields(cls: type[Any], data: Any, *, extra: Collection[str] = (), what: str | None = None) -> None:
    """Raise ValueError or TypeError unless ``data`` is a dict of dataclass ``cls``'s fields.

    Every key must be a field (or one of ``extra``), every field without a default must
    be there, and every value must have its field's type (:func:`check_type`).
    """
    what = what or f"the fields of {cls.__name__}"
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise TypeError(f"holds {kind}, expected an object with {what}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - set(extra))
    if unknown:
        raise ValueError(f"has keys {unknown} that are not {what} ({sorted(fields)})")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"lacks {missing}, of {what}")
    hints = typing.get_type_hints(cls)
    for name in fields:
        if name in data:
            check_type(data[name], hints[name], name)


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
