"""torch.distributed (gloo, CPU, 2 processes): training, mixing policies, a dying rank."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.experiments.distributed import DistContext
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.testing import FAULT_ENV

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _torchrun(script: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _data(n: int = 70) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g),
        torch.randint(0, 5, (n,), generator=g),
    )


POLICY_SCRIPT = """
import sys, torch
from vicinal import MixConfig
from vicinal.experiments.distributed import init_from_env, shutdown
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.testing import FAULT_ENV
out = sys.argv[1]
ctx = init_from_env("cpu", timeout_s=60)
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (70, 1, 16, 16), dtype=torch.uint8, generator=g)
labels = torch.randint(0, 5, (70,), generator=g)
for policy in ("independent", "shared", "global"):
    for pairing in ("roll", "stream"):
        loader = InMemoryLoader(images, labels, num_classes=5, batch_size=8, seed=4,
                                mix=MixConfig(alpha=1.0, pairing=pairing), dist=ctx, policy=policy)
        batches = list(loader.epoch(1))
        torch.save(batches, f"{out}/{policy}-{pairing}-rank{ctx.rank}.pt")
shutdown(ctx)
"""


@pytest.mark.slow
def test_mixing_policies_across_two_ranks(tmp_path: Path) -> None:
    script = tmp_path / "policies.py"
    script.write_text(textwrap.dedent(POLICY_SCRIPT))
    _torchrun(script, str(tmp_path))
    images, labels = _data()
    for pairing in ("roll", "stream"):
        cfg = MixConfig(alpha=1.0, pairing=pairing)
        ranks = {
            p: [torch.load(tmp_path / f"{p}-{pairing}-rank{r}.pt") for r in (0, 1)]
            for p in ("independent", "shared", "global")
        }
        # 70 samples, 2 ranks x 8: every rank gets 5 batches (the last of 3), equal sizes.
        assert [len(b) for b in ranks["global"][0]] == [2] * 5
        assert [x.shape[0] for x, _ in ranks["global"][0]] == [8, 8, 8, 8, 3]

        # global: the mixed global batch equals a 1-process run with the same global batch, bit for bit.
        single = list(
            InMemoryLoader(images, labels, num_classes=5, batch_size=16, seed=4, mix=cfg, policy="global").epoch(1)
        )
        for step, (x1, y1) in enumerate(single):
            x2 = torch.cat([ranks["global"][r][step][0] for r in (0, 1)])
            y2 = torch.cat([ranks["global"][r][step][1] for r in (0, 1)])
            assert torch.equal(x1, x2) and torch.equal(y1, y2), (pairing, step)

        # independent / shared: each rank's batch is what the documented definition gives.
        order = InMemoryLoader(images, labels, num_classes=5, batch_size=8, seed=4, dist=DistContext(0, 2)).order(1)
        for policy in ("independent", "shared"):
            for step in range(5):
                g = order[step * 16 : (step + 1) * 16]
                half = len(g) // 2
                for r in (0, 1):
                    idx = np.array(g[r * half : (r + 1) * half])
                    plan_rank = r if policy == "independent" else 0
                    offset = step * 16 + (r * half if policy == "independent" else 0)
                    plan = sample_plan(
                        cfg, len(idx), seed=4, epoch=1, step=step, rank=plan_rank, dataset_size=70, stream_offset=offset
                    )
                    x = images[idx].float() / 255
                    kw = {}
                    if plan.stream_indices is not None:
                        kw = dict(
                            x_partner=images[plan.stream_indices].float() / 255, y_partner=labels[plan.stream_indices]
                        )
                    ex, ey = apply_plan(plan, x, labels[idx], num_classes=5, **kw)
                    gx, gy = ranks[policy][r][step]
                    assert torch.equal(gx, ex) and torch.equal(gy, ey), (policy, pairing, step, r)
            if policy == "independent":  # rank-specific plans: the λ sequences differ between ranks
                lam = [sample_plan(cfg, 8, seed=4, epoch=1, step=0, rank=r).lam for r in (0, 1)]
                assert not np.array_equal(lam[0], lam[1])


TRAIN_SCRIPT = """
import json, os, sys
from dataclasses import asdict
from vicinal.experiments.runs.compare import run_compare
from vicinal.experiments.spec import CompareConfig
out, npz = sys.argv[1], sys.argv[2]
cfg = CompareConfig(dataset=npz, epochs=2, batch_size=16, val_size=100, seed=3, threads=1, mix_policy="global")
results = run_compare(cfg, f"{out}/run", progress=False)
rank = int(os.environ["RANK"])
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump([{k: v for k, v in asdict(r).items() if k != "wall_s"} for r in results], f)
"""


@pytest.mark.slow
def test_ddp_compare_run_same_metrics_on_every_rank(tmp_path: Path, toy_npz: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    _torchrun(script, str(tmp_path), str(toy_npz))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    strip = lambda rs: [
        {**r, "history": [{k: v for k, v in h.items() if k != "elapsed_s"} for h in r["history"]]} for r in rs
    ]
    assert strip(r0) == strip(r1)
    assert {r["name"] for r in r0} == {"mixup", "none"}
    assert all(r["test_acc"] > 0.8 for r in r0)
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["world_size"] == 2
    # only rank 0 wrote: one metrics file per arm, one line per epoch
    assert len((tmp_path / "run" / "mixup" / "metrics.jsonl").read_text().splitlines()) == 2


DEAD_SCRIPT = """
import os, sys, torch
from vicinal.experiments.distributed import all_reduce_sum, init_from_env
ctx = init_from_env("cpu", timeout_s=float(sys.argv[2]))
all_reduce_sum(ctx, torch.ones(3))  # both ranks connected
if ctx.rank == 1:
    os._exit(3)  # dies without a word
