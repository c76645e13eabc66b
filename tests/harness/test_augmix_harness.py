"""AugMix, JSD and the corrupted test set in vicinal compare and vicinal study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from toydata import make_toy_npz
from vicinal.experiments.cli import main
from vicinal.experiments.corruptions import CORRUPTIONS
from vicinal.experiments.report.report import render_report
from vicinal.experiments.spec import CompareConfig

QUICK = ["--epochs", "1", "--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]


def test_compare_trains_augmix_with_jsd_and_records_it(toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["compare", "--dataset", str(toy_npz), "--method", "augmix", "--jsd", *QUICK, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "augmix" and saved["jsd"] is True and saved["alpha"] is None
    assert "augmix, JSD x12" in (out / "summary.md").read_text()
    arms = json.loads((out / "results.json").read_text())["arms"]
    assert all(a["test_acc"] > 0 for a in arms)


def test_augmix_on_top_of_mixup_and_refusals(toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["compare", "--dataset", str(toy_npz), "--augmix", *QUICK, "--out", str(out)]) == 0
    assert "mixup, alpha=0.2" in (out / "summary.md").read_text() and "AugMix" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="jsd needs AugMix without input mixing"):
        CompareConfig(method="mixup", augmix=True, jsd=True).validate()
    with pytest.raises(ValueError, match="jsd needs AugMix"):
        CompareConfig(method="cutmix", jsd=True).validate()


def test_a_study_measures_corruptions_and_reports_mce(tmp_path: Path) -> None:
    # A hard toy set (a third of the labels shuffled): every arm makes errors, so mCE is defined.
    data = make_toy_npz(tmp_path / "hard.npz", n=600)
    with np.load(data) as z:
        x, y = z["x"], z["y"].copy()
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < 0.33
    y[flip] = rng.integers(0, 3, flip.sum())
    np.savez(data, x=x, y=y, class_names=np.array(["top", "middle", "bottom"]))
    study = tmp_path / "robust.toml"
    study.write_text(
        f"name='robust'\nseeds=2\n[defaults]\ndataset='{data}'\nepochs=1\nbatch_size=32\nval_size=100\n"
        "corruptions=true\n[[arms]]\nname='none'\nmethod='none'\n"
        "[[arms]]\nname='augmix'\nmethod='augmix'\njsd=true\nbaseline='none'\n"
    )
    out = tmp_path / "study"
    assert main(["study", str(study), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "cells" / "augmix" / "seed0" / "result.json").read_text())
    table = result["metrics"]["last"]["corruptions"]
    assert set(table) == set(CORRUPTIONS) and all(len(v["acc"]) == 5 and len(v["ece"]) == 5 for v in table.values())
    assert (out / "corruptions").is_dir()  # the corrupted copies are cached once per study
    paths = render_report(out, preview=False)
    md = paths["markdown"].read_text()
    section = md[md.index("## Robustness to corruptions") :].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert "vs none" in rows["augmix"]  # mCE against its baseline, paired by seed
    assert rows["none"].split("|")[5].strip() == "–"  # the baseline has no baseline
    assert (out / "figures" / "corruptions.png").exists()
    # The paired test of the mean corruption error: a difference with its interval and a p-value.
    paired = md[md.index("## Paired comparisons") :].split("\n## ")[0]
    header = next(line for line in paired.splitlines() if line.startswith("| arm |"))
    row = next(line for line in paired.splitlines() if line.startswith("| augmix | none |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert re.fullmatch(
        r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", cells["Δ mean corruption error (points) [95% CI]"]
    )
    assert 0 < float(cells["its paired t p"]) <= 1
    settings = md[md.index("## Settings that ran") :]
    assert f"Data: {tmp_path / 'hard.npz'}" in settings and "stratified shuffle" in settings
