"""``vicinal study --batch-seeds``: the seeds of an arm trained as one batched model give,
per seed, what training them one by one gives (float tolerance), and the cells' folders
are those of cells trained alone (result.json, metrics.jsonl, checkpoint, claims).

Tolerance: the batched forward sums in another order (grouped convolutions, batched
matrix products), about 1e-7 relative per pass; after two epochs on the toy data the
losses agree to 1e-4 relative (measured: ~1e-6) and every accuracy is equal. Dropout
masks are equal bit for bit (checked on their own below).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from filelock import FileLock

from toydata import without_wall_clock
from vicinal.experiments.models import build_model
from vicinal.experiments.runs.cells import CLAIM_LOCK, ensure_init
from vicinal.experiments.runs.seed_groups import check_batch_seeds, run_seed_group
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import cell_dir, parse_study
from vicinal.experiments.testing import FAULT_ENV
from vicinal.experiments.training.batched import BatchSeedsUnsupported, Draw, RecordDraws, SeedBatch

RTOL = 1e-4

STUDY = """
name = "batched"
seeds = {seeds}
[defaults]
dataset = "{npz}"
model = "{model}"
epochs = 2
batch_size = 32
val_size = 100
test_limit = 150
{extra}
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
alpha = 1.0
"""


@pytest.fixture(scope="module")
def hard_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toydata's 3 bands, but faint: accuracies stay well below 1 after two epochs."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 700)
    x = rng.integers(0, 120, (700, 16, 16)).astype(np.uint8)
    for c in range(3):
        x[y == c, 5 * c : 5 * c + 5, :] += 36
    path = tmp_path_factory.mktemp("hard") / "hard.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["top", "middle", "bottom"]))
    return path


@pytest.fixture(scope="module")
def tabular_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 12 standardised features, each class shifting its own three."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 12))
    for c in range(3):
        x[y == c, 3 * c : 3 * c + 3] += 1.0
    path = tmp_path_factory.mktemp("tab") / "tab.npz"
    np.savez(path, x=x.astype(np.float32), y=y, class_names=np.array(["a", "b", "c"]))
    return path


def _spec(npz: Path, model: str = "reference-cnn", seeds: int = 2, extra: str = "", arms: str | None = None) -> Any:
    text = STUDY.format(npz=npz, model=model, seeds=seeds, extra=extra)
    if arms is not None:
        text = text[: text.index("[[arms]]")] + arms
    return parse_study(text)


def _close(a: float, b: float, what: str) -> None:
    assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-6), f"{what}: {a} vs {b}"


def _assert_same_results(batched: list[dict[str, Any]], alone: list[dict[str, Any]]) -> None:
    assert len(batched) == len(alone)
    for rb, ra in zip(batched, alone):
        assert rb.keys() == ra.keys()
        assert rb["test_acc"] == ra["test_acc"] and rb["best_epoch"] == ra["best_epoch"]
        assert rb["best_val_acc"] == ra["best_val_acc"]
        _close(rb["test_loss"], ra["test_loss"], "test_loss")
        assert len(rb["history"]) == len(ra["history"])
        for hb, ha in zip(rb["history"], ra["history"]):
            assert hb.keys() == ha.keys()
            for key in ("train_acc", "val_acc", "test_acc", "epoch"):
                assert hb[key] == ha[key], (rb["name"], hb["epoch"], key, hb[key], ha[key])
            for key in ("train_loss", "val_loss", "test_loss"):
                _close(hb[key], ha[key], f"{rb['name']} epoch {hb['epoch']} {key}")
        assert rb["metrics"].keys() == ra["metrics"].keys() == {"last", "best"}
        for which in ("last", "best"):
            mb, ma = rb["metrics"][which], ra["metrics"][which]
            assert mb.keys() == ma.keys()
            assert mb["accuracy"] == ma["accuracy"] and mb["fgsm"] == ma["fgsm"]
            for key in ("nll", "brier", "ece"):
                _close(mb[key], ma[key], f"{which} {key}")


def test_dropout_masks_equal_those_of_the_plain_ops() -> None:
    # F.dropout (the MLP's nn.Dropout) and torch.rand_like (the reference CNN), in the
    # layouts the plain model uses, against their replay from a generator seeded alike.
    x = torch.randn(32, 128)
    torch.manual_seed(123)
    plain = F.dropout(x, 0.2, True)
    draw = Draw(tuple(x.shape), tuple(x.stride()), x.dtype, 0.2)
    assert torch.equal(plain, x * draw.sample(torch.Generator().manual_seed(123)))
    y = torch.randn(32, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(7)
    plain = torch.rand_like(y)
    replay = Draw(tuple(y.shape), tuple(y.stride()), y.dtype).sample(torch.Generator().manual_seed(7))
    assert torch.equal(plain, replay)
    # The recorded draws of the models: their shapes, layouts and rates.
    for name, shape, expected in (("reference-cnn", (1, 16, 16), 1), ("mlp", (12,), 2)):
        model = build_model(name, shape, 3).train()
        recorder = RecordDraws()
        with recorder:
            model(torch.zeros(4, *shape))
        assert len(recorder.draws) == expected, name


@pytest.mark.parametrize(("model", "shape"), [("reference-cnn", (1, 16, 16)), ("mlp", (12,))])
def test_batched_forward_and_gradients_equal_each_model_alone(model: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    modules = [build_model(model, shape, 3) for _ in range(3)]
    x = [torch.rand(8, *shape) for _ in range(3)]
    forwards = ["vmap", "grouped"] if model == "reference-cnn" else ["vmap"]
    for forward in forwards:
        batch = SeedBatch(build_model(model, shape, 3), [m.state_dict() for m in modules], forward=forward)
        logits = batch(x, batch.noises(x[0], [torch.Generator().manual_seed(10 + s) for s in range(3)]))
        logits.square().sum().backward()
        for s, m in enumerate(modules):
            m.train().zero_grad()
            torch.manual_seed(10 + s)
            alone = m(x[s])
            alone.square().sum().backward()
            torch.testing.assert_close(logits[s], alone, rtol=1e-5, atol=1e-6)
            for name, p in m.named_parameters():
                torch.testing.assert_close(batch.params[name].grad[s], p.grad, rtol=1e-4, atol=1e-6)


def test_reference_cnn_study_matches_one_by_one(hard_npz: Path, tmp_path: Path) -> None:
    spec = _spec(hard_npz, seeds=3)
    batched = run_study(spec, tmp_path / "batched", progress=False, batch_seeds=True, threads=1)
    alone = run_study(spec, tmp_path / "alone", progress=False, threads=1)
    _assert_same_results(batched, alone)
    assert 0.4 < min(r["test_acc"] for r in alone) < 0.99  # not a saturated toy: accuracies can differ
    for cell in spec.cells():
        folder = cell_dir(tmp_path / "batched", cell)
        assert {"result.json", "metrics.jsonl", "checkpoint.pt", "cell.json", "claims.jsonl"} <= {
            p.name for p in folder.iterdir()
        }
        assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
        assert json.loads((folder / "cell.json").read_text())["batch_seeds"] is True
    timing = [json.loads(p.read_text()) for p in (tmp_path / "batched").glob("timing-*.json")]
    assert timing and timing[0]["batch_seeds"] is True


def test_mlp_study_matches_one_by_one(tabular_npz: Path, tmp_path: Path) -> None:
    arms = '[[arms]]\nname = "mixup"\nmethod = "mixup"\nalpha = 1.0\n'
    spec = _spec(tabular_npz, model="mlp", arms=arms)
    batched = run_study(spec, tmp_path / "batched", progress=False, batch_seeds=True, threads=1)
    alone = run_study(spec, tmp_path / "alone", progress=False, threads=1)
    _assert_same_results(batched, alone)


def test_refusals_name_the_arm_and_the_reason(toy_npz: Path, tabular_npz: Path, tmp_path: Path) -> None:
    bn = _spec(toy_npz, model="preact-resnet-small")
    with pytest.raises(BatchSeedsUnsupported, match=r"preact-resnet-small.*BatchNorm2d.*running statistics"):
        run_study(bn, tmp_path / "bn", progress=False, batch_seeds=True)
    assert not (tmp_path / "bn").exists()  # refused before anything is written
    seq_npz = tmp_path / "seq.npz"
    rng = np.random.default_rng(0)
    np.savez(seq_npz, x=rng.normal(size=(300, 6, 4)).astype(np.float32) * 3, y=rng.integers(0, 3, 300))
    with pytest.raises(BatchSeedsUnsupported, match=r"'gru'.*vmap"):
        check_batch_seeds(_spec(seq_npz, model="gru").cells())
    manifold = '[[arms]]\nname = "m"\nmethod = "manifold"\nmix_layers = ["input", "block1"]\n'
    with pytest.raises(BatchSeedsUnsupported, match=r"arm 'm'.*Manifold Mixup"):
        check_batch_seeds(_spec(tabular_npz, model="mlp", arms=manifold).cells())
    augmix = '[[arms]]\nname = "a"\nmethod = "augmix"\njsd = true\n'
    with pytest.raises(BatchSeedsUnsupported, match=r"arm 'a'.*AugMix"):
        check_batch_seeds(_spec(toy_npz, arms=augmix).cells())
    # The command line prints one line for it.
    from vicinal.experiments.cli import main

    toml = tmp_path / "bn.toml"
    toml.write_text(STUDY.format(npz=toy_npz, model="preact-resnet-small", seeds=2, extra=""))
    assert main(["study", str(toml), "--out", str(tmp_path / "cli"), "--batch-seeds", "--no-progress"]) == 2


def test_a_claimed_cell_is_left_to_its_holder(toy_npz: Path, tmp_path: Path) -> None:
    arms = '[[arms]]\nname = "none"\nmethod = "none"\n'
    spec = _spec(toy_npz, seeds=3, arms=arms)
    root = tmp_path / "s"
    cells = spec.cells()
    run_study(spec, root, progress=False, batch_seeds=True, shard="1/2")  # trains seed 1 (alone)
    for cell in cells:
        ensure_init(root, cell)
    held = cells[2]  # seed 2
    cell_dir(root, held).mkdir(parents=True, exist_ok=True)
    with FileLock(cell_dir(root, held) / CLAIM_LOCK):
        out = run_seed_group(str(root), cells, threads=1)
    assert out[2] == (held, None)  # left to the process holding it
    assert out[0][1] is not None and out[1][1] is not None
    assert not (cell_dir(root, held) / "result.json").exists()
    claims = [json.loads(x) for x in (cell_dir(root, cells[1]) / "claims.jsonl").read_text().splitlines()]
    assert len(claims) == 1  # seed 1 was finished: not claimed again


def test_resume_after_a_kill(toy_npz: Path, tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    arms = '[[arms]]\nname = "mixup"\nmethod = "mixup"\nalpha = 1.0\n'
    text = STUDY.format(npz=toy_npz, model="reference-cnn", seeds=2, extra="")
    toml.write_text(text[: text.index("[[arms]]")] + arms)
    args = [sys.executable, "-m", "vicinal", "study", str(toml), "--batch-seeds", "--no-progress", "--threads", "1"]
    env = {**os.environ, FAULT_ENV: "mixup:0"}
    killed = subprocess.run([*args, "--out", str(tmp_path / "k")], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    spec = parse_study(toml.read_text())
    for cell in spec.cells():
        folder = cell_dir(tmp_path / "k", cell)
        assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()
    env.pop(FAULT_ENV)
    again = subprocess.run([*args, "--out", str(tmp_path / "k")], env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    resumed = run_study(spec, tmp_path / "k", progress=False)  # reads the results
    whole = run_study(spec, tmp_path / "w", progress=False, batch_seeds=True, threads=1)
    for rr, rw in zip(resumed, whole):
        # Same thread count, same steps: a resumed run continues exactly.
        assert without_wall_clock(rr["history"]) == without_wall_clock(rw["history"])
    for cell in spec.cells():
        claims = [json.loads(x) for x in (cell_dir(tmp_path / "k", cell) / "claims.jsonl").read_text().splitlines()]
        assert [c["resume"] for c in claims] == [False, True]
