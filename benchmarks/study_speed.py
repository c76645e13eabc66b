"""Cells per hour of a study with --jobs 1 vs --jobs 2, side by side in one run.

The same small study (4 cells: 2 arms x 2 seeds, 1 epoch on the first 30,000
training images) is run twice into fresh folders, once per setting. Each worker
process pays a fixed start-up (importing torch, loading and verifying the data), so
short cells understate what --jobs 2 gains on real 10-epoch cells.

    python benchmarks/study_speed.py --data-dir ../shared/data [--train-limit 30000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from vicinal.experiments.study import parse_study, run_study

STUDY = """
name = "speed"
seeds = 2
[defaults]
dataset = "fashion-mnist"
data_dir = {data_dir!r}
epochs = 1
train_limit = {train_limit}
test_limit = 2000
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="")
    p.add_argument("--train-limit", type=int, default=30000)
    args = p.parse_args()
    text = STUDY.format(data_dir=args.data_dir, train_limit=args.train_limit)
    if not args.data_dir:
        text = text.replace("data_dir = ''\n", "")
    spec = parse_study(text)
    rates = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_study(spec, tmp, jobs=jobs, progress=False)
            wall = time.perf_counter() - t0
        rates[jobs] = len(spec.cells()) / wall * 3600
        print(f"--jobs {jobs}: {len(spec.cells())} cells in {wall:6.1f} s -> {rates[jobs]:7.1f} cells/hour")
    print(f"--jobs 2 / --jobs 1: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
