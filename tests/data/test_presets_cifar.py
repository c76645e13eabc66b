"""The presets of the field: the mixup paper's CIFAR comparisons, a CPU-sized CIFAR-10
study, and MedMNIST's none / mixup / CutMix studies.

The paper presets' settings are held to the paper's code (facebookresearch/mixup-cifar10,
train.py) and their descriptions to the paper's Table 2. ``cifar10-quick`` and one epoch of
``cifar100-mixup-paper`` run end to end through ``vicinal study --data-dir`` on CIFAR
tarballs generated here in the official pickle layout (their checksums registered for
the test by the ``register`` fixture: no network, no real data).
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vicinal.experiments.cli import main
from vicinal.experiments.data import registry
from vicinal.experiments.data.cifar import CifarMember
from vicinal.experiments.data.specs import RemoteFile
from vicinal.experiments.presets import PRESETS
from vicinal.experiments.spec import load_study


def _batch(rng: np.random.Generator, n: int, labels: dict[bytes, int]) -> dict[bytes, object]:
    """A batch as the official files hold it; each class brightens its own image rows, so a
    network can learn something in one epoch."""
    out: dict[bytes, object] = {b"batch_label": b"generated", b"filenames": [b"%d.png" % i for i in range(n)]}
    first = next(iter(labels))
    ys = {key: rng.integers(0, k, n) for key, k in labels.items()}
    x = rng.integers(0, 80, (n, 3, 32, 32), dtype=np.uint8)
    for i, y in enumerate(ys[first]):
        x[i, :, (3 * int(y)) % 30 : (3 * int(y)) % 30 + 3] += 170
    out[b"data"] = x.reshape(n, 3072)
    out.update({key: [int(v) for v in y] for key, y in ys.items()})
    return out


def _write_cifar(folder: Path, name: str, register, tools, n_train: int, n_test: int) -> Path:
    """A generated tarball of ``name`` (cifar10 or cifar100) in ``folder``, registered with its checksums."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        base, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        keys = {b"labels": 10}
        objects: dict[str, object] = {f"data_batch_{i}": _batch(rng, n_train // 5, keys) for i in range(1, 6)}
        objects["test_batch"] = _batch(rng, n_test, keys)
        objects["batches.meta"] = {b"label_names": [b"class%d" % i for i in range(10)]}
        names = ("cifar10",)
    else:
        base, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        keys = {b"fine_labels": 100, b"coarse_labels": 20}
        objects = {"train": _batch(rng, n_train, keys), "test": _batch(rng, n_test, keys)}
        objects["meta"] = {
            b"fine_label_names": [b"fine%d" % i for i in range(100)],
            b"coarse_label_names": [b"coarse%d" % i for i in range(20)],
        }
        names = ("cifar100", "cifar100:coarse")
    pickles = {k: pickle.dumps(v, protocol=2) for k, v in objects.items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive
    with tarfile.open(path, "w:gz") as tar:
        for member, data in pickles.items():
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for n in names:
        spec = registry.REGISTRY[n]
        members = tuple(CifarMember(m.role, m.name, tools.md5(pickles[m.name])) for m in spec.members)
        register(n, archive=RemoteFile(archive, f"md5:{tools.md5(path.read_bytes())}"), members=members)
    return folder


# --------------------------------------------------------------------------- the paper's settings


@pytest.mark.parametrize(("name", "dataset", "erm", "mixup"), [
    ("cifar10-mixup-paper", "cifar10", "5.6 %", "4.2 %"),
    ("cifar100-mixup-paper", "cifar100", "25.6 %", "21.1 %"),
])  # fmt: skip
def test_paper_presets_follow_the_papers_code_and_cite_its_table(name: str, dataset: str, erm: str, mixup: str) -> None:
    study = load_study(name)
    assert [a.arm for a in study.arms] == ["none", "mixup"] and len(study.seeds) >= 2
    for arm in study.arms:
        # train.py: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs,
        # lr / 10 at 100 and 150, RandomCrop(32, padding=4) + RandomHorizontalFlip, Normalize.
        assert (arm.dataset, arm.model, arm.epochs, arm.batch_size) == (dataset, "preact-resnet18", 200, 128)
        assert (arm.optimizer, arm.lr, arm.momentum, arm.nesterov, arm.weight_decay) == ("sgd", 0.1, 0.9, False, 1e-4)
        assert (arm.schedule, arm.lr_milestones, arm.lr_factor) == ("step", (100, 150), 0.1)
        assert (arm.crop_padding, arm.flip, arm.normalize, arm.label_smoothing) == (4, True, True, 0.0)
    erm_arm, mixup_arm = study.arms
    assert erm_arm.method == "none" and erm_arm.alpha is None
    # mixup_data(): lam = np.random.beta(alpha, alpha) once per batch, index = torch.randperm.
    assert (mixup_arm.method, mixup_arm.alpha, mixup_arm.granularity, mixup_arm.pairing) == (
        "mixup",
        1.0,
        "batch",
        "permute",
    )
    assert mixup_arm.baseline == "none"
    for words in ("Table 2", "ICLR 2018", erm, mixup, "PreAct ResNet-18"):
        assert words in study.description, words


def test_medmnist_presets_compare_none_mixup_cutmix_over_five_seeds() -> None:
    names = [p for p in PRESETS if p.startswith("medmnist-")]
    assert names == ["medmnist-bloodmnist", "medmnist-dermamnist", "medmnist-organamnist", "medmnist-pathmnist"]
    for name in names:
        study = load_study(name)
        assert len(study.seeds) == 5
        assert [(a.arm, a.method) for a in study.arms] == [("none", "none"), ("mixup", "mixup"), ("cutmix", "cutmix")]
        assert {a.dataset for a in study.arms} == {"medmnist:" + name.removeprefix("medmnist-")}
        for arm in study.arms:  # MedMNIST v2's baseline training
            assert (arm.optimizer, arm.lr, arm.epochs, arm.batch_size) == ("adam", 1e-3, 100, 128)
            assert (arm.schedule, arm.lr_milestones, arm.lr_factor, arm.crop_flip()) == ("step", (50, 75), 0.1, None)
        assert study.arms[1].alpha == 0.2 and study.arms[2].cutmix_alpha == 1.0
        assert all(a.baseline == "none" for a in study.arms[1:])


def test_quick_preset_is_the_paper_recipe_on_a_cpu_budget() -> None:
    quick, paper = load_study("cifar10-quick"), load_study("cifar10-mixup-paper")
    assert [a.arm for a in quick.arms] == [a.arm for a in paper.arms]
    same = (
        "dataset",
        "optimizer",
        "lr",
        "momentum",
        "schedule",
        "crop_padding",
        "flip",
        "normalize",
        "granularity",
        "pairing",
        "alpha",
    )
    for q, p in zip(quick.arms, paper.arms):
        assert {k: getattr(q, k) for k in same} == {k: getattr(p, k) for k in same}
        assert (
            q.model == "preact-resnet-small" and q.epochs <= 10 and q.train_limit is not None and q.train_limit <= 5000
        )
    assert len(quick.cells()) <= 4


# --------------------------------------------------------------------------- end to end on generated data


def test_cifar10_quick_runs_end_to_end_from_a_data_dir(tmp_path: Path, register, tools, capsys) -> None:
    data = _write_cifar(tmp_path / "data", "cifar10", register, tools, n_train=100, n_test=20)
    out = tmp_path / "study"
    overrides = ["--epochs", "1", "--val-size", "20", "--train-limit", "64", "--test-limit", "20"]
    code = main(["study", "cifar10-quick", "--data-dir", str(data), *overrides, "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "study cifar10-quick: 4 cells" in printed
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    for arm in ("none", "mixup"):
        for seed in (0, 1):
            cell = out / "cells" / arm / f"seed{seed}"
            record = json.loads((cell / "cell.json").read_text())
            assert (record["dataset"], record["model"], record["epochs"], record["train_limit"]) == (
                "cifar10", "preact-resnet-small", 1, 64,
            )  # fmt: skip
            recipe = (record["optimizer"], record["lr_milestones"], record["crop_padding"], record["flip"])
            assert recipe == ("sgd", [3, 5], 4, True)
            assert record["normalize"] is True and record["precision"] == "auto"
            assert "every file matched its published checksum" in record["data_source"]
            result = json.loads((cell / "result.json").read_text())
            assert len(result["history"]) == 1 and 0 <= result["test_acc"] <= 1
    # Run again: every cell is finished, nothing is retrained.
    assert (
        main(["study", "cifar10-quick", "--data-dir", str(data), *overrides, "--out", str(out), "--no-progress"]) == 0
    )


def test_cifar100_paper_preset_trains_one_epoch_of_preact_resnet18(tmp_path: Path, register, tools) -> None:
    data = _write_cifar(tmp_path / "data", "cifar100", register, tools, n_train=40, n_test=8)
    out = tmp_path / "study"
    args = ["study", "cifar100-mixup-paper", "--data-dir", str(data), "--seeds", "1", "--epochs", "1"]
    args += ["--val-size", "8", "--train-limit", "16", "--test-limit", "8", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "cells" / "mixup" / "seed0" / "result.json").read_text())
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["train_loss"])
    study = json.loads((out / "study.json").read_text())
    assert {a["model"] for a in study["arms"]} == {"preact-resnet18"}
