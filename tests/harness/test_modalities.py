"""Beyond images: the harness on tabular rows (N, F) and sequences (N, T, F)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vicinal.experiments.cli import main
from vicinal.experiments.loader import (
    InMemoryLoader,
    check_data_fits,
    check_mixing_fits,
    input_kind,
    to_model_input,
)
from vicinal.experiments.metrics import evaluate_all, fgsm_accuracy
from vicinal.experiments.models import GRUClassifier, build_model, check_model_input
from vicinal.experiments.report.plots import preview_grid
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import parse_study
from vicinal.sampling import MixConfig
from vicinal.torch.manifold import ManifoldMixup


def tabular(n: int = 300, f: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes, each shifting its own feature by +2: float32 (n, f), int64 (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, f))
    x[np.arange(n), y] += 2.0
    return x.astype(np.float32), y.astype(np.int64)


def sequences(n: int = 300, t: int = 5, f: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes, each shifting its own feature at the last step by +2: float32 (n, t, f)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, t, f))
    x[np.arange(n), -1, y] += 2.0
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("modalities")
    paths = {}
    for name, make in (("tab", tabular), ("seq", sequences)):
        x, y = make()
        paths[name] = root / f"{name}.npz"
        np.savez(paths[name], x=x, y=y, class_names=np.array(["a", "b", "c"]))
    return paths


# --------------------------------------------------------------------------- inputs


def test_input_kind_and_model_input() -> None:
    images = torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)
    assert input_kind(images) == "images" and input_kind(images.numpy()) == "images"
    assert input_kind(torch.zeros(2, 5)) == input_kind(np.zeros((2, 4, 5))) == "features"
    scaled = to_model_input(images, channels_last=True)
    assert scaled.dtype == torch.float32 and float(scaled.max()) == 1.0
    assert scaled.is_contiguous(memory_format=torch.channels_last)
    rows = torch.randn(4, 5)
    assert to_model_input(rows, channels_last=True) is rows  # features pass through, not copied
    assert to_model_input(rows.double()).dtype == torch.float32
    for bad in (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 1, 3, 3), torch.zeros(2)):
        with pytest.raises(ValueError, match=r"images must be uint8 images \(N, C, H, W\) or float features"):
            input_kind(bad)
    with pytest.raises(ValueError, match="x must be uint8 images or float features, got torch.int64"):
        to_model_input(torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("make", [tabular, sequences], ids=["tabular", "sequences"])
def test_loader_mixes_feature_rows_without_touching_the_data(
    make: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    x, y = make(n=40)
    stored = torch.from_numpy(x.copy())
    plain = InMemoryLoader(stored, y, num_classes=3, batch_size=16, seed=1)
    mixed = InMemoryLoader(stored, y, num_classes=3, batch_size=16, seed=1, mix=MixConfig(alpha=1.0, pairing="roll"))
    order = plain.order(0)
    (xp, tp), (xm, tm) = next(iter(plain.epoch(0))), next(iter(mixed.epoch(0)))
    assert xp.dtype == xm.dtype == torch.float32 and xp.shape == xm.shape == (16, *x.shape[1:])
    torch.testing.assert_close(xp, torch.from_numpy(x[order[:16]]), rtol=0, atol=0)  # unscaled rows
    assert torch.equal(tp, torch.nn.functional.one_hot(torch.from_numpy(y[order[:16]]), 3).float())
    # roll pairing: row i is mixed with row i-1 of the batch, with the weight its target holds.
    lam = tm.gather(1, torch.from_numpy(y[order[:16]])[:, None])[:, 0]
    same_class = y[order[:16]] == np.roll(y[order[:16]], 1)
    partner = xp.roll(1, 0)
    want = lam.view(-1, *[1] * (xp.ndim - 1)) * xp + (1 - lam.view(-1, *[1] * (xp.ndim - 1))) * partner
    rows = ~torch.from_numpy(same_class)  # where classes differ, the target gives lambda exactly
    torch.testing.assert_close(xm[rows], want[rows], rtol=1e-5, atol=1e-5)
    assert not torch.equal(xm, xp)
    assert torch.equal(stored, torch.from_numpy(x))  # in-place mixing worked on a copy


@pytest.mark.parametrize("method", ["cutmix", "switch"])
def test_cutmix_is_refused_on_features(method: str) -> None:
    x, y = tabular(n=20)
    config = MixConfig(method)  # type: ignore[arg-type]
    message = rf"method='{method}' pastes image boxes \(CutMix\).*features of shape \(6,\): use --method mixup"
    with pytest.raises(ValueError, match=message):
        InMemoryLoader(x, y, num_classes=3, mix=config)
    with pytest.raises(ValueError, match=message):
        check_data_fits(torch.from_numpy(x), model="mlp", mix=config)
    check_mixing_fits(config, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))  # images: fine
    check_mixing_fits(MixConfig("mixup"), x)
    check_mixing_fits(None, x)


def test_models_refuse_inputs_they_cannot_take_and_the_check_has_no_side_effects() -> None:
    cases = {
        ("reference-cnn", (30,)): r"model 'reference-cnn' needs images \(C, H, W\); this dataset has features of "
        r"shape \(30,\): use --model mlp",
        ("preact-resnet-small", (28, 28)): r"needs images .* sequences of shape \(28, 28\): use --model gru",
        ("gru", (30,)): r"model 'gru' needs sequences \(T, F\); .* features of shape \(30,\): use --model mlp",
        ("gru", (1, 28, 28)): r"images of shape \(1, 28, 28\): use --model reference-cnn .*kind='features'",
        ("mlp", (28, 28)): r"model 'mlp' needs features \(F,\); .* use --model gru",
    }
    state = torch.get_rng_state()
    for (name, shape), message in cases.items():
        with pytest.raises(ValueError, match=message):
            check_model_input(name, shape)
        with pytest.raises(ValueError, match=message):
            build_model(name, shape, 3)
    for name, shape in (("mlp", (30,)), ("gru", (28, 28)), ("reference-cnn", (1, 28, 28))):
        check_model_input(name, shape)
    check_data_fits(torch.zeros(2, 30), model="mlp", mix=MixConfig("mixup"))
    check_data_fits(torch.zeros(2, 28, 28), model="gru", mix=None)
    check_data_fits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), model="reference-cnn", mix=MixConfig("cutmix"))
    assert torch.equal(state, torch.get_rng_state())  # no random numbers drawn by the checks
    with pytest.raises(ValueError, match="use --model mlp"):
        check_data_fits(torch.zeros(4, 30), model="reference-cnn", mix=MixConfig("mixup"))


def test_mlp_and_gru_shapes_and_named_mixing_layers() -> None:
    mlp = build_model("mlp", (6,), 3)
    assert mlp(torch.randn(5, 6)).shape == (5, 3)
    assert {"block1", "block2", "head"} <= dict(mlp.named_modules()).keys()
    gru = build_model("gru", (7, 4), 3)
    assert isinstance(gru, GRUClassifier) and gru(torch.randn(5, 7, 4)).shape == (5, 3)
    assert {"embed", "gru", "head"} <= dict(gru.named_modules()).keys()


def test_manifold_mixup_at_gru_mixes_what_the_head_reads() -> None:
    """Mixing the GRU's output sequence (the first element of its tuple) mixes the last step's state."""
    torch.manual_seed(0)
    model = GRUClassifier(4, 8).eval()
    x, y = torch.randn(8, 5, 4), torch.arange(8)  # one class per sample: targets reveal lambda and partner
    mm = ManifoldMixup(model, ["gru"], MixConfig(alpha=1.0, pairing="permute"), num_classes=8, seed=3)
    logits, targets = mm(x, y, step=0)
    assert mm.last_layer == "gru"
    with torch.no_grad():
        last = model.gru(model.embed(x))[0][:, -1]
        lam = targets.diagonal().clone()
        partner = torch.where(targets.fill_diagonal_(0).sum(1) > 0, targets.argmax(1), torch.arange(8))
        want = model.head(lam[:, None] * last + (1 - lam[:, None]) * last[partner])
    assert (lam < 1).any()
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- metrics and plots


def test_fgsm_on_features_is_not_clipped_to_the_unit_interval() -> None:
    """Features at 5 stay class 0 after a step of 0.1; clipped to [0, 1] they would flip to class 1."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.bias.copy_(torch.tensor([-3.0, 3.0]))
    features, labels = torch.full((10, 1), 5.0), torch.zeros(10, dtype=torch.int64)
    assert fgsm_accuracy(model, features, labels, (0.1,)) == {"0.1": 1.0}
    assert fgsm_accuracy(model, features, labels, (2.5,)) == {"2.5": 0.0}  # ε in feature units: 5 - 2.5 < 3
    metrics = evaluate_all(model, features, labels, epsilons=(0.1,))
    assert metrics["accuracy"] == 1.0 and metrics["fgsm"] == {"0.1": 1.0}


