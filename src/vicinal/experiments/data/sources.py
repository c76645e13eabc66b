"""Finding, verifying and downloading the registered IDX datasets.

:func:`load_dataset` looks for the four files of a dataset in this order and
uses the first location that has all four:

1. the explicit ``data_dir`` argument (the trainer's ``--data-dir``).  When
   given, it is the *only* place searched: a folder without the files, or
   with a wrong or damaged file, is an error naming the folder or file;
2. ``$VICINAL_DATA_DIR``;
3. Debian's install location ``/usr/share/datasets/<name>/`` (package
   ``dataset-fashion-mnist``);
4. the user cache, ``platformdirs.user_cache_dir("vicinal")/<name>/`` (or
   ``cache_dir/<name>/``);
5. a download from the dataset's mirrors into that cache folder, with
   :mod:`pooch` (atomic, SHA-256-checked against the official ``.gz``
   bytes; each mirror is tried in turn).

A folder given as ``data_dir`` or ``$VICINAL_DATA_DIR`` may hold the files
itself or have a ``<name>/`` sub-folder that holds them (so one folder can
serve several datasets).  Each file may be gzipped (``name.gz``, preferred
when both exist) or raw (``name``).

A location counts only if all four files are present *and* the SHA-256 of
their decompressed content matches the registry (gzip headers are ignored:
Debian rewrites them).  Locations that are absent or incomplete are skipped.
Files that are present but wrong or damaged are handled as follows:

* in ``data_dir``, ``$VICINAL_DATA_DIR`` or the Debian location: an
  immediate :class:`DatasetError` naming the file, never a silent fall-through
  to another copy (these are places a person set up and must fix);
* in the cache: the cache is considered stale; the download step fetches the
  official files again (pooch replaces wrong ``.gz`` files atomically), and
  if that is impossible the final error reports the bad cache file.

If nothing is found, one :class:`DatasetError` lists every place searched,
why each was rejected, and how to supply the files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .dataset import ArrayDataset
from .errors import DatasetError
from .idx import check_pair, parse_idx_images, parse_idx_labels, read_idx_bytes
from .registry import DatasetSpec, IdxFile

__all__ = [
    "DEBIAN_DATASETS_DIR",
    "DOWNLOAD_TIMEOUT_S",
    "ENV_VAR",
    "default_cache_dir",
    "load_dataset",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a folder with the dataset files.
ENV_VAR = "VICINAL_DATA_DIR"
#: Where Debian's ``dataset-*`` packages install datasets (one sub-folder each).
DEBIAN_DATASETS_DIR = Path("/usr/share/datasets")
#: Per-request timeout (seconds) for downloads.
DOWNLOAD_TIMEOUT_S = 60.0

# Load order: small files first, so a wrong or swapped copy is caught cheaply.
_ROLES = ("train_labels", "test_labels", "test_images", "train_images")


def default_cache_dir() -> Path:
    """The user cache folder, ``platformdirs.user_cache_dir("vicinal")``.

    Falls back to ``$XDG_CACHE_HOME/vicinal`` (or ``~/.cache/vicinal``) when
    platformdirs is not installed.
    """
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "vicinal"
    return Path(platformdirs.user_cache_dir("vicinal"))


@dataclass
class _Scan:
    """What was found in one candidate location."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


def _find_files(directory: Path, spec: DatasetSpec) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in spec.files:
        for candidate in (directory / f.gz_name, directory / f.name):
            if candidate.is_file():
                found[f.name] = candidate
                break
    return found


def _scan(root: Path, spec: DatasetSpec, *, allow_subdir: bool) -> _Scan:
    try:
        if not root.exists():
            return _Scan(root, problem="does not exist")
        if not root.is_dir():
            return _Scan(root, problem="is not a directory")
        directory, found = root, _find_files(root, spec)
        sub = root / spec.name
        if allow_subdir and not found and sub.is_dir():
            directory, found = sub, _find_files(sub, spec)
    except OSError as exc:
        return _Scan(root, problem=f"cannot be accessed ({exc.strerror or exc})")
    missing = [f.name for f in spec.files if f.name not in found]
    if len(missing) == len(spec.files):
        where = f"{root} nor in {root / spec.name}" if allow_subdir else str(root)
        return _Scan(directory, problem=f"none of the {spec.title} files are in {where}")
    if missing:
        listed = ", ".join(f"{m}[.gz]" for m in missing)
        return _Scan(directory, found, problem=f"incomplete: {directory} lacks {listed}")
    return _Scan(directory, found)


