"""The harness resolves each method's options once, splits data without losing classes,
and names what differs on --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vicinal.experiments.cli import main
from vicinal.experiments.data import ArrayDataset
from vicinal.experiments.runs.compare import run_compare
from vicinal.experiments.spec import METHOD_DEFAULTS, CompareConfig, parse_study, resolve_mixing
from vicinal.experiments.splits import make_splits, stratified_order

QUICK = ["--epochs", "1", "--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]


def _sorted_by_class(n_per_class: int = 100, classes: int = 5) -> ArrayDataset:
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.zeros((y.size, 1, 4, 4), np.uint8)
    return ArrayDataset("sorted", x, y, x[:10], y[:10], tuple(f"c{i}" for i in range(classes)), "test")


def test_sorted_dataset_split_keeps_every_class_in_both_splits() -> None:
    splits = make_splits(_sorted_by_class(), CompareConfig(dataset="sorted.npz", val_size=50, train_limit=100))
    for part in (splits.val, splits.train):
        counts = np.bincount(part[1].numpy(), minlength=5)
        assert counts.min() >= counts.sum() // 5 - 1, counts
    assert "stratified" in splits.rule
    # the split is fixed (not the run's seed): every seed of a study sees the same data
    again = make_splits(_sorted_by_class(), CompareConfig(dataset="sorted.npz", val_size=50, seed=3))
    assert np.array_equal(again.val[1].numpy(), splits.val[1].numpy())


def test_reference_dataset_keeps_the_first_images() -> None:
    ds = _sorted_by_class()
    splits = make_splits(ds, CompareConfig(dataset="fashion-mnist", val_size=50))
    assert np.array_equal(splits.val[1].numpy(), ds.y_train[:50])
    assert "first" in splits.rule


def test_stratified_order_is_a_permutation() -> None:
    y = np.random.default_rng(0).integers(0, 7, 1000)
    order = stratified_order(y)
    assert sorted(order.tolist()) == list(range(1000))


def test_each_method_resolves_its_own_defaults() -> None:
    assert resolve_mixing("kway", {})["pairing"] == "permute"
    assert resolve_mixing("cutmix", {})["alpha"] is None
    assert resolve_mixing("none", {"pairing": "stream"}, inherited=frozenset({"pairing"}))["pairing"] is None
    with pytest.raises(ValueError, match=r"alpha=0.7 is not used by method='cutmix'"):
        resolve_mixing("cutmix", {"alpha": 0.7})
    for method, defaults in METHOD_DEFAULTS.items():
        if method in ("none", "manifold"):
            continue
        resolved = CompareConfig(method=method).resolved()
        assert {k: getattr(resolved, k) for k in defaults} == defaults
    with pytest.raises(ValueError, match="needs mix_layers"):
        CompareConfig(method="manifold").resolved()
    assert CompareConfig(method="manifold", mix_layers=("input",)).resolved().alpha == 2.0


def test_kway_compare_runs_and_records_what_ran(toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "kway"
    assert main(["compare", "--dataset", str(toy_npz), "--method", "kway", *QUICK, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["pairing"] == "permute" and saved["k"] == 3 and saved["cutmix_alpha"] is None
    assert "kway, alpha=0.2, k=3" in (out / "summary.md").read_text()


def test_an_option_the_method_ignores_is_refused_before_anything_is_written(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cut"
    code = main(
        ["compare", "--dataset", str(toy_npz), "--method", "cutmix", "--alpha", "0.7", *QUICK, "--out", str(out)]
    )
    assert code == 2
    assert "alpha=0.7 is not used by method='cutmix'" in capsys.readouterr().err
    assert not out.exists()


def test_study_defaults_apply_only_where_a_method_uses_them() -> None:
    spec = parse_study(
        "[defaults]\npairing = 'stream'\nalpha = 0.4\n"
        "[[arms]]\nname='none'\nmethod='none'\n"
        "[[arms]]\nname='cut'\nmethod='cutmix'\n"
        "[[arms]]\nname='k'\nmethod='kway'\npairing='permute'\n"
    )
    none, cut, kway = spec.arms
    assert none.pairing is None and none.alpha is None
    assert cut.pairing == "stream" and cut.alpha is None and cut.cutmix_alpha == 1.0
    assert kway.alpha == 0.4 and kway.pairing == "permute"
    with pytest.raises(ValueError, match="not used by method='cutmix'"):
        parse_study("[[arms]]\nname='cut'\nmethod='cutmix'\nalpha=0.3\n")
    with pytest.raises(ValueError, match="kway"):
        parse_study("[defaults]\npairing='stream'\n[[arms]]\nname='k'\nmethod='kway'\n")


def test_resume_names_the_differing_option_and_accepts_an_equivalent_path(toy_npz: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(dataset=str(toy_npz), epochs=1, batch_size=32, val_size=100, parallel=False, threads=1)
    run_compare(cfg, tmp_path / "run", progress=False)
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"epochs: 1 -> 2"):
        run_compare(replace(cfg, epochs=2), tmp_path / "run", resume=True, progress=False)
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "config.json").write_text(
        json.dumps({**json.loads((tmp_path / "run" / "config.json").read_text()), "data_dir": f"{data_dir}/"})
    )
    with pytest.raises(ValueError, match="epochs") as info:
        run_compare(replace(cfg, data_dir=str(data_dir), epochs=2), tmp_path / "run2", resume=True, progress=False)
    assert "data_dir" not in str(info.value)
