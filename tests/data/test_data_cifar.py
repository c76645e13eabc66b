"""CIFAR-10/100 from tarballs built here in the official pickle layout (no network)."""

from __future__ import annotations

import datetime
import io
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, load_dataset, registry
from vicinal.experiments.data.cifar import CifarMember
from vicinal.experiments.data.specs import RemoteFile

N = 4  # images per batch
CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def batch(rng: np.random.Generator, label_keys: dict[bytes, int], n: int = N) -> dict[bytes, object]:
    """A batch dict as the official files hold it: bytes keys, uint8 (n, 3072) data, lists of ints."""
    out: dict[bytes, object] = {
        b"batch_label": b"a batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    for key, num_classes in label_keys.items():
        out[key] = [int(v) for v in rng.integers(0, num_classes, n)]
    return out


def make_tarball(path: Path, base: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class Cifar:
    """Generated CIFAR files, registered under the shipped names with their checksums."""

    def __init__(self, register, tools, archive_name: str, base: str, objects: dict[str, object]) -> None:
        self.register, self.tools, self.archive_name, self.base = register, tools, archive_name, base
        self.objects = objects
        self.pickles = {k: pickle.dumps(v, protocol=2) for k, v in objects.items()}

    def tarball(self, directory: Path, members: dict[str, bytes] | None = None) -> Path:
        return make_tarball(directory / self.archive_name, self.base, members or self.pickles)

    def folder(self, directory: Path) -> Path:
        d = directory / self.base
        d.mkdir(parents=True)
        for k, v in self.pickles.items():
            (d / k).write_bytes(v)
        return d

    def apply(self, names: tuple[str, ...], tarball: Path | None = None, members: dict[str, bytes] | None = None, **kw):
        """Register the checksums of these files (``members``: the member bytes to expect)."""
        members = members or self.pickles
        for name in names:
            spec = registry.REGISTRY[name]
            archive_hash = f"md5:{self.tools.md5(tarball.read_bytes())}" if tarball is not None else None
            changes = {
                "archive": RemoteFile(self.archive_name, archive_hash),
                "members": tuple(CifarMember(m.role, m.name, self.tools.md5(members[m.name])) for m in spec.members),
            }
            self.register(name, **{**changes, **kw})


@pytest.fixture
def cifar10(register, tools) -> Cifar:
    rng = np.random.default_rng(10)
    objects: dict[str, object] = {f"data_batch_{i}": batch(rng, {b"labels": 10}) for i in range(1, 6)}
    objects["test_batch"] = batch(rng, {b"labels": 10})
    objects["batches.meta"] = {b"num_cases_per_batch": N, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    c = Cifar(register, tools, "cifar-10-python.tar.gz", "cifar-10-batches-py", objects)
    c.apply(("cifar10",))
    return c


@pytest.fixture
def cifar100(register, tools) -> Cifar:
    rng = np.random.default_rng(100)
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    objects: dict[str, object] = {"train": batch(rng, keys, 6), "test": batch(rng, keys, 3)}
    objects["meta"] = {
        b"fine_label_names": [b"fine_%d" % i for i in range(100)],
        b"coarse_label_names": [b"coarse_%d" % i for i in range(20)],
    }
    c = Cifar(register, tools, "cifar-100-python.tar.gz", "cifar-100-python", objects)
    c.apply(("cifar100", "cifar100:coarse"))
    return c


def expected_cifar10(c: Cifar) -> SimpleNamespace:
    train = [c.objects[f"data_batch_{i}"] for i in range(1, 6)]
    return SimpleNamespace(
        x_train=np.concatenate([b[b"data"] for b in train]),
        y_train=np.concatenate([b[b"labels"] for b in train]),
        x_test=c.objects["test_batch"][b"data"],
        y_test=np.asarray(c.objects["test_batch"][b"labels"]),
    )


def check_cifar10(ds, c: Cifar) -> None:
    e = expected_cifar10(c)
    assert ds.name == "cifar10"
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (5 * N, 3, 32, 32)
    assert ds.x_test.shape == (N, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train.reshape(5 * N, -1), e.x_train)
    np.testing.assert_array_equal(ds.y_train, e.y_train)
    np.testing.assert_array_equal(ds.y_test, e.y_test)
    assert ds.y_train.dtype == np.int64
    assert ds.class_names == tuple(n.decode() for n in CIFAR10_NAMES)


# --------------------------------------------------------------------------- layout


def test_pixels_are_channels_first_rgb(tmp_path, cifar10):
    ds = load_dataset("cifar10", cifar10.tarball(tmp_path / "d").parent, download=False)
    check_cifar10(ds, cifar10)
    row = cifar10.objects["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(ds.x_train[0, 0, 0], row[:32])  # red plane, first image row
    np.testing.assert_array_equal(ds.x_train[0, 0, 1], row[32:64])
    np.testing.assert_array_equal(ds.x_train[0, 1, 0], row[1024:1056])  # green
    np.testing.assert_array_equal(ds.x_train[0, 2, 31], row[-32:])  # blue, last row


def test_extracted_folder(tmp_path, cifar10):
    cifar10.folder(tmp_path / "torchvision-root")
    ds = load_dataset("cifar10", tmp_path / "torchvision-root", download=False)
    check_cifar10(ds, cifar10)


def test_tarball_preferred_over_a_broken_folder(tmp_path, cifar10):
    d = tmp_path / "d"
    cifar10.tarball(d)
    (d / "cifar-10-batches-py").mkdir()  # an incomplete extraction next to the tarball
    check_cifar10(load_dataset("cifar10", d, download=False), cifar10)


def test_named_subfolder_of_data_dir_and_env(tmp_path, cifar10, monkeypatch):
    cifar10.tarball(tmp_path / "datasets" / "cifar10")
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "datasets"))
    ds = load_dataset("cifar10", download=False)
    assert ds.source == str((tmp_path / "datasets" / "cifar10").resolve())


def test_cifar100_fine_and_coarse_share_one_tarball(tmp_path, cifar100):
    cifar100.tarball(tmp_path / "root" / "cifar100")
    fine = load_dataset("cifar100", tmp_path / "root", download=False)
    coarse = load_dataset("CIFAR100:coarse", tmp_path / "root", download=False)
    train, test = cifar100.objects["train"], cifar100.objects["test"]
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.class_names[:2] == ("fine_0", "fine_1") and coarse.class_names[-1] == "coarse_19"
    np.testing.assert_array_equal(fine.y_train, train[b"fine_labels"])
    np.testing.assert_array_equal(coarse.y_train, train[b"coarse_labels"])
    np.testing.assert_array_equal(coarse.y_test, test[b"coarse_labels"])
    np.testing.assert_array_equal(fine.x_test, coarse.x_test)
    assert fine.x_train.shape == (6, 3, 32, 32) and coarse.name == "cifar100:coarse"


# --------------------------------------------------------------------------- download


def test_download_from_local_server_then_cache(tmp_path, cifar10, http_server, tools):
    served = cifar10.tarball(tmp_path / "served")
    cifar10.apply(("cifar10",), tarball=served)
    url = http_server(served.parent)
    ds = load_dataset("cifar10", cache_dir=tmp_path / "cache", mirrors=[url])
    check_cifar10(ds, cifar10)
    assert ds.source.startswith(url) and str(tmp_path / "cache" / "cifar10") in ds.source
    assert [p.name for p in tools.all_files(tmp_path / "cache")] == ["cifar-10-python.tar.gz"]
    again = load_dataset("cifar10", cache_dir=tmp_path / "cache", mirrors=[tools.closed_port_url()])
    assert again.source == str((tmp_path / "cache" / "cifar10").resolve())


def test_download_uses_the_registry_mirrors(tmp_path, cifar10, http_server):
    served = cifar10.tarball(tmp_path / "served")
    url = http_server(served.parent)
    cifar10.apply(("cifar10",), tarball=served, mirrors=(url,))
    check_cifar10(load_dataset("cifar10", cache_dir=tmp_path / "cache"), cifar10)


def test_download_with_wrong_checksum_is_discarded(tmp_path, cifar10, http_server, tools):
    good = cifar10.tarball(tmp_path / "good")
    cifar10.apply(("cifar10",), tarball=good)
    other = dict(cifar10.pickles, test_batch=cifar10.pickles["data_batch_1"])
    url = http_server(cifar10.tarball(tmp_path / "served", other).parent)
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: checksum mismatch, download discarded"):
        load_dataset("cifar10", cache_dir=tmp_path / "cache", mirrors=[url])
    assert tools.all_files(tmp_path / "cache") == []


def test_no_published_checksum_means_no_download(tmp_path, cifar10, http_server, tools):
    served = cifar10.tarball(tmp_path / "served")
    cifar10.apply(("cifar10",), tarball=None)  # the archive's checksum is unknown
    url = http_server(served.parent)
    with pytest.raises(DatasetError, match=r"not attempted: no published checksum of cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", cache_dir=tmp_path / "cache", mirrors=[url])
    assert tools.all_files(tmp_path / "cache") == []


# --------------------------------------------------------------------------- refusals


def test_truncated_tarball_is_refused_by_name(tmp_path, cifar10):
    path = cifar10.tarball(tmp_path / "d")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"{path}: cannot be read to the end .* truncated or corrupt"):
        load_dataset("cifar10", tmp_path / "d")


def test_member_with_wrong_checksum_is_named(tmp_path, cifar10):
    changed = dict(cifar10.pickles)
    obj = dict(cifar10.objects["data_batch_3"])
    obj[b"labels"] = [(v + 1) % 10 for v in obj[b"labels"]]
    changed["data_batch_3"] = pickle.dumps(obj, protocol=2)
    path = cifar10.tarball(tmp_path / "d", changed)
    pattern = rf"{path}:cifar-10-batches-py/data_batch_3: content does not match CIFAR-10's .*data_batch_3"
    with pytest.raises(DatasetError, match=pattern) as info:
        load_dataset("cifar10", tmp_path / "d")
    assert "modified, damaged or different" in str(info.value)


def test_swapped_members_are_identified(tmp_path, cifar10):
    swapped = dict(cifar10.pickles, data_batch_1=cifar10.pickles["data_batch_2"])
    cifar10.tarball(tmp_path / "d", swapped)
    with pytest.raises(DatasetError, match=r"it is CIFAR-10's cifar-10-batches-py/data_batch_2 \(wrong folder"):
        load_dataset("cifar10", tmp_path / "d")


def test_missing_member(tmp_path, cifar10):
    members = {k: v for k, v in cifar10.pickles.items() if k != "data_batch_5"}
    path = cifar10.tarball(tmp_path / "d", members)
    with pytest.raises(DatasetError, match=rf"{path}: the archive lacks cifar-10-batches-py/data_batch_5"):
        load_dataset("cifar10", tmp_path / "d")


def test_incomplete_extracted_folder(tmp_path, cifar10):
    d = cifar10.folder(tmp_path / "root")
    (d / "test_batch").unlink()
    with pytest.raises(DatasetError, match=r"incomplete extracted CIFAR-10 folder: lacks test_batch"):
        load_dataset("cifar10", tmp_path / "root")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({b"labels": None}, r"the pickled dict lacks b'labels' \(found b'batch_label', b'data', b'filenames'\)"),
        ({b"data": np.zeros((N, 1024), np.uint8)}, r"b'data' must be a uint8 array of shape \(N, 3072\).*\(4, 1024\)"),
        ({b"data": np.zeros((N, 3072), np.float32)}, r"b'data' must be a uint8 array .*got float32"),
        ({b"labels": [0, 1, 2, 10]}, r"label 10 at index 3 in b'labels' is outside 0\.\.9"),
        ({b"labels": [0, 1]}, r"4 images in b'data' but 2 labels in b'labels'"),
    ],
)
def test_malformed_batch_layout(tmp_path, cifar10, change, pattern):
    obj = dict(cifar10.objects["test_batch"])
    for key, value in change.items():
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    members = dict(cifar10.pickles, test_batch=pickle.dumps(obj, protocol=2))
    cifar10.apply(("cifar10",), members=members)  # the checksums match: only the layout is wrong
    path = cifar10.tarball(tmp_path / "d", members)
    with pytest.raises(DatasetError, match=rf"{path}:cifar-10-batches-py/test_batch: {pattern}"):
        load_dataset("cifar10", tmp_path / "d")


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        ([1, 2, 3], r"expected a pickled dict with keys b'label_names'.*got list"),
        ({b"label_names": []}, r"b'label_names' must be a non-empty list of class names"),
        (datetime.date(2020, 1, 1), r"not a readable CIFAR pickle \(UnpicklingError: refusing to load datetime\.date"),
    ],
)
def test_malformed_meta_and_foreign_globals(tmp_path, cifar10, obj, pattern):
    members = dict(cifar10.pickles, **{"batches.meta": pickle.dumps(obj, protocol=2)})
    cifar10.apply(("cifar10",), members=members)
    cifar10.tarball(tmp_path / "d", members)
    with pytest.raises(DatasetError, match=rf"batches\.meta: {pattern}"):
        load_dataset("cifar10", tmp_path / "d")


def test_not_found_names_the_tarball_and_folder(tmp_path, cifar10):
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", cache_dir=tmp_path / "cache", download=False)
    msg = str(info.value)
    assert "Could not find the CIFAR-10 dataset ('cifar10')" in msg
    assert "cifar-10-python.tar.gz (or the cifar-10-batches-py/ folder it extracts to)" in msg
    assert f"user cache {tmp_path / 'cache' / 'cifar10'}: does not exist" in msg


def test_the_harness_resolves_the_name(tmp_path, cifar10):
    from vicinal.experiments.splits import load_any

    cifar10.tarball(tmp_path / "d")
    check_cifar10(load_any("cifar10", str(tmp_path / "d")), cifar10)
