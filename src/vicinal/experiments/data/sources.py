"""Finding, verifying and downloading the registered datasets.

:func:`load_dataset` looks for the files of a registered dataset (its
:attr:`~vicinal.experiments.data.specs.SourceSpec.parts`: the four IDX files of
Fashion-MNIST, CIFAR's tarball, SVHN's two ``.mat`` files, one MedMNIST ``.npz``) in
this order and uses the first location that has all of them:

1. the explicit ``data_dir`` argument (the trainer's ``--data-dir``).  When
   given, it is the *only* place searched: a folder without the files, or
   with a wrong or damaged file, is an error naming the folder or file;
2. ``$VICINAL_DATA_DIR``;
3. Debian's install location ``/usr/share/datasets/<folder>/`` (package
   ``dataset-fashion-mnist``);
4. the user cache, ``platformdirs.user_cache_dir("vicinal")/<folder>/`` (or
   ``cache_dir/<folder>/``);
5. a download from the dataset's mirrors into that cache folder, with
   :mod:`pooch` (atomic: written to a temporary file that is renamed only after
   its checksum matched the published one; each mirror is tried in turn).  A
   file without a published checksum in the registry is never downloaded.

``<folder>`` is the dataset's :attr:`~vicinal.experiments.data.specs.SourceSpec.folder`:
its name (``fashion-mnist``, ``cifar10``, ``svhn``), ``cifar100`` for both CIFAR-100
names and ``medmnist`` for every MedMNIST file.  A folder given as ``data_dir`` or
``$VICINAL_DATA_DIR`` may hold the files itself or have a ``<folder>/`` sub-folder
that holds them (so one folder can serve several datasets).  An IDX file may be
gzipped (``name.gz``, preferred when both exist) or raw (``name``); CIFAR may be the
tarball (preferred) or the folder it extracts to.

A location counts only if all the files are present *and* their content matches
the registry's checksums (for IDX files the SHA-256 of the decompressed content:
gzip headers are ignored, Debian rewrites them; for CIFAR the MD5 of each member of
the tarball; for SVHN and MedMNIST the MD5 of the file).  Locations that are absent
or incomplete are skipped.  Files that are present but wrong or damaged are handled
as follows:

* in ``data_dir``, ``$VICINAL_DATA_DIR`` or the Debian location: an
  immediate :class:`DatasetError` naming the file, never a silent fall-through
  to another copy (these are places a person set up and must fix);
* in the cache: the cache is considered stale; the download step fetches the
  official files again (pooch replaces files whose checksum is wrong atomically), and
  if that is impossible the final error reports the bad cache file.

If nothing is found, one :class:`DatasetError` lists every place searched,
why each was rejected, and how to supply the files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import hf, registry
from .dataset import ArrayDataset
from .errors import DatasetError
from .specs import SourceSpec

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


def _find_files(directory: Path, spec: SourceSpec) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for part in spec.parts:
        for name in part.candidates:
            candidate = directory / name.rstrip("/")
            if candidate.is_dir() if name.endswith("/") else candidate.is_file():
                found[part.key] = candidate
                break
    return found


def _scan(root: Path, spec: SourceSpec, *, allow_subdir: bool) -> _Scan:
    try:
        if not root.exists():
            return _Scan(root, problem="does not exist")
        if not root.is_dir():
            return _Scan(root, problem="is not a directory")
        directory, found = root, _find_files(root, spec)
        sub = root / spec.folder
        if allow_subdir and not found and sub.is_dir():
            directory, found = sub, _find_files(sub, spec)
    except OSError as exc:
        return _Scan(root, problem=f"cannot be accessed ({exc.strerror or exc})")
    missing = [part.label for part in spec.parts if part.key not in found]
    if len(missing) == len(spec.parts):
        where = f"{root} nor in {root / spec.folder}" if allow_subdir else str(root)
        return _Scan(directory, problem=f"none of the {spec.title} files are in {where}")
    if missing:
        return _Scan(directory, found, problem=f"incomplete: {directory} lacks {', '.join(missing)}")
    return _Scan(directory, found)


def _identify(digest: str) -> str | None:
    """Which registered file has this content digest, if any (for "swapped?" hints)."""
    for spec in registry.REGISTRY.values():
        for known, description in spec.checksums():
            if known == digest:
                return description
    return None


def _load_verified(spec: SourceSpec, files: dict[str, Path], source: str) -> ArrayDataset:
    """Verify and parse the found files; raise DatasetError on any problem."""
    return spec.load(files, source, _identify)


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
    if "{filename}" in base:
        return base.replace("{filename}", filename)
    return base if base.endswith(filename) else base.rstrip("/") + "/" + filename


def _download(spec: SourceSpec, target: Path, mirrors: Sequence[str]) -> tuple[dict[str, Path] | None, list[str]]:
    """Fetch the official files into ``target``, each checked against its published checksum.

    Returns ``(paths, mirrors_used)`` on success, ``(None, reasons)`` on failure.
    """
    if not mirrors:
        return None, ["no download mirrors configured"]
    unverifiable = [p.label for p in spec.parts if p.download is None or p.download.known_hash is None]
    if unverifiable:
        return None, [
            f"not attempted: no published checksum of {', '.join(unverifiable)} is recorded in vicinal's "
            "registry, and vicinal never downloads files it cannot verify"
        ]
    try:
        import pooch
    except ImportError:
        return None, ["pooch is not installed (pip install pooch, or vicinal[harness])"]
    downloader = pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)
    paths: dict[str, Path] = {}
    used: list[str] = []
    for part in spec.parts:
        remote = part.download
        assert remote is not None  # checked above
        errors = []
        for base in mirrors:
            url = _join_url(base, remote.name)
            try:
                got = pooch.retrieve(
                    url,
                    known_hash=remote.known_hash,
                    fname=remote.name,
                    path=target,
                    downloader=downloader,
                    progressbar=False,
                )
            except Exception as exc:  # network, HTTP status, checksum: try the next mirror
                logger.info("download of %s failed: %s", url, exc)
                errors.append(f"{url}: {_describe_download_error(exc)}")
                continue
            paths[part.key] = Path(got)
            used.append(base)
            break
        else:
            return None, errors
    return paths, list(dict.fromkeys(used))


def _not_found_message(spec: SourceSpec, searched: list[str], cache: Path, download: bool) -> str:
    lines = [f"Could not find the {spec.title} dataset ({spec.name!r}). Searched, in order:"]
    for i, entry in enumerate(searched, 1):
        lines.append(f"  {i}. " + entry.replace("\n", "\n       "))
    names = ", ".join(part.label for part in spec.parts)
    lines.append(f"To supply the files ({names}), do one of:")
    lines.append("  - pass data_dir=<folder> (the trainer's --data-dir option);")
    lines.append(f"  - set {ENV_VAR}=<folder> (the folder itself, or a parent with a {spec.folder}/ sub-folder);")
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
    """Load a registered dataset (see :func:`available_datasets`) verified, or a Hugging Face one.

    Args:
        name: a registered name (case-insensitive; ``_`` and ``-`` equivalent):
            ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` (fine
            labels), ``"cifar100:coarse"`` (the 20 superclasses), ``"svhn"``,
            ``"medmnist:<flag>"`` (28x28) or ``"medmnist:<flag>_<size>"`` (64, 128,
            224); or ``"hf:<path>[?image=COL&label=COL&train=SPLIT&test=SPLIT]"``, a
            Hugging Face dataset saved to disk or as Parquet, read by :func:`load_hf`
            (relative paths are also looked for in ``data_dir``; ``download``,
            ``cache_dir`` and ``mirrors`` do not apply).
        data_dir: a folder holding the dataset's files (or a ``<folder>/``
            sub-folder with them).  When given, no other place is searched.
        download: allow downloading into the cache if no local copy is found.
        cache_dir: cache root (default ``platformdirs.user_cache_dir("vicinal")``);
            the dataset lives in ``cache_dir/<folder>/``.
        mirrors: base URLs to download from, tried in order (default: the
            registry's canonical mirrors); ``{filename}`` in a URL is replaced by
            the file name, otherwise the name is appended.

    Returns:
        An :class:`ArrayDataset`: ``x_*`` ``uint8`` images of shape ``(N, C, H, W)``
        (channels first; ``C`` = 1 for the MNIST family and grey MedMNIST sets, 3
        (RGB) for CIFAR, SVHN and colour MedMNIST sets; ``H = W`` = 28 for MNIST, 32
        for CIFAR and SVHN, the chosen size for MedMNIST), ``y_*`` ``int64`` class ids
        of shape ``(N,)``.  Its ``source`` is the folder used, or the mirror URL(s)
        plus the cache folder for a fresh download.

    Raises:
        DatasetError: unknown or unsupported name (multi-label and 3-D MedMNIST);
            a wrong or damaged file in ``data_dir``, ``$VICINAL_DATA_DIR`` or the
            Debian location; or no usable copy anywhere (the message lists every
            place searched).
    """
    if isinstance(name, str) and name.strip().lower().startswith("hf:"):
        return hf.load_hf_name(name, data_dir)
    spec = registry.get_spec(name)
    searched: list[str] = []

    if data_dir is not None:
        scan = _scan(Path(data_dir).expanduser(), spec, allow_subdir=True)
        if not scan.usable:
            names = ", ".join(part.label for part in spec.parts)
            raise DatasetError(
                f"data_dir {os.fspath(data_dir)!r}: {scan.problem}. Pass the folder that holds "
                f"{names}, or leave data_dir unset to search "
                f"${ENV_VAR}, {DEBIAN_DATASETS_DIR}/{spec.folder} and the cache, and to download."
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

    debian = Path(DEBIAN_DATASETS_DIR) / spec.folder
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
    cache = cache / spec.folder
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
