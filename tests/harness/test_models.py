"""The models of the field (PreAct ResNet-18, WRN-28-10), the registry's suggestions, and
``--model package.module:factory`` for your own network: imported, called with the number
of classes and the input shape, checked on one batch before any work, and refused with
one line naming the option when anything is wrong."""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vicinal import MixConfig
from vicinal.experiments import models
from vicinal.experiments.cli import main
from vicinal.experiments.models import (
    MODEL_FOR_DATA,
    PreActResNet18,
    WideResNet,
    available_models,
    build_model,
    check_model_name,
    check_model_on_batch,
    load_user_factory,
    model_mix_layers,
)
from vicinal.experiments.spec import CompareConfig, RunSpec
from vicinal.torch.manifold import ManifoldMixup

QUICK = ["--epochs", "1", "--batch-size", "32", "--val-size", "100", "--train-limit", "200", "--test-limit", "100"]
QUICK += ["--sequential", "--threads", "1", "--no-progress"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- the paper's networks


def test_preact_resnet18_is_the_mixup_papers_network() -> None:
    model = build_model("preact-resnet18", (3, 32, 32), 10)
    assert isinstance(model, PreActResNet18)
    # facebookresearch/mixup-cifar10's ResNet18 (PreActBlock, [2, 2, 2, 2]): Kuang Liu's
    # PreActResNet18 (11,171,146) plus the stem's BatchNorm (64 weights, 64 biases).
    assert n_params(model) == 11_171_146 + 128
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.linear.in_features == 512
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    # BN-ReLU after the stem, none before the pool (unlike He et al.'s and Liu's).
    assert [n for n, m in model.named_children() if isinstance(m, nn.BatchNorm2d)] == ["bn1"]
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    # Grey 28x28 MedMNIST images and 100 classes: the pool is global.
    assert build_model("preact-resnet18", (1, 28, 28), 100)(torch.rand(2, 1, 28, 28)).shape == (2, 100)


def test_wrn_28_10_architecture_on_two_cifar_images() -> None:
    torch.manual_seed(0)
    model = build_model("wrn-28-10", (3, 32, 32), 10)
    assert isinstance(model, WideResNet)
    assert n_params(model) == 36_479_194  # Zagoruyko & Komodakis' WRN-28-10 on CIFAR-10 (36.5M)
    assert [len(model.block1), len(model.block2), len(model.block3)] == [4, 4, 4]
    assert (model.block1[0].conv1.out_channels, model.block3[-1].conv2.out_channels) == (160, 640)
    assert all(b.dropout == 0.0 for g in (model.block1, model.block2, model.block3) for b in g)
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # He-normal convolutions (fan out): 640 x 640 x 3 x 3 weights, their std within 1 %
    # of sqrt(2 / (9 * 640)) (3.7M draws: the sample std's relative error is ~0.04 %).
    w = model.block3[1].conv1.weight.detach()
    assert math.isclose(float(w.std()), math.sqrt(2 / (9 * 640)), rel_tol=0.01)
    assert abs(float(w.mean())) < 4 * math.sqrt(2 / (9 * 640)) / math.sqrt(w.numel())
    assert torch.all(model.fc.bias == 0) and torch.all(model.bn.weight == 1)


def test_wide_resnet_depths_and_a_training_step_of_a_small_one() -> None:
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen=2, in_channels=3, num_classes=4, dropout=0.3).train()
    assert len(model.block1) == 1
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_suggested_manifold_layers_are_modules_and_mix() -> None:
    shapes = {"mlp": (12,), "gru": (5, 4)}
    for name in available_models():
        layers = model_mix_layers(name)
        if not layers:
            continue
        model = build_model(name, shapes.get(name, (3, 8, 8)), 3)
        ManifoldMixup(model, layers, MixConfig(alpha=2.0, pairing="permute"), num_classes=3)  # names check
    model = build_model("preact-resnet18", (3, 8, 8), 3)
    mix = ManifoldMixup(model, ("layer1",), MixConfig(alpha=2.0, pairing="permute"), num_classes=3, seed=0)
    logits, targets = mix(torch.rand(6, 3, 8, 8), torch.arange(6) % 3, step=0)
    assert logits.shape == (6, 3) and targets.shape == (6, 3) and torch.allclose(targets.sum(1), torch.ones(6))