def _identify(digest: str) -> str | None:
    for spec in registry.REGISTRY.values():
        for f in spec.files:
            if f.sha256 == digest:
                return f"{spec.title}'s {f.name}"
    return None


def _mismatch_message(spec: DatasetSpec, f: IdxFile, path: Path, digest: str) -> str:
    other = _identify(digest)
    if other is not None:
        why = f"it is {other} (wrong folder, or files swapped or misnamed?)"
    else:
        why = "it is a modified, damaged or different file"
    return (
        f"{path}: content does not match {spec.title}'s {f.name}: the SHA-256 of the "
        f"decompressed data is {digest}, expected {f.sha256}; {why}"
    )


def _load_verified(spec: DatasetSpec, files: dict[str, Path], source: str) -> ArrayDataset:
    """Read, checksum and parse the four files; raise DatasetError on any problem."""
    parsed = {}
    for role in _ROLES:
        f: IdxFile = getattr(spec, role)
        path = files[f.name]
        data = read_idx_bytes(path)
        # Structure first (its errors say more, e.g. "truncated"), then the checksum.
        if role.endswith("images"):
            images = parse_idx_images(data, str(path))
            parsed[role] = images.reshape(len(images), 1, *images.shape[1:])
        else:
            parsed[role] = parse_idx_labels(data, str(path), len(spec.class_names))
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            raise DatasetError(_mismatch_message(spec, f, path, digest))
        del data
    for split in ("train", "test"):
        check_pair(
            parsed[f"{split}_images"],
            parsed[f"{split}_labels"],
            str(files[getattr(spec, f"{split}_images").name]),
            str(files[getattr(spec, f"{split}_labels").name]),
        )
    logger.debug("loaded %s from %s", spec.name, source)
    return ArrayDataset(
        name=spec.name,
        x_train=parsed["train_images"],
        y_train=parsed["train_labels"],
        x_test=parsed["test_images"],
        y_test=parsed["test_labels"],
        class_names=spec.class_names,
        source=source,
    )


def _describe_download_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status} {getattr(response, 'reason', '') or ''}".rstrip()
    text = str(exc)
    name = type(exc).__name__
    if "Timeout" in name:
        return f"timed out after {DOWNLOAD_TIMEOUT_S:g} s"
    if "ConnectionError" in name:
        m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
        return f"connection failed ({m.group(0).strip() if m else name})"
    if isinstance(exc, ValueError) and "hash" in text.lower():
        return f"checksum mismatch, download discarded: {text}"
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{name}: {text}"


def _join_url(base: str, filename: str) -> str:
    return base if base.endswith(filename) else base.rstrip("/") + "/" + filename


def _download(spec: DatasetSpec, target: Path, mirrors: Sequence[str]) -> tuple[dict[str, Path] | None, list[str]]:
    """Fetch the official ``.gz`` files into ``target``.

    Returns ``(paths, mirrors_used)`` on success, ``(None, reasons)`` on failure.
    """
    if not mirrors:
        return None, ["no download mirrors configured"]
    try:
        import pooch
    except ImportError:
        return None, ["pooch is not installed (pip install pooch, or vicinal[harness])"]
    downloader = pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)
    paths: dict[str, Path] = {}
    used: list[str] = []
    for f in spec.files:
        errors = []
        for base in mirrors:
            url = _join_url(base, f.gz_name)
            try:
                got = pooch.retrieve(
                    url,
                    known_hash=f"sha256:{f.gz_sha256}",
                    fname=f.gz_name,
                    path=target,
                    downloader=downloader,
                    progressbar=False,
                )
            except Exception as exc:  # network, HTTP status, checksum: try the next mirror
                logger.info("download of %s failed: %s", url, exc)
                errors.append(f"{url}: {_describe_download_error(exc)}")
                continue
            paths[f.name] = Path(got)
            used.append(base)
            break
        else:
            return None, errors
    return paths, list(dict.fromkeys(used))


