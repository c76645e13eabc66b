"""Training throughput of the reference CNN: 1 process x 2 threads vs 2 processes x 1 thread (DDP).

Both settings train the same number of steps with the same global batch (64) on random
28x28 inputs with mixup targets; the 2-process setting runs under torchrun with gloo
(or NCCL with --device cuda, one GPU per process). Prints images/s of each and the ratio.

    python benchmarks/ddp_scaling.py [--steps 300] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def train(steps: int, global_batch: int, device: str) -> float:
    from vicinal.experiments.distributed import init_from_env, shutdown
    from vicinal.experiments.models import ReferenceCNN
    from vicinal.torch.losses import soft_target_cross_entropy

    ctx = init_from_env(device, timeout_s=120)
    torch.manual_seed(0)
    model = ReferenceCNN().to(device).to(memory_format=torch.channels_last)
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.startswith("cuda") else None)
    opt = torch.optim.Adam(model.parameters(), eps=1e-7, fused=True)
    local = global_batch // ctx.world_size
    x = torch.rand(local, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.softmax(torch.randn(local, 10, device=device), 1)
    for i in range(steps + 20):
        if i == 20:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = soft_target_cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rate = steps * global_batch / (time.perf_counter() - t0)
    shutdown(ctx)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        rate = train(args.steps, 64, args.device)
        if int(os.environ.get("RANK", "0")) == 0 and args.result:
            with open(args.result, "w") as f:
                json.dump({"rate": rate}, f)
        return
    torch.set_num_threads(2)
    single = train(args.steps, 64, args.device)
    print(f"1 process x 2 threads : {single:8.0f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                __file__,
                "--worker",
                "--steps",
                str(args.steps),
                "--device",
                args.device,
                "--result",
                out,
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        with open(out) as f:
            ddp = json.load(f)["rate"]
    print(f"2 processes x 1 thread: {ddp:8.0f} images/s (DDP, {'NCCL' if args.device.startswith('cuda') else 'gloo'})")
    print(f"ratio: {ddp / single:.2f}x")


if __name__ == "__main__":
    main()