def test_refusals_suggest_the_models_that_fit() -> None:
    with pytest.raises(ValueError, match=r"needs images \(C, H, W\).*features of shape \(30,\): use --model mlp"):
        build_model("preact-resnet18", (30,), 2)
    with pytest.raises(ValueError, match=r"needs images.*use --model gru"):
        build_model("wrn-28-10", (28, 28), 2)
    with pytest.raises(ValueError) as info:
        build_model("mlp", (3, 32, 32), 10)
    assert "use --model reference-cnn (or preact-resnet-small, preact-resnet18, wrn-28-10)" in str(info.value)


def test_one_place_for_the_model_of_each_layout() -> None:
    # spec follows models.py: no second table.
    assert not hasattr(models, "_IMAGE_MODELS")
    for ndim, shape in ((1, (7,)), (2, (5, 3)), (3, (1, 8, 8))):
        assert RunSpec().for_data(shape).model == MODEL_FOR_DATA[ndim] == models.model_for_data(shape)
    with pytest.raises(ValueError, match="no default model"):
        RunSpec().for_data((1, 2, 3, 4))
    from vicinal.experiments import spec

    assert "MODEL_FOR_DATA" not in spec.__all__ and "model_for_data" not in spec.__all__


def test_models_module_declares_its_public_names() -> None:
    public = {
        name
        for name, obj in vars(models).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == models.__name__
    }
    assert public <= set(models.__all__)
    assert all(hasattr(models, name) for name in models.__all__)


# --------------------------------------------------------------------------- your own model

