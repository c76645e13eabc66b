"""Locating, verifying and downloading registered datasets (synthetic "tiny" dataset)."""

from __future__ import annotations

import numpy as np
import pytest

from vicinal.experiments.data import DatasetError, load_dataset

TRAIN_LABELS = "train-labels-idx1-ubyte"


def check_tiny(ds, tiny):
    assert ds.name == "tiny"
    assert ds.x_train.shape == (12, 1, 4, 5) and ds.x_test.shape == (6, 1, 4, 5)
    np.testing.assert_array_equal(ds.x_train[:, 0], tiny.arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, tiny.arrays["t10k-labels-idx1-ubyte"])
    assert ds.class_names == ("a", "b", "c")


# --------------------------------------------------------------------------- data_dir


@pytest.mark.parametrize("compressed", [True, False])
def test_explicit_data_dir(tmp_path, tiny, compressed):
    d = tiny.write(tmp_path / "d", compressed=compressed)
    ds = load_dataset("tiny", d, download=False)
    check_tiny(ds, tiny)
    assert ds.source == str(d.resolve())


def test_data_dir_parent_with_named_subfolder(tmp_path, tiny):
    tiny.write(tmp_path / "root" / "tiny")
    ds = load_dataset("tiny", str(tmp_path / "root"), download=False)
    assert ds.source == str((tmp_path / "root" / "tiny").resolve())


def test_gz_preferred_over_raw_when_both_exist(tmp_path, tiny):
    d = tiny.write(tmp_path / "d")
    (d / TRAIN_LABELS).write_bytes(b"junk")  # a broken raw copy next to a good .gz
    check_tiny(load_dataset("tiny", d, download=False), tiny)


def test_explicit_data_dir_incomplete_is_an_error_without_fallback(tmp_path, tiny, monkeypatch):
    tiny.write(tmp_path / "good")
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "good"))
    d = tiny.write(tmp_path / "d", skip=("t10k-images-idx3-ubyte",))
    with pytest.raises(DatasetError, match=r"data_dir .*incomplete: .* lacks t10k-images-idx3-ubyte\[\.gz\]"):
        load_dataset("tiny", d)


def test_explicit_data_dir_missing(tmp_path, tiny):
    with pytest.raises(DatasetError, match=r"data_dir '.*nowhere': does not exist"):
        load_dataset("tiny", tmp_path / "nowhere")


def test_explicit_data_dir_with_wrong_file_names_it(tmp_path, tiny, monkeypatch, tools):
    tiny.write(tmp_path / "good")
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "good"))
    d = tiny.write(tmp_path / "d")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(tools.gz(tools.idx_labels([0, 1, 2, 0, 1, 1])))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: content does not match Tiny's"):
        load_dataset("tiny", d)


def test_swapped_files_are_identified(tmp_path, tiny):
    d = tiny.write(tmp_path / "d")
    a, b = d / "train-labels-idx1-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.raises(DatasetError, match=r"it is Tiny's t10k-labels-idx1-ubyte \(wrong folder"):
        load_dataset("tiny", d)


def test_explicit_data_dir_truncated_gz(tmp_path, tiny):
    d = tiny.write(tmp_path / "d")
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: truncated gzip stream"):
        load_dataset("tiny", d)


# --------------------------------------------------------------------------- search order


def test_order_env_then_debian_then_cache(tmp_path, tiny, monkeypatch, isolated):
    env_dir = tiny.write(tmp_path / "env")
    debian_dir = tiny.write(isolated.debian / "tiny")
    cache_dir = tiny.write(tmp_path / "cache" / "tiny")

    monkeypatch.setenv("VICINAL_DATA_DIR", str(env_dir))
    assert load_dataset("tiny", cache_dir=tmp_path / "cache").source == str(env_dir.resolve())

    # $VICINAL_DATA_DIR set but without this dataset: fall through to Debian
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "empty"))
    assert load_dataset("tiny", cache_dir=tmp_path / "cache").source == str(debian_dir.resolve())

    monkeypatch.delenv("VICINAL_DATA_DIR")
    for f in debian_dir.iterdir():
        f.unlink()
    ds = load_dataset("tiny", cache_dir=tmp_path / "cache", download=False)
    assert ds.source == str(cache_dir.resolve())

    # explicit data_dir beats everything
    monkeypatch.setenv("VICINAL_DATA_DIR", str(env_dir))
    other = tiny.write(tmp_path / "explicit", compressed=False)
    assert load_dataset("tiny", other, cache_dir=tmp_path / "cache").source == str(other.resolve())