try:
    all_reduce_sum(ctx, torch.ones(3))
    all_reduce_sum(ctx, torch.ones(3))
except RuntimeError as exc:
    with open(sys.argv[1], "w") as f:
        f.write(str(exc))
    # Leave without running gloo's C++ destructors, which may abort on a broken group.
    os._exit(1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_dead_rank_fails_a_collective_with_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "dead.py"
    script.write_text(textwrap.dedent(DEAD_SCRIPT))
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "err.txt"), "10"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=120) for p in procs]
    assert procs[1].returncode == 3
    assert procs[0].returncode == 1, outputs[0][1][-2000:]
    message = (tmp_path / "err.txt").read_text()
    assert message.startswith("rank 0/2: all_reduce failed: another rank died") and "\n" not in message


@pytest.mark.slow
def test_dead_rank_fails_the_others_with_a_clear_error(tmp_path: Path, toy_npz: Path) -> None:
    """`vicinal compare` on two ranks; rank 1 is killed (SIGKILL, by the fault hook) after the
    mixed arm's epoch 0. Rank 0 then fails inside DDP's gradient all-reduce in backward(): it
    must end with the documented one line, not gloo's traceback."""
    port = _free_port()
    args = [
        *(sys.executable, "-m", "vicinal", "compare", "--dataset", str(toy_npz), "--epochs", "3"),
        *("--batch-size", "16", "--val-size", "100", "--threads", "1", "--no-progress"),
        *("--dist-timeout", "60", "--out", str(tmp_path / "run")),
    ]
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        env.pop(FAULT_ENV, None)
        if rank == 1:
            env[FAULT_ENV] = "mixup:0"
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=180) for p in procs]
    assert procs[1].returncode == -signal.SIGKILL
    err = outputs[0][1]
    assert procs[0].returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]  # the whole of stderr: one line
    assert lines[0].startswith("vicinal: error: rank 0/2: training arm 'mixup' failed: another rank died or did not")
    assert lines[0].endswith("then restart every rank with --resume") and len(lines[0]) < 400