def _not_found_message(spec: DatasetSpec, searched: list[str], cache: Path, download: bool) -> str:
    lines = [f"Could not find the {spec.title} dataset ({spec.name!r}). Searched, in order:"]
    for i, entry in enumerate(searched, 1):
        lines.append(f"  {i}. " + entry.replace("\n", "\n       "))
    names = ", ".join(f.gz_name for f in spec.files)
    lines.append(f"To supply the files ({names}; gzipped or not), do one of:")
    lines.append("  - pass data_dir=<folder> (the trainer's --data-dir option);")
    lines.append(f"  - set {ENV_VAR}=<folder> (the folder itself, or a parent with a {spec.name}/ sub-folder);")
    if spec.debian_package:
        lines.append(f"  - on Debian/Ubuntu: sudo apt-get install {spec.debian_package};")
    lines.append(f"  - copy them into the cache folder {cache}/;")
    if download:
        lines.append("  - or retry when the mirrors above can be reached (check network/proxy).")
    else:
        lines.append("  - or call again with download=True (the default) to download them.")
    return "\n".join(lines)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a registered dataset (see :func:`available_datasets`), verified.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"`` (case-insensitive).
        data_dir: a folder holding the four IDX files (or a ``<name>/``
            sub-folder with them).  When given, no other place is searched.
        download: allow downloading into the cache if no local copy is found.
        cache_dir: cache root (default ``platformdirs.user_cache_dir("vicinal")``);
            the dataset lives in ``cache_dir/<name>/``.
        mirrors: base URLs to download from, tried in order (default: the
            registry's canonical mirrors).

    Returns:
        An :class:`ArrayDataset` with ``x_*`` ``uint8`` of shape
        ``(N, 1, 28, 28)`` and ``y_*`` ``int64`` of shape ``(N,)``; its
        ``source`` is the folder used, or the mirror URL(s) plus the cache
        folder for a fresh download.

    Raises:
        DatasetError: unknown name; a wrong or damaged file in ``data_dir``,
            ``$VICINAL_DATA_DIR`` or the Debian location; or no usable copy
            anywhere (the message lists every place searched).
    """
    spec = registry.get_spec(name)
    searched: list[str] = []

    if data_dir is not None:
        scan = _scan(Path(data_dir).expanduser(), spec, allow_subdir=True)
        if not scan.usable:
            names = ", ".join(f.gz_name for f in spec.files)
            raise DatasetError(
                f"data_dir {os.fspath(data_dir)!r}: {scan.problem}. Pass the folder that holds "
                f"{names} (gzipped or not), or leave data_dir unset to search "
                f"${ENV_VAR}, {DEBIAN_DATASETS_DIR}/{spec.name} and the cache, and to download."
            )
        return _load_verified(spec, scan.files, str(scan.directory.resolve()))
    searched.append("data_dir argument: not given")

    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        scan = _scan(Path(env).expanduser(), spec, allow_subdir=True)
        if scan.usable:
            try:
                return _load_verified(spec, scan.files, str(scan.directory.resolve()))
            except DatasetError as exc:
                raise DatasetError(
                    f"${ENV_VAR}={env} holds a wrong or damaged copy of {spec.title}: {exc}. "
                    f"Fix or remove it, or unset {ENV_VAR}, or pass data_dir=<folder>."
                ) from exc
        searched.append(f"${ENV_VAR}={env}: {scan.problem}")
    else:
        searched.append(f"${ENV_VAR}: not set")

    debian = Path(DEBIAN_DATASETS_DIR) / spec.name
    scan = _scan(debian, spec, allow_subdir=False)
    if scan.usable:
        try:
            return _load_verified(spec, scan.files, str(scan.directory.resolve()))
        except DatasetError as exc:
            hint = f" (reinstall {spec.debian_package})" if spec.debian_package else ""
            raise DatasetError(
                f"the system copy in {debian} is wrong or damaged{hint}: {exc}. "
                f"To use another copy, pass data_dir=<folder> or set {ENV_VAR}."
            ) from exc
    searched.append(f"Debian package location {debian}: {scan.problem}")

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = cache / spec.name
    scan = _scan(cache, spec, allow_subdir=False)
    if scan.usable:
        try:
            return _load_verified(spec, scan.files, str(scan.directory.resolve()))
        except DatasetError as exc:
            logger.warning("ignoring the cached copy of %s: %s", spec.name, exc)
            searched.append(f"user cache {cache}: rejected: {exc}")
    else:
        searched.append(f"user cache {cache}: {scan.problem}")

    if not download:
        searched.append("download: disabled (download=False)")
    else:
        if mirrors is None:
            mirror_list: list[str] = list(spec.mirrors)
        elif isinstance(mirrors, str):
            mirror_list = [mirrors]
        else:
            mirror_list = list(mirrors)
        paths, info = _download(spec, cache, mirror_list)
        if paths is not None:
            source = f"{', '.join(info)} (downloaded to {cache.resolve()})"
            return _load_verified(spec, paths, source)
        searched.append(f"download into {cache}:\n" + "\n".join(info))

    raise DatasetError(_not_found_message(spec, searched, cache, download))
