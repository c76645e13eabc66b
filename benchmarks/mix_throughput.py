"""Throughput of mixing one batch, side by side with the memory floor and peers.

Prints, for each batch shape, dtype and thread count: median time, images/s, GB/s
(bytes of input read + output written) and the ratio of each path's speed to the
"floor" (one 3-stream elementwise pass over the same bytes: ``torch.add(a, b, out=c)``).
Peers (timm, torchvision, kornia, keras) get rows when they import; they are not
dependencies. Then, side by side in the same run, the training-loop paths: mixing a
tensor that requires grad (out of place) against one that does not, and
``torch.compile`` of the tensor-plan path against eager; and the uint8 path (mixing in
the collate) against float32. Nothing is asserted: this machine is shared and noisy,
so compare rows of one run only.

    python benchmarks/mix_throughput.py [--repeats 30] [--quick] [--compile-backend inductor]
    python benchmarks/mix_throughput.py --goals [--baseline-ref HEAD~1]

``--goals`` prints only the rows of the speed goals (issue 15, 1 thread): the fixed cost
of one call at 64x1x28x28 (transform, one-call function, ``sample_plan`` for B = 64 and
256, and the parts of ``apply_plan``: inputs only, inputs + labels), and CutMix, MixUp
and uint8 at 64x3x224x224 against the memory floor. With ``--baseline-ref`` the same
rows also run on the library as of that git commit (extracted to a temporary
directory and imported as ``vicinal_base``), interleaved call by call with the working
tree's, and the ratio is printed: before/after from one run on one (noisy) machine.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import vicinal
from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.mixing import plan_to_tensors


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peer_rows(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], object]]:
    rows: dict[str, Callable[[], object]] = {}
    try:
        from timm.data import Mixup  # type: ignore[import-not-found]

        for mode in ("batch", "elem"):
            m = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, mode=mode, num_classes=10)
            rows[f"timm Mixup ({mode})"] = lambda m=m: m(x.clone(), y)
    except Exception:
        pass
    try:
        from torchvision.transforms import v2  # type: ignore[import-not-found]

        tv = v2.MixUp(alpha=0.2, num_classes=10)
        rows["torchvision v2.MixUp"] = lambda: tv(x, y)
    except Exception:
        pass
    try:
        import kornia.augmentation as K  # type: ignore[import-not-found]

        ko = K.RandomMixUpV2(p=1.0)
        rows["kornia RandomMixUpV2"] = lambda: ko(x, y)
    except Exception:
        pass
    return rows


def bench(batch: int, shape: tuple[int, int, int], dtype: torch.dtype, threads: int, repeats: int) -> list[tuple]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=gen)
    else:
        x = torch.rand((batch, *shape), generator=gen)
    x2 = x.roll(3, 0).clone()
    y = torch.randint(0, 10, (batch,), generator=gen)
    buf = torch.empty_like(x)
    c = torch.empty_like(x)
    image_size = shape[-2:]
    nbytes = 2 * x.numel() * x.element_size()  # one batch read + one written

    elem_roll = sample_plan(MixConfig(alpha=0.2), batch, seed=0)
    elem_perm = sample_plan(MixConfig(alpha=0.2, pairing="permute"), batch, seed=0)
    batch_roll = sample_plan(MixConfig(alpha=0.2, granularity="batch"), batch, seed=0)
    stream = sample_plan(MixConfig(alpha=0.2, pairing="stream"), batch, seed=0)
    cut = sample_plan(MixConfig("cutmix"), batch, seed=0, image_size=image_size)
    lam = torch.from_numpy(elem_roll.lam).float().view(-1, 1, 1, 1)
    perm = torch.randperm(batch)

    rows: dict[str, Callable[[], object]] = {
        "floor: torch.add(a, b, out=c)": lambda: torch.add(x, x2, out=c),
    }
    if dtype == torch.uint8:
        rows["naive float: (x*l + x[perm]*(1-l)).round().to(uint8)"] = lambda: (
            (x.float() * lam + x[perm].float() * (1 - lam)).round().to(torch.uint8)
        )
    else:
        rows["naive: x*l + x[perm]*(1-l)"] = lambda: x * lam + x[perm] * (1 - lam)
    rows.update(
        {
            "vicinal elem, roll, out=buf": lambda: apply_plan(elem_roll, x, y, num_classes=10, out=buf),
            "vicinal elem, roll, fresh output": lambda: apply_plan(elem_roll, x, y, num_classes=10),
            "vicinal batch, roll, out=buf": lambda: apply_plan(batch_roll, x, y, num_classes=10, out=buf),
            "vicinal elem, permute, out=buf": lambda: apply_plan(elem_perm, x, y, num_classes=10, out=buf),
            "vicinal elem, 2nd stream, out=buf": lambda: apply_plan(
                stream, x, y, num_classes=10, x_partner=x2, y_partner=y, out=buf
            ),
            "vicinal cutmix elem, out=buf": lambda: apply_plan(cut, x, y, num_classes=10, out=buf),
        }
    )
    if dtype != torch.uint8:
        rows.update(_peer_rows(x, y))
    results = []
    for name, fn in rows.items():
        t = _median_seconds(fn, repeats)
        results.append((name, t))
    floor = results[0][1]
    return [(name, t, batch / t, nbytes / t / 1e9, floor / t) for name, t in results]


def bench_plans(repeats: int) -> None:
    for cfg_name, cfg, size in [
        ("mixup elem roll", MixConfig(alpha=0.2), None),
        ("mixup elem permute", MixConfig(alpha=0.2, pairing="permute"), None),
        ("switch elem", MixConfig("switch"), (224, 224)),
    ]:
        step = iter(range(10**9))
        t = _median_seconds(lambda: sample_plan(cfg, 256, seed=0, step=next(step), image_size=size), repeats * 10)
        print(f"sample_plan B=256 {cfg_name:<22} {t * 1e6:8.1f} us")


def bench_training_paths(repeats: int, quick: bool, backend: str) -> None:
    """Autograd on vs off, and compiled vs eager, for MixUp and CutMix (float32, 1 thread)."""
    torch.set_num_threads(1)
    shapes = [(64, (1, 28, 28))] if quick else [(64, (1, 28, 28)), (128, (3, 32, 32))]
    print(f"\n== training-loop paths (1 thread; compiled with backend={backend!r})")
    print("speed: relative to 'eager, no grad' (the compiled row: to 'eager, tensor plan')")
    print(f"{'path':<60} {'median':>10} {'img/s':>11} {'speed':>8}")
    for batch, shape in shapes:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((batch, *shape), generator=gen)
        xg = x.clone().requires_grad_()
        y = torch.randint(0, 10, (batch,), generator=gen)
        for name, cfg in (("mixup", MixConfig(alpha=0.2)), ("cutmix", MixConfig("cutmix"))):
            plan = sample_plan(cfg, batch, seed=0, image_size=shape[-2:])
            t = plan_to_tensors(plan)

            def mix_t(t, x, y):  # type: ignore[no-untyped-def]
                return apply_plan(t, x, y, num_classes=10, validate=False)

            torch._dynamo.reset()
            try:
                compiled = torch.compile(mix_t, fullgraph=True, backend=backend)
                compiled(t, x, y)
            except Exception as exc:  # e.g. no C++ compiler for inductor
                print(f"  ({backend} failed: {type(exc).__name__}; falling back to aot_eager)")
                torch._dynamo.reset()
                compiled = torch.compile(mix_t, fullgraph=True, backend="aot_eager")

            def backward() -> None:
                apply_plan(plan, xg, y, num_classes=10)[0].sum().backward()

            rows = {
                "eager, no grad (in-place fast path)": lambda: apply_plan(plan, x, y, num_classes=10),
                "eager, x requires grad (out of place)": lambda: apply_plan(plan, xg, y, num_classes=10),
                "eager, x requires grad, fwd + bwd": backward,
                "eager, tensor plan, validate=False": lambda: mix_t(t, x, y),
                "compiled, tensor plan, validate=False": lambda: compiled(t, x, y),
            }
            times = {label: _median_seconds(fn, repeats) for label, fn in rows.items()}
            base = times["eager, no grad (in-place fast path)"]
            eager_t = times["eager, tensor plan, validate=False"]
            title = f"{name} {batch} x {'x'.join(map(str, shape))}"
            for label, sec in times.items():
                ref = eager_t if label.startswith("compiled") else base
                print(f"{title + ': ' + label:<60} {sec * 1e3:8.3f}ms {batch / sec:11.0f} {ref / sec:7.2f}x")
            print(
                f"{title}: grad on / off = {times['eager, x requires grad (out of place)'] / base:.2f}x time; "
                f"compiled / eager = {times['compiled, tensor plan, validate=False'] / eager_t:.2f}x time"
            )


def _baseline(ref: str) -> ModuleType:
    """The package ``src/vicinal`` as of git ``ref``, importable as ``vicinal_base``."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="vicinal_base_"))
    tar = subprocess.run(["git", "-C", str(root), "archive", ref, "src/vicinal"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar.stdout, check=True)
    pkg = tmp / "vicinal_base"
    (tmp / "src" / "vicinal").rename(pkg)
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        text = re.sub(r"\bfrom vicinal([. ])", r"from vicinal_base\1", text)
        text = re.sub(r"\bimport vicinal\b", "import vicinal_base", text)
        f.write_text(text.replace('"vicinal.', '"vicinal_base.'))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("vicinal_base")


def _goal_rows(lib: ModuleType) -> dict[str, Callable[[], object]]:
    """The calls of the speed goals, made with library ``lib`` (vicinal or a baseline)."""
    gen = torch.Generator().manual_seed(0)
    rows: dict[str, Callable[[], object]] = {}
    # Fixed cost per call: 64 x 1x28x28 float32, labels are class ids.
    x = torch.rand((64, 1, 28, 28), generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    buf, c = torch.empty_like(x), torch.empty_like(x)
    x2 = x.roll(3, 0).clone()
    lam = torch.rand((64, 1, 1, 1), generator=gen)
    perm = torch.randperm(64, generator=gen)
    cfg = lib.MixConfig(alpha=0.2)
    plan = lib.sample_plan(cfg, 64, seed=0)
    mixer = lib.MixUp(alpha=0.2, num_classes=10, seed=0)
    steps = iter(range(10**9))
    rows["28: floor torch.add(a, b, out=c)"] = lambda: torch.add(x, x2, out=c)
    rows["28: naive x*l + x[perm]*(1-l)"] = lambda: x * lam + x[perm] * (1 - lam)
    rows["28: MixUp(x, y) (plan+labels), fresh output"] = lambda: mixer(x, y)
    rows["28: MixUp(x, y, out=buf)"] = lambda: mixer(x, y, out=buf)
    rows["28: mixup(x, y, seed=, step=, out=buf)"] = lambda: lib.mixup(
        x, y, alpha=0.2, num_classes=10, seed=0, step=next(steps), out=buf
    )
    rows["28: part: sample_plan B=64"] = lambda: lib.sample_plan(cfg, 64, seed=0, step=next(steps))
    rows["28: part: apply_plan(plan, x, out=buf)"] = lambda: lib.apply_plan(plan, x, out=buf)
    rows["28: part: apply_plan(plan, x, y, out=buf)"] = lambda: lib.apply_plan(plan, x, y, num_classes=10, out=buf)
    rows["plan: sample_plan B=256 mixup elem roll"] = lambda: lib.sample_plan(cfg, 256, seed=0, step=next(steps))
    # Big images: 64 x 3x224x224 (float32 38.5 MB, uint8 9.6 MB).
    xb = torch.rand((64, 3, 224, 224), generator=gen)
    xb2, bufb, cb = xb.roll(3, 0).clone(), torch.empty_like(xb), torch.empty_like(xb)
    x8 = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8, generator=gen)
    x82, buf8, c8 = x8.roll(3, 0).clone(), torch.empty_like(x8), torch.empty_like(x8)
    scratch = xb.clone()
    cut = lib.sample_plan(lib.MixConfig("cutmix"), 64, seed=0, image_size=(224, 224))
    mix = lib.sample_plan(cfg, 64, seed=0)
    rows["224: floor torch.add(a, b, out=c)"] = lambda: torch.add(xb, xb2, out=cb)
    rows["224: CutMix apply_plan out=buf"] = lambda: lib.apply_plan(cut, xb, y, num_classes=10, out=bufb)
    rows["224: CutMix apply_plan in place (out=x)"] = lambda: lib.apply_plan(
        cut, scratch, y, num_classes=10, out=scratch
    )
    rows["224: CutMix apply_plan fresh output"] = lambda: lib.apply_plan(cut, xb, y, num_classes=10)
    rows["224: MixUp apply_plan out=buf"] = lambda: lib.apply_plan(mix, xb, y, num_classes=10, out=bufb)
    rows["224: MixUp apply_plan fresh output"] = lambda: lib.apply_plan(mix, xb, y, num_classes=10)
    rows["224 uint8: floor torch.add(a, b, out=c)"] = lambda: torch.add(x8, x82, out=c8)
    rows["224 uint8: MixUp apply_plan out=buf"] = lambda: lib.apply_plan(mix, x8, y, num_classes=10, out=buf8)
    rows["224 uint8: CutMix apply_plan out=buf"] = lambda: lib.apply_plan(cut, x8, y, num_classes=10, out=buf8)
    return rows


def bench_goals(repeats: int, baseline_ref: str | None) -> None:
    """The speed-goal rows, 1 thread; with a baseline, interleaved with it row by row."""
    torch.set_num_threads(1)
    libs: dict[str, ModuleType] = {"now": vicinal}
    if baseline_ref is not None:
        libs = {"base": _baseline(baseline_ref), "now": vicinal}
    rows = {name: _goal_rows(lib) for name, lib in libs.items()}
    times: dict[tuple[str, str], list[float]] = {}
    rounds = 3
    for _ in range(rounds):  # interleaved: the machine's load drifts between rounds
        for row in rows["now"]:
            reps = max(3, repeats // 6) if row.startswith("224") else repeats * 3
            for name in libs:
                fn = rows[name][row]
                for _ in range(2):
                    fn()
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    times.setdefault((name, row), []).append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"\n== speed goals (1 thread, median of {rounds} interleaved rounds)")
    head = f"{'row':<48}"
    for name in libs:
        head += f" {name:>10}"
    if "base" in libs:
        head += f" {'base/now':>9}"
    print(head + f" {'floor/now':>10}")
    for row in rows["now"]:
        line = f"{row:<48}"
        for name in libs:
            t = med[(name, row)]
            line += f" {t * 1e6:8.1f}us" if t < 1e-3 else f" {t * 1e3:8.2f}ms"
        if "base" in libs:
            line += f" {med[('base', row)] / med[('now', row)]:8.2f}x"
        prefix = row.split(":")[0]
        floor = med.get(("now", f"{prefix}: floor torch.add(a, b, out=c)"))
        line += f" {floor / med[('now', row)]:9.2f}x" if floor is not None and not row.startswith("plan") else ""
        print(line)
    now = {row: med[("now", row)] for row in rows["now"]}
    print(
        "28 breakdown (now): plan {:.1f} us, inputs {:.1f} us, labels {:.1f} us, transform rest {:.1f} us".format(
            now["28: part: sample_plan B=64"] * 1e6,
            now["28: part: apply_plan(plan, x, out=buf)"] * 1e6,
            (now["28: part: apply_plan(plan, x, y, out=buf)"] - now["28: part: apply_plan(plan, x, out=buf)"]) * 1e6,
            (
                now["28: MixUp(x, y, out=buf)"]
                - now["28: part: apply_plan(plan, x, y, out=buf)"]
                - now["28: part: sample_plan B=64"]
            )
            * 1e6,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="only the small shape, 1 repeat set")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--goals", action="store_true", help="only the speed-goal rows (see above)")
    parser.add_argument("--baseline-ref", default=None, help="with --goals: also run the library of this git ref")
    args = parser.parse_args()
    if args.goals or args.baseline_ref is not None:
        bench_goals(args.repeats, args.baseline_ref)
        return
    shapes = [(64, (1, 28, 28)), (256, (1, 28, 28))]
    if not args.quick:
        shapes.append((64, (3, 224, 224)))
    summary = {}
    for batch, shape in shapes:
        for threads in (1, 2):
            for dtype in (torch.float32, torch.uint8):
                print(f"\n== {batch} x {'x'.join(map(str, shape))} {str(dtype).split('.')[-1]}, {threads} thread(s)")
                print(f"{'path':<56} {'median':>10} {'img/s':>11} {'GB/s':>7} {'vs floor':>9}")
                for name, t, ips, gbs, ratio in bench(batch, shape, dtype, threads, args.repeats):
                    print(f"{name:<56} {t * 1e3:8.3f}ms {ips:11.0f} {gbs:7.2f} {ratio:8.2f}x")
                    summary[(batch, shape, threads, str(dtype).split(".")[-1], name)] = ips
    print()
    bench_plans(args.repeats)
    print("\n== uint8 vs float32 (vicinal elem, roll, out=buf): images/s ratio")
    for batch, shape in shapes:
        for threads in (1, 2):
            key = "vicinal elem, roll, out=buf"
            f = summary[(batch, shape, threads, "float32", key)]
            u = summary[(batch, shape, threads, "uint8", key)]
            print(f"{batch} x {'x'.join(map(str, shape))}, {threads} thread(s): uint8/float32 = {u / f:.2f}x")
    bench_training_paths(args.repeats, args.quick, args.compile_backend)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
