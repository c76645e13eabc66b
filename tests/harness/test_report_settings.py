"""A study's report states the settings that actually ran, overrides included."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from toydata import fake_result
from vicinal.experiments.report.report import render_report
from vicinal.experiments.spec import cell_dir, parse_study


def test_report_states_the_settings_that_ran_not_the_preset(tmp_path: Path) -> None:
    preset = (
        "name='p'\ndescription='ten epochs on everything'\n[defaults]\ndataset='toy'\nepochs=10\npairing='stream'\n"
        "[[arms]]\nname='none'\nmethod='none'\n[[arms]]\nname='mixup'\nmethod='mixup'\nalpha=0.4\nbaseline='none'\n"
    )
    spec = parse_study(preset, overrides={"epochs": 2, "train_limit": 300}, seeds=2)
    root = tmp_path / "study"
    root.mkdir()
    record = {"name": spec.name, "description": spec.description, "seeds": list(spec.seeds)}
    record["arms"] = [asdict(a) for a in spec.arms]
    (root / "study.json").write_text(json.dumps(record))
    for arm in spec.arms:
        for seed, acc in ((0, 0.8), (1, 0.81)):
            d = cell_dir(root, replace(arm, seed=seed))
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps(fake_result(acc + (0.01 if arm.method == "mixup" else 0))))
    md = render_report(root, preview=False)["markdown"].read_text()
    settings = md[md.index("## Settings that ran") :]
    assert "epochs=2" in settings and "train_limit=300" in settings and "epochs=10" not in settings
    assert "seeds 0, 1" in settings
    rows = {line.split("|")[1].strip(): line for line in settings.splitlines() if line.startswith("| ")}
    assert "stream" in rows["mixup"] and "0.4" in rows["mixup"]
    assert "stream" not in rows["none"]  # the default pairing is not an option of no mixing
    html = (root / "report.html").read_text()
    assert "Settings that ran" in html and "train_limit=300" in html


def test_an_arm_can_be_compared_with_several_baselines(tmp_path: Path) -> None:
    preset = (
        "[defaults]\ndataset='toy'\n[[arms]]\nname='none'\nmethod='none'\n"
        "[[arms]]\nname='mixup'\nmethod='mixup'\nbaseline='none'\n"
        "[[arms]]\nname='manifold'\nmethod='manifold'\nmix_layers=['input','fc']\nbaseline='mixup,none'\n"
    )
    spec = parse_study(preset, seeds=3)
    root = tmp_path / "study"
    root.mkdir()
    record = {"name": "s", "description": "", "seeds": [0, 1, 2], "arms": [asdict(a) for a in spec.arms]}
    (root / "study.json").write_text(json.dumps(record))
    gains = {"none": 0.0, "mixup": 0.01, "manifold": 0.02}
    for arm in spec.arms:
        for seed in range(3):
            d = cell_dir(root, replace(arm, seed=seed))
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps(fake_result(0.8 + gains[arm.arm] + 0.001 * seed)))
    render_report(root, preview=False)
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["comparisons"]) == {"mixup vs none", "manifold vs mixup", "manifold vs none"}
    assert summary["comparisons"]["manifold vs none"]["acc_last"]["mean"] == pytest.approx(0.02)
    assert summary["comparisons"]["manifold vs mixup"]["acc_last"]["mean"] == pytest.approx(0.01)
    md = (root / "report.md").read_text()
    assert "| manifold | mixup |" in md and "| manifold | none |" in md


def test_settings_show_each_arms_method_with_its_own_parameters_only(tmp_path: Path) -> None:
    """A robustness-style study: AugMix as a method is not 'augmix=False' common to every
    arm, and a flag that is off is no setting of the arms without it."""
    pytest.importorskip("kornia")
    preset = (
        "[defaults]\ndataset='toy'\npairing='stream'\n"
        "[[arms]]\nname='none'\nmethod='none'\n"
        "[[arms]]\nname='mixup'\nmethod='mixup'\nalpha=1.0\nbaseline='none'\n"
        "[[arms]]\nname='augmix-jsd'\nmethod='augmix'\njsd=true\nbaseline='none'\n"
    )
    spec = parse_study(preset, seeds=2)
    root = tmp_path / "study"
    root.mkdir()
    record = {"name": "r", "description": "", "seeds": [0, 1], "arms": [asdict(a) for a in spec.arms]}
    (root / "study.json").write_text(json.dumps(record))
    for arm in spec.arms:
        for seed in range(2):
            d = cell_dir(root, replace(arm, seed=seed))
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps(fake_result(0.8 + 0.001 * seed)))
    md = render_report(root, preview=False)["markdown"].read_text()
    settings = md[md.index("## Settings that ran") :]
    common = next(line for line in settings.splitlines() if line.startswith("Common to every arm"))
    assert "augmix=" not in common and "jsd=" not in common
    header = next(line for line in settings.splitlines() if line.startswith("| arm"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {
        cells[0]: dict(zip(columns, cells))
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in settings.splitlines())
        if cells and cells[0] in ("none", "mixup", "augmix-jsd")
    }
    assert rows["augmix-jsd"]["method"] == "augmix" and rows["augmix-jsd"]["jsd"] == "True"
    assert rows["none"]["jsd"] == "–" and rows["mixup"]["jsd"] == "–"
    assert "augmix" not in columns  # no arm has AugMix on top of its method
    assert rows["mixup"]["alpha"] == "1.0" and rows["none"]["alpha"] == "–"
