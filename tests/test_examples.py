"""The non-image examples run end to end on tiny sizes, and docs/modalities.md's snippets run."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from vicinal.experiments.data import load_npz

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODALITIES_DOC = ROOT / "docs" / "modalities.md"
# The sibling `shared` folder of the repository root (as in tests/data/conftest.py).
FASHION_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fashion_dir() -> Path:
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_DIR}")
    return FASHION_DIR


def test_tabular_example_standardises_and_learns(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("tabular_mixup")
    x_train, y_train, x_test, y_test, names = example.load_table("breast-cancer")
    assert x_train.dtype == np.float32 and x_train.shape[1] == 30 and names == ("malignant", "benign")
    np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-5)  # training statistics...
    np.testing.assert_allclose(x_train.std(axis=0), 1, atol=1e-4)
    assert np.abs(x_test.mean(axis=0)).max() > 1e-3  # ...applied to the test rows, not their own
    assert len(y_test) == 114 and abs(y_test.mean() - y_train.mean()) < 0.02  # stratified
    results = example.main(["--epochs", "3", "--limit", "128", "--seeds", "1"])
    assert set(results) == {"none", "mixup"} and all(len(v) == 1 for v in results.values())
    assert min(v[0] for v in results.values()) > 0.8  # standardised breast cancer is nearly linear
    assert "mixup: test accuracy" in capsys.readouterr().out


def test_tabular_example_refuses_bad_options() -> None:
    example = load_example("tabular_mixup")
    with pytest.raises(SystemExit):
        example.main(["--epochs", "0"])
    with pytest.raises(ValueError, match="dataset must be one of"):
        example.load_table("iris")


def test_sequence_example_on_synthetic_data(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("sequence_manifold")
    args = ["--synthetic", "--epochs", "3", "--limit", "384", "--test-limit", "256", "--threads", "1"]
    results = example.main([*args, "--arms", "none,input,manifold", "--layers", "embed,gru"])
    assert set(results) == {"none", "input", "manifold"}
    assert min(results.values()) > 0.4  # 4 classes: chance is 0.25
    out = capsys.readouterr().out
    assert "manifold layers ['embed', 'gru']" in out and "manifold: test accuracy" in out
    with pytest.raises(SystemExit):
        example.main(["--synthetic", "--arms", "none,cutmix"])


def test_sequence_example_on_fashion_mnist(fashion_dir: Path) -> None:
    example = load_example("sequence_manifold")
    seqs = example.sequences_from_images(np.full((2, 1, 28, 28), 255, np.uint8))
    assert seqs.shape == (2, 28, 28) and seqs.dtype == np.float32 and seqs.max() == 1.0
    args = ["--data-dir", str(fashion_dir), "--limit", "1000", "--test-limit", "500", "--epochs", "1"]
    results = example.main([*args, "--threads", "1"])
    assert set(results) == {"none", "manifold"} and min(results.values()) > 0.3  # 10 classes


def test_make_modalities_data_writes_breast_cancer(tmp_path: Path) -> None:
    example = load_example("make_modalities_data")
    (path,) = example.main(["--out", str(tmp_path), "--only", "breast-cancer"])
    assert path == tmp_path / "breast-cancer.npz"
    ds = load_npz(path)
    assert ds.kind == "features" and ds.input_shape == (30,) and (len(ds.y_train), len(ds.y_test)) == (455, 114)
    assert ds.class_names == ("malignant", "benign")
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-4)
    again = load_npz(example.main(["--out", str(tmp_path / "again"), "--only", "breast-cancer"])[0])
    np.testing.assert_array_equal(again.x_test, ds.x_test)  # a fixed, seeded split


def test_make_modalities_data_writes_sequences(tmp_path: Path, fashion_dir: Path) -> None:
    example = load_example("make_modalities_data")
    args = ["--out", str(tmp_path), "--only", "seq-fashion-mnist", "--data-dir", str(fashion_dir)]
    (path,) = example.main([*args, "--seq-train", "300", "--seq-test", "100"])
    ds = load_npz(path)
    assert ds.kind == "features" and ds.input_shape == (28, 28) and (len(ds.y_train), len(ds.y_test)) == (300, 100)
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3
    assert ds.class_names[0] == "T-shirt/top"


def test_segmentation_example_on_synthetic_canvases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    example = load_example("segmentation")
    args = ["--tiny", "--synthetic", "--arms", "none,cutmix,fmix", "--cache-dir", str(tmp_path)]
    results = example.main(args)
    assert set(results) == {"none", "cutmix", "fmix"} and all(len(v) == 2 for v in results.values())
    assert all(0.0 <= x <= 1.0 for v in results.values() for x in v)
    out = capsys.readouterr().out
    assert "paired differences against none" in out and "cutmix   mean IoU" in out
    assert example.main(args) == results  # same seeds, same numbers (on one machine)
    with pytest.raises(SystemExit):
        example.main(["--synthetic", "--arms", "none,mixup"])


def test_segmentation_example_learns_on_fashion_mnist_canvases(fashion_dir: Path, tmp_path: Path) -> None:
    """48 steps of the unmixed arm beat predicting the background everywhere (whose mean
    IoU is the background's share of the pixels over the classes present, ~0.077)."""
    example = load_example("segmentation")
    args = ["--data-dir", str(fashion_dir), "--cache-dir", str(tmp_path), "--arms", "none", "--seeds", "1"]
    size = ["--train", "384", "--test", "64", "--epochs", "4", "--lr", "1e-2"]
    results = example.main([*args, *size])
    from vicinal.experiments.data.canvas import CanvasConfig, load_canvas

    test = load_canvas(CanvasConfig(n_train=384, n_test=64), data_dir=fashion_dir, cache_dir=tmp_path).test
    all_background = float((test.masks == 0).mean()) / len(np.unique(test.masks))
    assert 0.07 < all_background < 0.085
    assert results["none"][0] > all_background + 0.02  # 0.111 on the development machine


# --------------------------------------------------------------------------- docs/modalities.md

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
DOC_BLOCKS = [
    (MODALITIES_DOC.read_text(encoding="utf-8").count("\n", 0, m.start()) + 2, m.group(1))
    for m in _FENCE.finditer(MODALITIES_DOC.read_text(encoding="utf-8"))
]


def test_modalities_doc_has_snippets_and_links_to_the_examples() -> None:
    text = MODALITIES_DOC.read_text(encoding="utf-8")
    assert len(DOC_BLOCKS) >= 3
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (MODALITIES_DOC.parent / target).exists(), f"docs/modalities.md links to missing {target}"
    assert "../examples/tabular_mixup.py" in text and "../examples/sequence_manifold.py" in text


@pytest.mark.parametrize(("line", "source"), DOC_BLOCKS, ids=[f"line{line}" for line, _ in DOC_BLOCKS])
def test_modalities_doc_snippet_runs(line: int, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc_snippet__"}
    exec(compile(source, f"docs/modalities.md (block at line {line})", "exec"), namespace)