USER_MODULE = """
import torch
from torch import nn


def factory(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


class Builders:
    @staticmethod
    def create(num_classes, input_shape):
        return factory(num_classes, input_shape)


def wrong_width(num_classes, input_shape):
    return factory(num_classes + 1, input_shape)


class _NaN(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.full((x.shape[0], self.num_classes), float("nan")) * self.w


def nan_logits(num_classes, input_shape):
    return _NaN(num_classes)


def raises(num_classes, input_shape):
    raise RuntimeError("no GPU here\\nsecond line")


def not_a_module(num_classes, input_shape):
    return "resnet"


def forward_fails(num_classes, input_shape):
    return nn.Linear(3, num_classes)


def takes_one(num_classes):
    return nn.Linear(1, num_classes)


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package ``usernets`` on sys.path holding ``mod`` (the factories above) and ``broken``."""
    pkg = tmp_path / "userpkgs" / "usernets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent(USER_MODULE))
    (pkg / "broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path / "userpkgs"))
    for name in [m for m in sys.modules if m.startswith("usernets")]:
        monkeypatch.delitem(sys.modules, name)
    return "usernets"


def test_user_factory_is_imported_and_called_with_classes_and_shape(user_package: str) -> None:
    model = build_model("usernets.mod:factory", (3, 4, 5), 7)
    assert model(torch.rand(2, 3, 4, 5)).shape == (2, 7)
    assert build_model("usernets.mod:Builders.create", (1, 2, 2), 3)(torch.rand(1, 1, 2, 2)).shape == (1, 3)
    check_model_on_batch("usernets.mod:factory", torch.rand(4, 3, 4, 5), 7)
    assert check_model_name("usernets.mod:factory") == "usernets.mod:factory"


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        (
            "usernets.nope:factory",
            r"--model 'usernets.nope:factory': can't import 'usernets.nope' \(ModuleNotFoundError",
        ),
        (
            "usernets.broken:f",
            r"can't import 'usernets.broken' \(ModuleNotFoundError: No module named 'no_such_dependency_xyz'\)",
        ),
        ("usernets.mod:missing", r"--model 'usernets.mod:missing': module 'usernets.mod' has no attribute 'missing'"),
        ("usernets.mod:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a callable factory"),
        ("usernets.mod:", r"expected a registered model \(gru, .*\) or package.module:factory"),
        ("not a module:x", r"expected a registered model"),
    ],
)
def test_user_factory_name_refused_before_anything_runs(user_package: str, name: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_model_name(name)
    with pytest.raises(ValueError, match=pattern):
        CompareConfig(model=name).validate()


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        ("raises", r"raises\(num_classes=3, input_shape=\(1, 16, 16\)\) failed: RuntimeError: no GPU here$"),
        ("not_a_module", r"returned a str, expected a torch.nn.Module"),
        ("takes_one", r"takes_one\(num_classes=3, input_shape=\(1, 16, 16\)\) failed: TypeError"),
        ("forward_fails", r"the model failed on a batch of 4 images of shape \(1, 16, 16\): RuntimeError"),
        ("wrong_width", r"logits of shape \(4, 4\), expected a float \(B, num_classes\) = \(4, 3\)"),
        ("nan_logits", r"returned NaN or inf logits"),
    ],
)
def test_user_model_checked_on_one_batch_before_any_work(
    user_package: str, toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str, pattern: str
) -> None:
    out = tmp_path / "run"
    code = main(["compare", "--dataset", str(toy_npz), "--model", f"usernets.mod:{factory}", *QUICK, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"vicinal: error: --model 'usernets.mod:{factory}': ")
    assert re.search(pattern, err), err
    assert not out.exists()  # refused before anything was written


def test_compare_and_study_train_a_user_model(user_package: str, toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(["compare", "--dataset", str(toy_npz), "--model", "usernets.mod:factory", *QUICK, "--out", str(out)]) == 0
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "usernets.mod:factory"
    result = json.loads((out / "mixup" / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 1 and len(result["history"]) == 1

    study = tmp_path / "study.toml"
    study.write_text(
        f'name = "own"\nseeds = 1\n[defaults]\ndataset = "{toy_npz}"\nmodel = "usernets.mod:factory"\n'
        "epochs = 1\nbatch_size = 64\nval_size = 100\ntrain_limit = 200\ntest_limit = 100\n"
        '[[arms]]\nname = "none"\nmethod = "none"\n'
    )
    assert main(["study", str(study), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    cell = json.loads((tmp_path / "s" / "cells" / "none" / "seed0" / "cell.json").read_text())
    assert cell["model"] == "usernets.mod:factory"


def test_a_module_in_the_current_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "herenet_for_vicinal_test.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "herenet_for_vicinal_test", raising=False)
    factory = load_user_factory("herenet_for_vicinal_test:factory")
    assert factory(2, (1, 2, 2))(torch.rand(1, 1, 2, 2)).shape == (1, 2)
    assert sys.path[-1] == str(tmp_path)  # searched last: installed packages win
    monkeypatch.delitem(sys.modules, "herenet_for_vicinal_test")


def test_registered_names_cannot_look_like_factories() -> None:
    with pytest.raises(ValueError, match="can't contain ':'"):
        models.register_model("a:b")


def test_help_names_the_models_and_the_factory_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "package.module:factory" in text and "preact-resnet18" in text and "wrn-28-10" in text


def test_builds_are_reproducible_and_leave_the_global_rng_alone(user_package: str) -> None:
    torch.manual_seed(3)
    a = build_model("preact-resnet18", (3, 8, 8), 5).state_dict()
    torch.manual_seed(3)
    b = build_model("preact-resnet18", (3, 8, 8), 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 1, 3, 3)
    state = torch.random.get_rng_state()
    check_model_on_batch("usernets.mod:factory", x, 4)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_equal(len(available_models()), len(set(available_models())))
