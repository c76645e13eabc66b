"""Metrics, statistics, label noise, studies and reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toydata import fake_result
from vicinal.experiments.cli import main
from vicinal.experiments.metrics import brier, fgsm_accuracy, nll, reliability
from vicinal.experiments.noise import symmetric_label_noise
from vicinal.experiments.presets import PRESETS
from vicinal.experiments.report.report import render_report
from vicinal.experiments.runs.cells import init_path
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import cell_dir, load_study, parse_study


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
    assert set(PRESETS) == {
        "reference", "alpha", "methods", "noise", "long", "lowdata", "lowdata-noise", "lowdata-manifold",
        "modalities-tabular", "modalities-sequence", "robustness", "family",
        "cifar10-mixup-paper", "cifar100-mixup-paper", "cifar10-quick",
        "medmnist-pathmnist", "medmnist-dermamnist", "medmnist-bloodmnist", "medmnist-organamnist",
    }  # fmt: skip


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


def test_study_runs_skips_finished_cells_and_reports(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vicinal.experiments.runs.cells as train_module

    # Record the weights every cell's model holds when its training starts.
    started: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    train_arm = train_module.train_arm

    def recording_train_arm(name: str, model: nn.Module, *args, out_dir: Path, **kwargs):  # type: ignore[no-untyped-def]
        seed = int(Path(out_dir).name.removeprefix("seed"))
        started[(name, seed)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return train_arm(name, model, *args, out_dir=out_dir, **kwargs)

    monkeypatch.setattr(train_module, "train_arm", recording_train_arm)
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
    # Same seed, same initial weights for every arm (the paired design), tensor by tensor;
    # different seeds, different initial weights.
    cells = spec.cells()
    assert set(started) == {(c.arm, c.seed) for c in cells}
    for cell in cells:
        first = started[(spec.arms[0].arm, cell.seed)]
        saved = torch.load(init_path(out, cell), weights_only=True)
        weights = started[(cell.arm, cell.seed)]
        assert weights.keys() == first.keys() == saved.keys()
        for key, tensor in weights.items():
            assert torch.equal(tensor, first[key]) and torch.equal(tensor, saved[key]), (cell.arm, cell.seed, key)
    seed0, seed1 = (started[(spec.arms[0].arm, s)] for s in spec.seeds[:2])
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0 if seed0[k].is_floating_point())
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
    # The forest plot of paired differences comes first, the tables below it.
    assert (out / "figures" / "forest.png").exists()
    assert md.index("![Differences from the baseline](figures/forest.png)") < md.index("## Results")
    assert md.count("| mixup-alpha") == 9  # 3 arms, each in the results, comparison and settings tables
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 4  # figures embedded: self-contained
    assert html.index('id="forest"') < html.index("<table")
    assert (
        "<td>mixup-alpha1</td>" in html
        and ">nan<" not in html.lower()
        and "n/a</td>" not in html
        and "[n/a]" not in html
    )
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_no_nan)
    assert summary["comparisons"]["mixup-alpha0.2 vs none"]["baseline"] == "none"
    assert summary["comparisons"]["mixup-alpha0.2 vs none"]["acc_last"]["perm_exact"] is True


def _no_nan(token: str) -> None:
    raise AssertionError(f"summary.json holds {token}")


def test_report_of_one_seed_shows_na_and_escapes_text(tmp_path: Path) -> None:
    from dataclasses import asdict, replace

    from vicinal.experiments.spec import CellSpec

    root = tmp_path / "one-seed"
    odd = 'mix<up>&"x"'  # a legal folder name that is also markup
    arms = [
        CellSpec(arm="none", method="none", dataset="toy"),
        CellSpec(arm=odd, method="mixup", alpha=0.2, baseline="none", dataset="toy"),
    ]
    record = {
        "name": "<b>one</b>",
        "description": "<script>alert(1)</script>",
        "seeds": [0],
        "arms": [asdict(a) for a in arms],
    }
    root.mkdir()
    (root / "study.json").write_text(json.dumps(record))
    for arm, acc in zip(arms, (0.80, 0.83)):
        d = cell_dir(root, replace(arm, seed=0))
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(fake_result(acc)))

    paths = render_report(root, preview=False)
    md = paths["markdown"].read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| {odd} | none |"))
    # One seed: a difference, but no interval and no test.
    assert "+3.00 [n/a]" in row and row.count("n/a") >= 3 and "nan" not in md.lower()
    assert (root / "figures" / "forest.png").exists()
    html = paths["html"].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>one</b>" not in html and "mix&lt;up&gt;&amp;" in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert '+3.00<span class="detail">[n/a]</span>' in text and not re.search(r"\bnan\b", text, re.IGNORECASE)
    json.loads((root / "summary.json").read_text(), parse_constant=_no_nan)


@pytest.mark.slow
def test_study_cli_with_two_jobs(toy_npz: Path, tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(TOY_STUDY.format(npz=toy_npz).replace("alpha = [0.2, 1.0, 4.0]", "alpha = [0.2]"))
    assert (
        main(["study", str(toml), "--out", str(tmp_path / "s"), "--jobs", "2", "--epochs", "1", "--no-progress"]) == 0
    )
    assert len(list((tmp_path / "s" / "cells").glob("*/seed*/result.json"))) == 4
    assert main(["report", str(tmp_path / "s"), "--no-preview"]) == 0
    assert main(["study", "nope", "--out", str(tmp_path / "t")]) == 2


def test_study_device_is_checked_before_anything_is_written(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(TOY_STUDY.format(npz=toy_npz))
    out = tmp_path / "s"
    assert main(["study", str(toml), "--out", str(out), "--device", "tpu", "--no-progress"]) == 2
    assert "--device" in capsys.readouterr().err and not out.exists()
    if not torch.cuda.is_available():
        assert main(["study", str(toml), "--out", str(out), "--device", "cuda", "--no-progress"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="CPU only"):
        run_study(load_study(str(toml)), out, batch_seeds=True, device="cuda")
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_study_cell_on_cuda_matches_its_cpu_accuracy(toy_npz: Path, tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(TOY_STUDY.format(npz=toy_npz).replace("alpha = [0.2, 1.0, 4.0]", "alpha = [0.2]"))
    spec = load_study(str(toml), overrides={"epochs": 1}, seeds=1)
    cpu = run_study(spec, tmp_path / "cpu", progress=False)
    gpu = run_study(spec, tmp_path / "gpu", progress=False, device="cuda")
    for a, b in zip(cpu, gpu):
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.05


def test_robustness_preset_measures_corruptions_on_the_lowdata_recipe() -> None:
    spec = load_study("robustness")
    arms = {a.arm: a for a in spec.arms}
    assert set(arms) == {"none", "mixup", "cutmix", "augmix-jsd", "augmix-mixup"} and len(spec.seeds) == 5
    assert all(a.corruptions and a.train_limit == 10_000 and a.epochs == 30 for a in spec.arms)
    assert arms["augmix-jsd"].jsd and arms["augmix-mixup"].augmix and arms["augmix-mixup"].method == "mixup"


def test_the_family_preset_holds_the_static_family_on_the_robustness_recipe() -> None:
    family = load_study("family")
    arms = {a.arm: a for a in family.arms}
    assert len(family.seeds) == 5 and {a.train_limit for a in family.arms} == {10_000}
    assert {a.method for a in family.arms} == {
        "none", "mixup", "cutmix", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix", "switch",
        "regmixup", "mit",
    }  # fmt: skip
    assert all(a.corruptions for a in family.arms)
    assert arms["mixup"].alpha == 1.0 and arms["regmixup"].alpha == 20.0 and arms["mit"].mit_margin == 0.5
    assert arms["fmix"].baseline == "none,mixup"
