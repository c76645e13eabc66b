"""Where one training step of `vicinal compare`'s mixed arm spends its time, on CPU.

Mirrors the step of ``vicinal.experiments.training.loop.fit`` for the default compare
(reference CNN, batch 64, channels-last, fused Adam, the loader of the mixed arm):

    x, target = next(epoch iterator)            # gather + apply_plan (+ the epoch plan at its start)
    with autocast(enabled=precision == "bf16"): logits = model(x)
    loss = soft_target_cross_entropy(logits, target)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    with no_grad(): the per-step loss/accuracy sums and the NaN check

and prints a table of milliseconds per step and % of the step for each part:

* loader: the epoch iterator's ``next`` timed as a whole, and inside it the gathers
  (``InMemoryLoader._take``: ``index_select`` + uint8 -> float32 + channels-last, once
  for the batch and once for the partner stream) and ``apply_plan`` (wrapped with
  ``time.perf_counter`` timers while the instrumented steps run); the epoch's rows and
  plans (``InMemoryLoader.epoch_plan``: every ``sample_plan`` of the epoch, drawn at
  its first batch) are timed once and shown per step;
* forward, per layer: the model's forward run as a copy of ``ReferenceCNN.forward``
  split into timed segments (conv1, pool+relu, conv2, ...), checked at start-up to give
  the same logits as ``model(x)`` bit for bit;
* backward, per layer: a pre-hook and a post-hook on every autograd node (``Node.
  register_prehook`` / ``register_hook``), each node charged to the forward segment that
  created it; CPU autograd runs the nodes one after another, so these are wall times;
  the gaps between nodes are the "autograd engine" row;
* loss, zero_grad, optimizer step, the metrics bookkeeping, the script's own
  instrumentation (registering the hooks), and the rest: the step's wall time minus all
  measured parts (the loop, the generator, Python).

Instrumented and plain steps (the exact loop body, no timers) alternate in blocks, and
both step times are printed: their difference is what the instrumentation costs.

FLOPs: counted analytically (convs and linears; the backward computes the weight
gradient of every layer and the input gradient of every layer but the first, whose
input needs none) and cross-checked with ``torch.utils.flop_counter.FlopCounterMode``.
The achieved GFLOP/s is set against a peak computed from ``/proc/cpuinfo``: fp32 lanes
per FMA from the flags (avx512f: 16, avx2+fma: 8, else 4), an assumed 2 FMA units per
core, and the "cpu MHz" clock (``lscpu``'s max MHz when cpuinfo has none).

    python benchmarks/profile_step.py [--threads 1] [--steps 200] [--data-dir ../shared/data | --synthetic]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vicinal.experiments.loader as loader_module
from vicinal.experiments.models import ReferenceCNN, build_model
from vicinal.experiments.runs.compare import make_loader
from vicinal.experiments.spec import PRECISIONS, CompareConfig, OptimConfig
from vicinal.experiments.splits import Splits, load_any, make_splits
from vicinal.torch.losses import soft_target_cross_entropy

FMA_UNITS = 2  # assumed per core; true of most server cores (some Xeon Silver/Bronze SKUs have 1 AVX-512 FMA)
BLOCK = 25  # instrumented and plain steps alternate in blocks of this many steps


# ---------------------------------------------------------------- the machine's peak


@dataclass
class Peak:
    model: str
    mhz: float
    mhz_source: str
    lanes: int
    isa: str
    cores: int
    amx_bf16: bool

    @property
    def flop_per_cycle(self) -> int:
        return self.lanes * 2 * FMA_UNITS  # an FMA is 2 FLOPs

    @property
    def per_core_gflops(self) -> float:
        return self.flop_per_cycle * self.mhz / 1e3

    def describe(self, threads: int) -> str:
        amx = (
            "; amx_bf16 present: bf16 matmuls/convs through oneDNN can far exceed this fp32 peak"
            if self.amx_bf16
            else ""
        )
        return (
            f"CPU: {self.model}, {self.cores} cores usable\n"
            f"peak fp32: {self.isa} -> {self.lanes} fp32 lanes per FMA x 2 FLOP x {FMA_UNITS} FMA units per core "
            f"(assumed) = {self.flop_per_cycle} FLOP/cycle; clock {self.mhz:.0f} MHz ({self.mhz_source}; turbo "
            f"and AVX-512 frequency licences not modelled)\n"
            f"peak fp32: {self.per_core_gflops:.1f} GFLOP/s per core, {self.per_core_gflops * self.cores:.1f} GFLOP/s "
            f"all {self.cores} cores, {self.per_core_gflops * threads:.1f} GFLOP/s for --threads {threads}{amx}"
        )


def machine_peak() -> Peak:
    flags: set[str] = set()
    mhz, model = None, platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "model name" and value.strip():
                model = value.strip()
    source = '/proc/cpuinfo "cpu MHz"'
    if mhz is None:
        source = "lscpu CPU max MHz"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
                if line.startswith("CPU max MHz:"):
                    mhz = float(line.split(":")[1])
    if mhz is None:
        mhz, source = 2000.0, "unknown: 2000 MHz assumed"
    if "avx512f" in flags:
        lanes, isa = 16, "avx512f"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "avx2+fma"
    else:
        lanes, isa = 4, "no avx2/fma flag (SSE, 4 lanes)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Peak(model, mhz, source, lanes, isa, cores, "amx_bf16" in flags)


# ---------------------------------------------------------------- the model in timed segments


def forward_segments(model: ReferenceCNN) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """``ReferenceCNN.forward`` as (label, function) segments, in order."""
    p = model.dropout.p

    def dropout(x: torch.Tensor) -> torch.Tensor:
        if model.training and p > 0:
            return x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
        return x

    return [
        ("conv1 1->16 5x5", model.conv1),
        ("maxpool+relu 1", lambda x: torch.max_pool2d(x, 2).relu_()),
        ("conv2 16->32 5x5", model.conv2),
        ("maxpool+relu 2", lambda x: torch.max_pool2d(x, 2).relu_()),
        ("dropout 0.2", dropout),
        ("global avg pool", lambda x: x.mean(dim=(2, 3))),
        ("fc1 32->128 +relu", lambda x: model.fc1(x).relu_()),
        ("fc2 128->10", model.fc2),
    ]


def layer_flops(model: ReferenceCNN, input_shape: tuple[int, ...], batch: int) -> dict[str, tuple[int, int]]:
    """Analytic (forward, backward) FLOPs of the convs and linears, by segment label.

    A multiply-add is 2 FLOPs; bias adds, pooling and elementwise ops are not counted
    (nor are they by FlopCounterMode). Backward: the weight gradient (as many FLOPs as
    the forward) plus the input gradient (as many again) except for the first layer.
    """
    _, h, w = input_shape
    out: dict[str, tuple[int, int]] = {}
    for label, conv, first in (("conv1 1->16 5x5", model.conv1, True), ("conv2 16->32 5x5", model.conv2, False)):
        kh, kw = conv.kernel_size
        h, w = h - kh + 1, w - kw + 1
        fwd = 2 * batch * conv.out_channels * h * w * conv.in_channels * kh * kw
        out[label] = (fwd, fwd if first else 2 * fwd)
        h, w = h // 2, w // 2
    for label, lin in (("fc1 32->128 +relu", model.fc1), ("fc2 128->10", model.fc2)):
        fwd = 2 * batch * lin.in_features * lin.out_features
        out[label] = (fwd, 2 * fwd)
    return out


# ---------------------------------------------------------------- timers


@dataclass
class Sums:
    """Seconds summed over the instrumented steps, by row name."""

    t: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + seconds


@contextlib.contextmanager
def loader_timers(loader, sums: Sums) -> Iterator[None]:
    """Time the loader's gathers, its epoch plans and apply_plan while the block runs.

    The loader draws a whole epoch's rows and plans at the epoch's first batch
    (``InMemoryLoader.epoch_plan``); that time is charged to the step that pays it.
    """
    perf = time.perf_counter
    take, epoch_plan, apply_plan = loader._take, loader.epoch_plan, loader_module.apply_plan

    def wrap(key: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                sums.add(key, perf() - t)

        return timed

    loader._take, loader.epoch_plan = wrap("gather", take), wrap("epoch_plan", epoch_plan)
    loader_module.apply_plan = wrap("apply_plan", apply_plan)
    try:
        yield
    finally:
        del loader._take, loader.epoch_plan  # back to the class's methods
        loader_module.apply_plan = apply_plan


def hook_backward(outputs: list[torch.Tensor], labels: list[str], stamps: list[tuple[str, str, list[float]]]) -> None:
    """Register pre/post hooks on every autograd node, charged to the segment that made it."""
    perf = time.perf_counter
    seen: set[torch.autograd.graph.Node] = set()
    for out, label in zip(outputs, labels):
        todo = [out.grad_fn] if out.grad_fn is not None else []
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            slot = [0.0, 0.0]
            stamps.append((label, node.name().rsplit("::", 1)[-1], slot))

            def pre(grad_outputs, slot=slot):
                slot[0] = perf()

            def post(grad_inputs, grad_outputs, slot=slot):
                slot[1] = perf()

            node.register_prehook(pre)
            node.register_hook(post)
            todo.extend(fn for fn, _ in node.next_functions)


# ---------------------------------------------------------------- main


def synthetic_splits(n: int, seed: int = 0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    small = (x[:256], y[:256])
    return Splits((x, y), small, small, tuple(f"class{i}" for i in range(10)), "synthetic", "synthetic")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one arm's share)")
    p.add_argument("--steps", type=int, default=200, help="instrumented steps, and as many plain steps")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images (58,000 x 1x28x28), no files")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="as `vicinal compare --precision`")
    p.add_argument(
        "--torch-profiler", type=int, default=0, metavar="N", help="also print torch.profiler's top ops over N steps"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = CompareConfig(
        data_dir=None if args.synthetic else args.data_dir, batch_size=args.batch_size, model="reference-cnn"
    ).validate()
    splits = (
        synthetic_splits(60_000 - cfg.val_size)
        if args.synthetic
        else make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    )
    loader = make_loader(cfg, splits, "mixup")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, splits.input_shape, len(splits.class_names))
    if not isinstance(model, ReferenceCNN):
        raise SystemExit(f"this profile splits the reference CNN into layers; model {cfg.model!r} is not it")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optim = OptimConfig()
    opt = torch.optim.Adam(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)
    model.train()
    bf16 = args.precision == "bf16"
    segments = forward_segments(model)
    labels = [label for label, _ in segments]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    it = batches()

    # The segmented forward is the model's forward.
    x0, _ = next(it)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ref = model(x0)
        torch.manual_seed(1)
        h = x0
        for _, fn in segments:
            h = fn(h)
    if not torch.equal(ref, h):
        raise SystemExit("the segmented forward differs from ReferenceCNN.forward: update forward_segments()")

    # State of the harness's per-step bookkeeping.
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    first_bad = torch.full((), -1, dtype=torch.int64)
    seen = 0

    def plain_step(step: int) -> None:
        nonlocal first_bad, seen
        x, target = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = soft_target_cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            b = target.shape[0]
            bad_now = (first_bad < 0) & ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad_now, step, first_bad)
            loss_sum.add_(loss.detach().double() * b)
            correct.add_((logits.argmax(1) == target.argmax(1)).sum())
            seen += b

    sums = Sums()
    perf = time.perf_counter

    def timed_step(step: int) -> None:
        nonlocal first_bad, seen
        t0 = perf()
        x, target = next(it)
        t1 = perf()
        outs, marks = [], []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = x
            for _, fn in segments:
                a = perf()
                h = fn(h)
                marks.append(perf() - a)
                outs.append(h)
        logits = h
        t2 = perf()
        loss = soft_target_cross_entropy(logits, target)
        t3 = perf()
        stamps: list[tuple[str, str, list[float]]] = []
        hook_backward([*outs, loss], [*labels, "loss"], stamps)
        t4 = perf()
        opt.zero_grad(set_to_none=True)
        t5 = perf()
        loss.backward()
        t6 = perf()
        opt.step()
        t7 = perf()
        with torch.no_grad():
            b = target.shape[0]
            bad_now = (first_bad < 0) & ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad_now, step, first_bad)
            loss_sum.add_(loss.detach().double() * b)
            correct.add_((logits.argmax(1) == target.argmax(1)).sum())
            seen += b
        t8 = perf()
        sums.add("loader", t1 - t0)
        for label, dt in zip(labels, marks):
            sums.add(f"fwd {label}", dt)
        sums.add("forward", t2 - t1)
        sums.add("loss", t3 - t2)
        sums.add("instrumentation", t4 - t3)
        sums.add("zero_grad", t5 - t4)
        sums.add("backward", t6 - t5)
        bwd_nodes = 0.0
        for label, node, (start, end) in stamps:
            if end > start > 0:
                sums.add(f"bwd {label}", end - start)
                sums.add(f"node {label}\t{node}", end - start)
                bwd_nodes += end - start
        sums.add("bwd nodes", bwd_nodes)
        sums.add("optimizer", t7 - t6)
        sums.add("bookkeeping", t8 - t7)
        sums.add("measured", t8 - t0)

    # Warm-up (both paths), then alternating blocks; each block's wall time / its steps.
    step = 0
    with loader_timers(loader, sums):
        for _ in range(args.warmup // 2):
            timed_step(step)
            step += 1
    sums.t.clear()
    for _ in range(args.warmup - args.warmup // 2):
        plain_step(step)
        step += 1
    load_before = os.getloadavg()[0]
    usage_before, cpu_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), perf()
    plain_walls: list[float] = []
    timed_walls: list[float] = []
    done = 0
    while done < args.steps:
        n = min(BLOCK, args.steps - done)
        t = perf()
        for _ in range(n):
            plain_step(step)
            step += 1
        plain_walls.append((perf() - t) / n)
        with loader_timers(loader, sums):
            t = perf()
            for _ in range(n):
                timed_step(step)
                step += 1
            timed_walls.append((perf() - t) / n)
        done += n
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_per_wall = (time.process_time() - cpu_before) / (perf() - wall_before)
    preempted = (usage_after.ru_nivcsw - usage_before.ru_nivcsw) / (2 * args.steps)
    steps = args.steps
    wall_timed = statistics.fmean(timed_walls)
    wall_plain = statistics.fmean(plain_walls)
    ms = lambda key: 1e3 * sums.t.get(key, 0.0) / steps
    # An epoch's plan is drawn once, at its first batch: time one and spread it over the epoch's steps.
    t = perf()
    loader.epoch_plan(0)
    plan_ms = 1e3 * (perf() - t) / len(loader)

    # FLOPs: analytic, and FlopCounterMode over one forward + backward.
    flops = layer_flops(model, splits.input_shape, args.batch_size)
    total_flops = sum(f + b for f, b in flops.values())
    from torch.utils.flop_counter import FlopCounterMode

    x, target = next(it)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        soft_target_cross_entropy(logits, target).backward()
    opt.zero_grad(set_to_none=True)
    counted = counter.get_total_flops()

    peak = machine_peak()
    peak_threads = peak.per_core_gflops * args.threads
    step_ms = 1e3 * wall_timed

    # ---------------- print
    print(
        f"profile_step: the mixed arm of `vicinal compare` ({cfg.describe_mixing()}), {cfg.model}, "
        f"batch {args.batch_size}, channels_last={cfg.channels_last}, fused Adam, precision {args.precision}; "
        f"data: {'synthetic uint8' if args.synthetic else splits.source.split(' (')[0]} "
        f"({splits.train[0].shape[0]} training images, {len(loader)} steps/epoch)"
    )
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {steps} instrumented + {steps} plain steps "
        f"after {args.warmup} warm-up, alternating in blocks of {BLOCK}"
    )
    print(
        f"noise: load average {load_before:.2f} when the timed steps began, on {peak.cores} cores; this process "
        f"used {cpu_per_wall:.2f} CPU-s per wall-s ({args.threads} thread(s): less means it waited for a core; "
        f"OpenMP spin-waits count as use) and was preempted {preempted:.2f} times per step"
    )
    if load_before > peak.cores - args.threads + 0.5:
        print(
            "warning: other processes compete for these cores: every row is inflated, and with more threads "
            "than free cores each parallel region can wait a scheduler time slice for a descheduled thread"
        )
    print(peak.describe(args.threads))
    if bf16:
        print("precision bf16: the % peak columns compare with the fp32 peak above (AMX can exceed 100%)")
    print()
    rows: list[tuple[str, float]] = [("loader: next(epoch iterator)", ms("loader"))]
    rest = ms("loader") - ms("gather") - ms("epoch_plan") - ms("apply_plan")
    rows += [
        ("  gather x2 (index_select, uint8->float, channels-last)", ms("gather")),
        ("  epoch plan: the epoch's rows and sample_plans, packed (per step, amortised)", plan_ms),
        ("  apply_plan (mix in place, soft targets)", ms("apply_plan")),
        ("  rest of the iterator (step slices, soft targets, generator)", rest),
        ("forward (autocast context included)", ms("forward")),
    ]
    rows += [(f"  {label}", ms(f"fwd {label}")) for label in labels]
    rows.append(("  rest of forward", ms("forward") - sum(ms(f"fwd {label}") for label in labels)))
    rows += [
        ("loss: soft_target_cross_entropy", ms("loss")),
        ("opt.zero_grad(set_to_none=True)", ms("zero_grad")),
        ("loss.backward()", ms("backward")),
        ("  loss", ms("bwd loss")),
    ]
    rows += [(f"  {label}", ms(f"bwd {label}")) for label in reversed(labels)]
    rows += [
        ("  autograd engine between nodes, hook calls", ms("backward") - ms("bwd nodes")),
        ("opt.step() (fused Adam)", ms("optimizer")),
        ("metrics bookkeeping (no_grad sums, NaN check)", ms("bookkeeping")),
        ("this script's hook registration", ms("instrumentation")),
        ("Python/loop overhead (step wall - measured)", step_ms - ms("measured")),
    ]
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'part of one step':<{width}}{'ms/step':>9}{'% step':>8}")
    for name, value in rows:
        print(f"{name:<{width}}{value:>9.3f}{100 * value / step_ms:>8.1f}")
    print(f"{'step, instrumented (wall)':<{width}}{step_ms:>9.3f}{100.0:>8.1f}")
    print(
        f"{'step, plain (the harness loop, no timers)':<{width}}{1e3 * wall_plain:>9.3f}"
        f"{100 * wall_plain / wall_timed:>8.1f}"
    )
    spread = sorted(1e3 * w for w in plain_walls)
    print(
        f"plain step per block of {BLOCK}: min {spread[0]:.2f}, median {statistics.median(spread):.2f}, "
        f"max {spread[-1]:.2f} ms (spread = noise)"
    )
    print()
    print(f"{'layer':<20}{'fwd ms':>8}{'bwd ms':>8}{'% step':>8}{'MFLOP':>8}{'GFLOP/s':>9}{'% peak':>8}")
    for label in labels:
        f_ms, b_ms = ms(f"fwd {label}"), ms(f"bwd {label}")
        fl = sum(flops.get(label, (0, 0)))
        rate = fl / (f_ms + b_ms) / 1e6 if fl and f_ms + b_ms > 0 else 0.0
        cells = f"{fl / 1e6:>8.1f}{rate:>9.1f}{100 * rate / peak_threads:>8.1f}" if fl else f"{'-':>8}{'-':>9}{'-':>8}"
        print(f"{label:<20}{f_ms:>8.3f}{b_ms:>8.3f}{100 * (f_ms + b_ms) / step_ms:>8.1f}{cells}")
    print()
    print("backward nodes by layer, ms/step (AccumulateGrad: one per parameter, summed):")
    for label in ["loss", *reversed(labels)]:
        nodes = [(k.split("\t")[1], ms(k)) for k in sums.t if k.startswith(f"node {label}\t")]
        print(f"  {label}: " + ", ".join(f"{name} {value:.3f}" for name, value in sorted(nodes, key=lambda n: -n[1])))
    print()
    achieved = total_flops / wall_plain / 1e9
    print(
        f"FLOPs per step (forward + backward, convs and linears): {total_flops / 1e6:.1f} M analytic "
        f"(forward {sum(f for f, _ in flops.values()) / 1e6:.1f} M), {counted / 1e6:.1f} M by FlopCounterMode"
    )
    print(
        f"achieved: {achieved:.1f} GFLOP/s over the plain step = {100 * achieved / peak_threads:.1f}% of the "
        f"{peak_threads:.1f} GFLOP/s peak of {args.threads} core(s), "
        f"{100 * achieved / (peak.per_core_gflops * peak.cores):.1f}% of all {peak.cores} cores' peak"
    )
    steps_run = 2 * cfg.epochs * len(loader)
    print(
        f"default compare: 2 arms x {cfg.epochs} epochs x {len(loader)} steps = {steps_run} steps = "
        f"{steps_run * total_flops / 1e12:.2f} TFLOP; at this plain step {steps_run * wall_plain:.0f} s of training "
        f"one arm after the other, {steps_run * wall_plain / 2:.0f} s with the arms in parallel on 2 cores "
        f"(if each arm's step stays this fast), before evaluation; 100% of {peak.cores} cores' fp32 peak: "
        f"{steps_run * total_flops / (peak.per_core_gflops * peak.cores * 1e9):.0f} s"
    )

    if args.torch_profiler:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.torch_profiler):
                plain_step(step)
                step += 1
        print()
        print(
            f"torch.profiler, {args.torch_profiler} plain steps, top ops by self CPU time (its own overhead included):"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