def test_env_var_parent_folder(tmp_path, tiny, monkeypatch):
    tiny.write(tmp_path / "datasets" / "tiny")
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "datasets"))
    assert load_dataset("tiny", download=False).source.endswith("tiny")


def test_default_cache_is_platformdirs(tiny, isolated):
    cache = tiny.write(isolated.default_cache / "tiny")
    assert str(cache).startswith(str(isolated.xdg_cache))
    assert load_dataset("tiny", download=False).source == str(cache.resolve())


def test_corrupt_env_copy_is_an_error(tmp_path, tiny, monkeypatch):
    env_dir = tiny.write(tmp_path / "env")
    (env_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    tiny.write(tmp_path / "cache" / "tiny")  # a good copy later in the order is NOT used
    monkeypatch.setenv("VICINAL_DATA_DIR", str(env_dir))
    pattern = r"\$VICINAL_DATA_DIR=.* wrong or damaged .*t10k-labels-idx1-ubyte\.gz: truncated gzip"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("tiny", cache_dir=tmp_path / "cache")


def test_corrupt_debian_copy_is_an_error(tmp_path, tiny, isolated):
    debian_dir = tiny.write(isolated.debian / "tiny", compressed=False)
    (debian_dir / TRAIN_LABELS).write_bytes(tiny.raw[TRAIN_LABELS][:-1])
    tiny.write(tmp_path / "cache" / "tiny")
    pattern = r"system copy in .* \(reinstall dataset-tiny\).*12 labels.*truncated"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("tiny", cache_dir=tmp_path / "cache")


def test_corrupt_cache_without_download_is_reported(tmp_path, tiny):
    cache = tiny.write(tmp_path / "cache" / "tiny")
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(tiny.gz["train-images-idx3-ubyte"])
    with pytest.raises(DatasetError) as info:
        load_dataset("tiny", cache_dir=tmp_path / "cache", download=False)
    msg = str(info.value)
    assert "Could not find the Tiny dataset" in msg
    assert "user cache" in msg and "rejected" in msg and "it is Tiny's train-images-idx3-ubyte" in msg


def test_corrupt_cache_is_repaired_by_download(tmp_path, tiny, http_server):
    url = http_server(tiny.write(tmp_path / "served"))
    cache = tiny.write(tmp_path / "cache" / "tiny")
    (cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    ds = load_dataset("tiny", cache_dir=tmp_path / "cache", mirrors=[url])
    check_tiny(ds, tiny)
    assert (cache / "t10k-images-idx3-ubyte.gz").read_bytes() == tiny.gz["t10k-images-idx3-ubyte"]


# --------------------------------------------------------------------------- not found


def test_nothing_found_download_disabled_lists_every_place(tmp_path, tiny, monkeypatch, isolated):
    monkeypatch.setenv("VICINAL_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DatasetError) as info:
        load_dataset("tiny", cache_dir=tmp_path / "cache", download=False)
    msg = str(info.value)
    expected_order = [
        "1. data_dir argument: not given",
        f"2. $VICINAL_DATA_DIR={tmp_path / 'typo'}: does not exist",
        f"3. Debian package location {isolated.debian / 'tiny'}: does not exist",
        f"4. user cache {tmp_path / 'cache' / 'tiny'}: does not exist",
        "5. download: disabled (download=False)",
        "data_dir=<folder>",
        "--data-dir",
        "set VICINAL_DATA_DIR=<folder>",
        "sudo apt-get install dataset-tiny",
        f"copy them into the cache folder {tmp_path / 'cache' / 'tiny'}",
        "call again with download=True",
    ]
    positions = [msg.index(s) for s in expected_order]
    assert positions == sorted(positions)


def test_offline_lists_mirror_failures(tmp_path, tiny, tools, http_server):
    dead = tools.closed_port_url()
    served = tmp_path / "served"
    served.mkdir()
    missing = http_server(served)  # answers 404 for everything
    (tmp_path / "cache" / "tiny").mkdir(parents=True)
    tiny.write(tmp_path / "cache" / "tiny", skip=("train-images-idx3-ubyte", TRAIN_LABELS))
    with pytest.raises(DatasetError) as info:
        load_dataset("tiny", cache_dir=tmp_path / "cache", mirrors=[dead, missing])
    msg = str(info.value)
    assert "$VICINAL_DATA_DIR: not set" in msg
    assert "lacks train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in msg
    assert f"{dead}train-images-idx3-ubyte.gz: connection failed" in msg
    assert f"{missing}train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert tools.all_files(tmp_path / "cache" / "tiny") == sorted(
        tmp_path / "cache" / "tiny" / (n + ".gz") for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    )


# --------------------------------------------------------------------------- download


def test_download_into_cache_then_reuse(tmp_path, tiny, tools, http_server):
    url = http_server(tiny.write(tmp_path / "served"))
    cache_root = tmp_path / "cache"
    ds = load_dataset("tiny", cache_dir=cache_root, mirrors=[url])
    check_tiny(ds, tiny)
    assert url in ds.source and str(cache_root) in ds.source
    assert [p.name for p in tools.all_files(cache_root)] == sorted(f.gz_name for f in tiny.spec.files)
    # a second call finds the cache; the mirror is not needed any more
    again = load_dataset("tiny", cache_dir=cache_root, mirrors=[tools.closed_port_url()])
    assert again.source == str((cache_root / "tiny").resolve())


def test_default_mirrors_come_from_registry(tmp_path, tiny, http_server, monkeypatch):
    import dataclasses

    from vicinal.experiments.data import registry

    url = http_server(tiny.write(tmp_path / "served"))
    monkeypatch.setitem(registry.REGISTRY, "tiny", dataclasses.replace(tiny.spec, mirrors=(url,)))
    check_tiny(load_dataset("tiny", cache_dir=tmp_path / "cache"), tiny)


def test_failing_mirrors_fall_through(tmp_path, tiny, tools, http_server):
    url = http_server(tiny.write(tmp_path / "served"))
    mirrors = [tools.closed_port_url(), url + "does-not-exist/", url]
    ds = load_dataset("tiny", cache_dir=tmp_path / "cache", mirrors=mirrors)
    check_tiny(ds, tiny)
    assert ds.source.startswith(url + " (downloaded to")


def test_corrupt_download_leaves_nothing_in_cache(tmp_path, tiny, tools, http_server):
    served = tiny.write(tmp_path / "served")
    blob = bytearray(tiny.gz["train-images-idx3-ubyte"])
    blob[20] ^= 0xFF
    (served / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    url = http_server(served)
    cache_root = tmp_path / "cache"
    pattern = r"train-images-idx3-ubyte\.gz: checksum mismatch, download discarded"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("tiny", cache_dir=cache_root, mirrors=[url])
    assert tools.all_files(cache_root) == []


def test_corrupt_first_mirror_then_good_one(tmp_path, tiny, tools, http_server):
    bad = tiny.write(tmp_path / "bad")
    (bad / (TRAIN_LABELS + ".gz")).write_bytes(tiny.gz["t10k-labels-idx1-ubyte"])
    urls = [http_server(bad), http_server(tiny.write(tmp_path / "good"))]
    check_tiny(load_dataset("tiny", cache_dir=tmp_path / "cache", mirrors=urls), tiny)
