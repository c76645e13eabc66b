"""Metrics, statistics, label noise, studies and reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vicinal.experiments.cli import main
from vicinal.experiments.metrics import brier, fgsm_accuracy, nll, reliability
from vicinal.experiments.noise import symmetric_label_noise
from vicinal.experiments.report import render_report
from vicinal.experiments.stats import paired_test, summarize
from vicinal.experiments.study import PRESETS, cell_dir, load_study, parse_study, run_study


def test_reliability_and_ece_by_hand() -> None:
    # 4 samples: confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.55 (right)
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 1])
    rel = reliability(probs, labels, bins=10)
    # bin (0.9, 1.0]: conf 0.95, acc 0.5; bin (0.5, 0.6]: conf 0.55, acc 1.0
    expected = 0.5 * abs(0.95 - 0.5) + 0.5 * abs(0.55 - 1.0)
    assert rel["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in rel["bins"]) == 4
    assert rel["bins"][9]["count"] == 2 and rel["bins"][5]["count"] == 2
    perfect = torch.eye(3)
    assert reliability(perfect, torch.arange(3))["ece"] == pytest.approx(0.0)
    assert nll(perfect, torch.arange(3)) == pytest.approx(0.0, abs=1e-9)
    assert brier(perfect, torch.arange(3)) == pytest.approx(0.0)
    uniform = torch.full((5, 4), 0.25)
    assert nll(uniform, torch.zeros(5, dtype=torch.long)) == pytest.approx(math.log(4))
    assert brier(uniform, torch.zeros(5, dtype=torch.long)) == pytest.approx(0.75)


def test_fgsm_hurts_a_linear_model_as_expected() -> None:
    # For a linear classifier on one pixel the attack flips predictions within ε of the boundary.
    class Lin(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x.flatten(1)[:, :1] - 0.5
            return torch.cat([-v, v], dim=1) * 10

    values = torch.tensor([0, 100, 120, 130, 200, 255], dtype=torch.uint8)  # /255: 0, .39, .47, .51, .78, 1
    images = values.view(-1, 1, 1, 1)
    labels = (values.float() / 255 > 0.5).long()
    acc = fgsm_accuracy(Lin(), images, labels, [0.0, 0.03, 0.2])
    assert acc["0.0"] == 1.0
    assert acc["0.03"] == pytest.approx(4 / 6)  # .47 and .51 cross the boundary
    assert acc["0.2"] == pytest.approx(3 / 6)  # 0, .78 and 1 are more than 0.2 from the boundary


def test_summarize_and_paired_test() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci_low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(summarize([1.0])["std"])
    a = [0.86, 0.87, 0.88, 0.865, 0.875]
    b = [x - 0.01 for x in a]
    t = paired_test(a, b)
    assert t["mean"] == pytest.approx(0.01) and t["wins"] == 5
    assert t["t_p"] == 0.0 and t["perm_p"] == pytest.approx(2 / 32)  # exact: all-positive is 1 of 32 sign patterns
    noisy = paired_test([1, 2, 3, 4], [1.1, 1.9, 3.2, 3.9])
    assert 0.5 < noisy["t_p"] <= 1 and 0.5 < noisy["perm_p"] <= 1
    with pytest.raises(ValueError, match="same length"):
        paired_test([1, 2], [1])


def test_symmetric_label_noise() -> None:
    y = np.repeat(np.arange(10), 1000)
    z = symmetric_label_noise(y, 0.4, 10, seed=3)
    assert (z != y).mean() == pytest.approx(0.4, abs=1e-12)  # exactly round(rate·N) labels change
    np.testing.assert_array_equal(z, symmetric_label_noise(y, 0.4, 10, seed=3))
    flipped = z[z != y]
    # wrong labels are spread uniformly over the other classes: chi-square-ish bound on counts
    counts = np.bincount(flipped, minlength=10)
    assert counts.min() > 0.8 * len(flipped) / 10 and counts.max() < 1.2 * len(flipped) / 10
    assert np.array_equal(symmetric_label_noise(y, 0.0, 10, seed=0), y)
    with pytest.raises(ValueError, match="rate"):
        symmetric_label_noise(y, 1.5, 10, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        symmetric_label_noise(y, 0.1, 5, seed=0)


def test_presets_parse() -> None:
    for name in PRESETS:
        spec = load_study(name)
        assert spec.arms and spec.seeds
    assert len(load_study("alpha").arms) == 8
    noise = load_study("noise")
    assert {a.noise for a in noise.arms} == {0.0, 0.2, 0.4, 0.6, 0.8}
    assert len(load_study("reference").seeds) == 5
    lowdata = load_study("lowdata")
    assert len(lowdata.seeds) == 5 and {a.train_limit for a in lowdata.arms} == {10_000}
    assert {a.noise for a in load_study("lowdata-noise").arms} == {0.4}


def test_shipped_presets() -> None:
    assert set(PRESETS) == {"reference", "alpha", "methods", "noise", "long", "lowdata", "lowdata-noise"}


def test_bad_study_specs() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        parse_study("[defaults]\nepocs = 3\n")
    with pytest.raises(ValueError, match="unique"):
        parse_study("[[arms]]\nname='a'\n[[arms]]\nname='a'\n")
    with pytest.raises(ValueError, match="alpha"):
        parse_study("[[arms]]\nname='a'\nmethod='mixup'\nalpha=-1.0\n")
    with pytest.raises(ValueError, match="preset|TOML"):
        load_study("no-such-preset")


TOY_STUDY = """
name = "toy"
seeds = 2
[defaults]
dataset = "{npz}"
epochs = 2
batch_size = 32
val_size = 100
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
grid = true
[grid]
alpha = [0.2, 1.0, 4.0]
"""


def test_study_runs_skips_finished_cells_and_reports(toy_npz: Path, tmp_path: Path) -> None:
    spec = parse_study(TOY_STUDY.format(npz=toy_npz))
    assert len(spec.cells()) == 8
    out = tmp_path / "study"
    results = run_study(spec, out, jobs=1, progress=False)
    assert len(results) == 8
    for r in results:
        assert set(r["metrics"]) == {"last", "best"}
        assert 0 <= r["metrics"]["last"]["ece"] <= 1
        assert set(r["metrics"]["last"]["fgsm"]) == {"0.01", "0.03", "0.1"}
        assert all("test_acc" in h for h in r["history"])
    # Same seed, same initial weights for every arm: the paired design.
    cells = spec.cells()
    first = torch.load(out / "init" / "reference-cnn-seed0.pt", weights_only=True)
    assert all(torch.is_tensor(v) for v in first.values())
    # A finished cell is not retrained: delete one result, rerun, only that one comes back.
    victim = cell_dir(out, cells[3]) / "result.json"
    before = {c.arm + str(c.seed): (cell_dir(out, c) / "result.json").stat().st_mtime_ns for c in cells}
    victim.unlink()
    run_study(spec, out, jobs=1, progress=False)
    after = {c.arm + str(c.seed): (cell_dir(out, c) / "result.json").stat().st_mtime_ns for c in cells}
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [cells[3].arm + str(cells[3].seed)]

    paths = render_report(out)
    md = paths["markdown"].read_text()
    assert "| mixup-alpha1 |" in md and "Paired comparisons" in md
    assert (out / "figures" / "accuracy_vs_alpha.png").exists()
    assert (out / "figures" / "reliability.png").exists()
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 3  # figures embedded: self-contained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparisons"]["mixup-alpha0.2"]["baseline"] == "none"


def test_study_cli_with_two_jobs(toy_npz: Path, tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(TOY_STUDY.format(npz=toy_npz).replace("alpha = [0.2, 1.0, 4.0]", "alpha = [0.2]"))
    assert (
        main(["study", str(toml), "--out", str(tmp_path / "s"), "--jobs", "2", "--epochs", "1", "--no-progress"]) == 0
    )
    assert len(list((tmp_path / "s" / "cells").glob("*/seed*/result.json"))) == 4
    assert main(["report", str(tmp_path / "s"), "--no-preview"]) == 0
    assert main(["study", "nope", "--out", str(tmp_path / "t")]) == 2
