"""Fixtures for the vicinal.experiments.data tests.

Helpers are handed out through fixtures (not imported) so the tests work
under any pytest import mode.  Every test runs isolated: no
``$VICINAL_DATA_DIR``, the Debian location and the user cache point into
``tmp_path``, and the registered datasets' mirrors point at a closed local
port, so nothing here ever touches the network or the real cache.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vicinal.experiments.data import registry, sources

# The sibling `shared` folder of the repository root.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# The registry as shipped, before any test patches it.
ORIGINAL_REGISTRY = dict(registry.REGISTRY)


# --------------------------------------------------------------------------- helpers


def idx_images(x: np.ndarray, count: int | None = None) -> bytes:
    x = np.asarray(x, dtype=np.uint8)
    n, rows, cols = x.shape
    return struct.pack(">4I", 2051, n if count is None else count, rows, cols) + x.tobytes()


def idx_labels(y: np.ndarray, count: int | None = None) -> bytes:
    y = np.asarray(y, dtype=np.uint8)
    return struct.pack(">2I", 2049, len(y) if count is None else count) + y.tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def rewrite_gzip_header(blob: bytes, *, mtime: int = 1234567890, fname: bytes | None = None) -> bytes:
    """Replace a gzip member's header, keeping the deflate data and trailer (like Debian)."""
    assert blob[:3] == b"\x1f\x8b\x08"
    flags = blob[3]
    pos = 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + int.from_bytes(blob[pos : pos + 2], "little")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT
        if flags & bit:
            pos = blob.index(b"\x00", pos) + 1
    if flags & 0x02:  # FHCRC
        pos += 2
    new_flags = 0x08 if fname is not None else 0
    header = b"\x1f\x8b\x08" + bytes([new_flags]) + struct.pack("<I", mtime) + b"\x00\xff"
    if fname is not None:
        header += fname + b"\x00"
    return header + blob[pos:]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    return SimpleNamespace(
        idx_images=idx_images,
        idx_labels=idx_labels,
        gz=gz,
        rewrite_gzip_header=rewrite_gzip_header,
        closed_port_url=closed_port_url,
        all_files=all_files,
        md5=md5,
    )


@pytest.fixture(scope="session")
def original_registry() -> dict[str, registry.DatasetSpec]:
    """The registry as shipped (tests see a copy whose mirrors are dead)."""
    return ORIGINAL_REGISTRY


# --------------------------------------------------------------------------- isolation


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    debian = tmp_path / "debian-datasets"
    xdg = tmp_path / "xdg-cache"
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    monkeypatch.setattr(sources, "DEBIAN_DATASETS_DIR", debian)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    dead = closed_port_url()
    for name, spec in ORIGINAL_REGISTRY.items():
        monkeypatch.setitem(registry.REGISTRY, name, dataclasses.replace(spec, mirrors=(dead,)))
    return SimpleNamespace(debian=debian, xdg_cache=xdg, default_cache=sources.default_cache_dir())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch):
    """Factory: replace fields of a registry entry for this test (e.g. checksums of generated files).

    Starts from the isolated entry, so its mirrors stay dead unless ``mirrors=`` is given.
    """

    def replace(name: str, **changes: object) -> object:
        spec = dataclasses.replace(registry.REGISTRY[name], **changes)
        monkeypatch.setitem(registry.REGISTRY, name, spec)
        return spec

    return replace


# --------------------------------------------------------------------------- tiny dataset


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A registered 3-class IDX dataset ("tiny") of 4x5 images, 12 train and 6 test."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 4, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12) % 3,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(6) % 3,
    }
    raw = {name: (idx_images(a) if "images" in name else idx_labels(a)) for name, a in arrays.items()}
    gzipped = {name: gz(b) for name, b in raw.items()}

    def sha(b: bytes) -> str:
        import hashlib

        return hashlib.sha256(b).hexdigest()

    files = {name: registry.IdxFile(name, sha(raw[name]), sha(gzipped[name]), len(gzipped[name])) for name in raw}
    spec = registry.DatasetSpec(
        name="tiny",
        title="Tiny",
        train_images=files["train-images-idx3-ubyte"],
        train_labels=files["train-labels-idx1-ubyte"],
        test_images=files["t10k-images-idx3-ubyte"],
        test_labels=files["t10k-labels-idx1-ubyte"],
        class_names=("a", "b", "c"),
        mirrors=(closed_port_url(),),
        debian_package="dataset-tiny",
    )
    monkeypatch.setitem(registry.REGISTRY, "tiny", spec)

    def write(directory: Path, *, compressed: bool = True, skip: tuple[str, ...] = ()) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for name in raw:
            if name in skip:
                continue
            if compressed:
                (directory / (name + ".gz")).write_bytes(gzipped[name])
            else:
                (directory / name).write_bytes(raw[name])
        return directory

    return SimpleNamespace(spec=spec, arrays=arrays, raw=raw, gz=gzipped, write=write)


# --------------------------------------------------------------------------- HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    """Factory: serve a folder over HTTP on 127.0.0.1; returns the base URL."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
