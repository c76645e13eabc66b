"""Cells per hour of a study: --jobs 1, --jobs 2 and --batch-seeds, side by side in one run.

The same small study (2 arms x ``--seeds`` seeds, ``--epochs`` epochs on the first
``--train-limit`` training images) is run into a fresh folder once per setting:

* ``--jobs 1``: one cell after another, one process, torch's default threads (and
  ``--threads 1``: one thread, the per-core rate);
* ``--jobs 2``: two worker processes, one thread each, one cell each;
* ``--batch-seeds --jobs 2``: the seeds of each arm as one batched model, the two arms
  in two worker processes of one thread each;
* ``--batch-seeds --threads 1`` / ``--threads 2``: the seeds of each arm as one batched
  model, the arms one after another in this process, one or two threads.

Each worker process pays a fixed start-up (importing torch, loading and verifying the
data), so short cells understate what --jobs 2 gains on real 10-epoch cells. Timings
on a shared machine are noisy: compare the ratios of one run, and repeat it.

    python benchmarks/study_speed.py --data-dir ../shared/data [--train-limit 30000] [--seeds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from vicinal.experiments.runs.study import parse_study, run_study

STUDY = """
name = "speed"
seeds = {seeds}
[defaults]
dataset = "fashion-mnist"
data_dir = {data_dir!r}
epochs = {epochs}
train_limit = {train_limit}
test_limit = 2000
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
"""

#: (label, run_study keyword arguments)
SETTINGS: dict[str, dict[str, object]] = {
    "--jobs 1": {"jobs": 1},
    "--jobs 1 --threads 1": {"jobs": 1, "threads": 1},
    "--jobs 2": {"jobs": 2},
    "--batch-seeds --jobs 2": {"jobs": 2, "batch_seeds": True},
    "--batch-seeds --threads 1": {"jobs": 1, "batch_seeds": True, "threads": 1},
    "--batch-seeds --threads 2": {"jobs": 1, "batch_seeds": True, "threads": 2},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="")
    p.add_argument("--train-limit", type=int, default=30000)
    p.add_argument("--seeds", type=int, default=2, help="seeds per arm (the batch of --batch-seeds)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="SETTING")
    args = p.parse_args()
    text = STUDY.format(data_dir=args.data_dir, train_limit=args.train_limit, seeds=args.seeds, epochs=args.epochs)
    if not args.data_dir:
        text = text.replace("data_dir = ''\n", "")
    spec = parse_study(text)
    cells = len(spec.cells())
    rates = {}
    for label in args.settings:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_study(spec, tmp, progress=False, **SETTINGS[label])  # type: ignore[arg-type]
            wall = time.perf_counter() - t0
        rates[label] = cells / wall * 3600
        print(f"{label:<27} {cells} cells in {wall:6.1f} s -> {rates[label]:7.1f} cells/hour", flush=True)
    base = "--jobs 2" if "--jobs 2" in rates else next(iter(rates))
    for label, rate in rates.items():
        if label != base:
            print(f"{label} / {base}: {rate / rates[base]:.2f}x")


if __name__ == "__main__":
    main()