def test_fgsm_of_a_recurrent_model_runs_in_eval_mode() -> None:
    x, y = sequences(n=30)
    model = GRUClassifier(4, 3)
    result = fgsm_accuracy(model, torch.from_numpy(x), torch.from_numpy(y), (0.0, 0.5))
    assert set(result) == {"0.0", "0.5"} and all(0 <= v <= 1 for v in result.values())
    assert not model.training


@pytest.mark.parametrize("shape", [(9, 6), (4, 5, 3)])
def test_preview_grid_draws_features(shape: tuple[int, ...], tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    targets = np.eye(3, dtype=np.float32)[np.arange(shape[0]) % 3]
    path = preview_grid(x, targets, ["a", "b", "c"], tmp_path / "p.png", title="features")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\) images or \(N, F\)"):
        preview_grid(np.zeros(3), targets, ["a", "b", "c"], tmp_path / "q.png")


# --------------------------------------------------------------------------- compare and study


@pytest.mark.parametrize(("name", "model"), [("tab", "mlp"), ("seq", "gru")])
def test_compare_trains_on_feature_npz(name: str, model: str, data_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["compare", "--dataset", str(data_files[name]), "--model", model, "--epochs", "3", "--val-size", "60"]
    assert main([*args, "--sequential", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    accs = {arm["name"]: arm["test_acc"] for arm in results["arms"]}
    assert set(accs) == {"mixup", "none"} and min(accs.values()) > 0.5  # 3 classes: chance is 1/3
    assert (out / "preview.png").exists()


def test_compare_refuses_image_options_on_features(
    data_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["compare", "--dataset", str(data_files["tab"]), "--epochs", "1", "--val-size", "60", "--sequential"]
    assert main([*base, "--model", "mlp", "--method", "cutmix", "--out", str(tmp_path / "a")]) == 2
    assert "method='cutmix' pastes image boxes (CutMix)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert main([*base, "--model", "reference-cnn", "--out", str(tmp_path / "b")]) == 2
    assert "model 'reference-cnn' needs images (C, H, W); this dataset has features of shape (6,): use --model mlp" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("name", "model", "kind"), [("tab", "mlp", "features of shape (6,)"), ("seq", "gru", "sequences")]
)
def test_compare_chooses_the_model_for_the_data_and_says_so(
    name: str, model: str, kind: str, data_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["compare", "--dataset", str(data_files[name]), "--epochs", "1", "--val-size", "60", "--sequential"]
    assert main([*args, "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"vicinal compare: model {model} (the default for {kind}" in said
    assert json.loads((out / "config.json").read_text())["model"] == model
    assert f"Model: {model} (the default for {kind}" in (out / "summary.md").read_text()
    # A model named on the command line is used as it is, and nothing is said about it.
    assert main([*args, "--model", model, "--no-progress", "--out", str(tmp_path / "named")]) == 0
    assert "the default for" not in capsys.readouterr().out


def test_study_on_sequences_records_metrics(data_files: dict[str, Path], tmp_path: Path) -> None:
    spec = parse_study(
        f"""
name = "seq"
seeds = 2
[defaults]
dataset = "{data_files["seq"]}"
model = "gru"
epochs = 2
batch_size = 32
val_size = 60
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
baseline = "none"
"""
    )
    results = run_study(spec, tmp_path / "study", jobs=1, progress=False)
    assert len(results) == 4
    for r in results:
        assert set(r["metrics"]["last"]["fgsm"]) == {"0.01", "0.03", "0.1"}
        assert r["test_acc"] > 0.4


def test_compare_keeps_the_reference_cnn_for_images(toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["compare", "--dataset", str(toy_npz), "--epochs", "1", "--val-size", "100", "--sequential"]
    assert main([*args, "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "reference-cnn"
