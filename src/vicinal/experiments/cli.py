"""The command line: ``vicinal compare | preview | study | report``.

The top of the package: it parses options into the harness's configs
(:mod:`vicinal.experiments.runs.compare`, :mod:`vicinal.experiments.runs.study`) and prints
one clear line for bad options or data instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from vicinal.experiments.atomic import DiskFullError, check_writable_folder
from vicinal.experiments.spec import METHOD_DEFAULTS, MIX_POLICIES, PRECISIONS, RUN_METHODS
from vicinal.experiments.presets import PRESETS
from vicinal.experiments.runs.processes import RunFailed, describe_interrupt
from vicinal.sampling import GRANULARITIES, PAIRINGS


def _method_default(option: str) -> str:
    """Help text naming each method's default for ``option``."""
    uses = [f"{m}: {d[option]}" for m, d in METHOD_DEFAULTS.items() if option in d]
    return "default per method: " + ", ".join(uses)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="'fashion-mnist', 'mnist', a .npz file with x and y arrays, or a folder with one "
        "sub-folder of images per class (default: %(default)s)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset's four IDX files (.gz or not). Searched otherwise, in order: "
        "$VICINAL_DATA_DIR, /usr/share/datasets/<name>/ (Debian's dataset-fashion-mnist), the user "
        "cache, then a download from the official mirrors into the cache",
    )
    g.add_argument(
        "--val-size",
        type=int,
        default=2000,
        help="the first N training images are held out for validation (default: %(default)s)",
    )
    g.add_argument(
        "--train-limit", type=int, default=None, help="use only the first N remaining training images (quick runs)"
    )
    g.add_argument("--test-limit", type=int, default=None, help="use only the first N test images (quick runs)")


def _add_mix_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mixing (the mixed arm)")
    g.add_argument(
        "--method",
        choices=[m for m in RUN_METHODS if m != "none"],
        default="mixup",
        help="mixup: convex combination; cutmix: paste a box; switch: cutmix with probability "
        "--switch-prob else mixup; kway: Dirichlet mix of --k samples; manifold: mixup of the hidden "
        "states at one of --mix-layers per step; augmix: AugMix per image, no mixing (default: %(default)s)",
    )
    # None: the method's default. An option the chosen method doesn't use is refused.
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="Beta(alpha, alpha) concentration of mixup's lambda, or the Dirichlet's for kway; "
        f"0 disables mixing ({_method_default('alpha')})",
    )
    g.add_argument(
        "--cutmix-alpha",
        type=float,
        default=None,
        help=f"Beta concentration of CutMix's area ({_method_default('cutmix_alpha')})",
    )
    g.add_argument(
        "--switch-prob",
        type=float,
        default=None,
        help=f"probability of CutMix under --method switch ({_method_default('switch_prob')})",
    )
    g.add_argument("--k", type=int, default=None, help=f"samples per mix under --method kway ({_method_default('k')})")
    g.add_argument(
        "--augmix",
        action="store_true",
        help="AugMix each image before mixing (--method augmix: AugMix alone, no mixing between images)",
    )
    g.add_argument(
        "--jsd",
        action="store_true",
        help="with --method augmix: train on clean + two AugMix views with the Jensen-Shannon consistency loss "
        "(weight 12, the AugMix paper's)",
    )
    g.add_argument(
        "--mix-layers",
        default=None,
        help="under --method manifold: comma-separated module names of the model (and/or 'input'), one chosen "
        "per step, e.g. input,blocks.0,blocks.1,blocks.2 for preact-resnet-small",
    )
    g.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default=None,
        help="one lambda per batch, per sample (elem, the reference) or per pair (default: elem)",
    )
    g.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default=None,
        help="stream: partners from a second, independently shuffled pass (the reference); roll, flip, "
        f"permute, derange: partners within the batch ({_method_default('pairing')})",
    )
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon, both arms (default: 0)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=int, default=10, help="epochs per arm (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of initial weights, shuffling and mixing (default: 0)")
    g.add_argument("--model", default="reference-cnn", help="registered model name (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads in all (default: torch's default); split between arms trained in parallel",
    )
    g.add_argument(
        "--sequential", action="store_true", help="train the arms one after another instead of in parallel processes"
    )
    g.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format (slower on CPU)")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16 autocast of the forward pass: for GPUs and AMX CPUs; slower on AVX2-only CPUs "
        "(default: %(default)s)",
    )
    g.add_argument("--out", default=None, help="run folder (default: runs/compare-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--mix-policy",
        choices=MIX_POLICIES,
        default="independent",
        help="under torchrun: independent plans per rank, the same plans on every rank (shared), or "
        "one plan over the global batch (global: results independent of the world size)",
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        help="under torchrun: seconds a collective waits for a dead or stuck rank before failing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vicinal",
        description="MixUp-family data augmentation: train with and without mixing and compare.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare = sub.add_parser(
        "compare",
        help="train the reference CNN with and without mixup from the same initial weights",
        description="Train the keras.io reference CNN on the dataset twice from the same initial weights, once "
        "on mixed batches and once on plain ones, then print a table and write a run folder "
        "(config.json, metrics, preview.png, curves.png, summary.md). With no options this is the "
        "reference experiment: Fashion-MNIST, batch 64, 10 epochs, alpha 0.2, one lambda per sample, "
        "two shuffled streams.",
    )
    _add_data_options(compare)
    _add_mix_options(compare)
    _add_run_options(compare)
    compare.set_defaults(func=_cmd_compare)

    preview = sub.add_parser(
        "preview",
        help="write a 3x3 grid of mixed training images with their soft labels",
        description="Write preview.png: nine images of the first mixed training batch, each "
        "titled with its soft label as class names and weights.",
    )
    _add_data_options(preview)
    _add_mix_options(preview)
    preview.add_argument("--seed", type=int, default=0, help="seed of the shuffling and mixing (default: 0)")
    preview.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    preview.add_argument("--out", default="preview.png", help="output PNG (default: %(default)s)")
    preview.set_defaults(func=_cmd_preview)

    study = sub.add_parser(
        "study",
        help="run a grid of arms x seeds (a preset or a TOML file), then render its report",
        description="Run a study: every arm of the grid for every seed, each cell a training run in its own "
        "folder. Finished cells are skipped and interrupted ones resumed when the command is run "
        "again. Each preset's TOML file (in vicinal/experiments/presets/) describes what it compares.",
    )
    study.add_argument("study", help=f"preset name ({', '.join(PRESETS)}) or a TOML file")
    study.add_argument("--out", default=None, help="study folder (default: runs/study-<name>)")
    study.add_argument("--jobs", type=int, default=1, help="cells trained at once, one process each (default: 1)")
    study.add_argument("--seeds", type=int, default=None, help="use seeds 0..N-1 instead of the study's")
    study.add_argument("--epochs", type=int, default=None, help="override every arm's epochs")
    study.add_argument("--data-dir", default=None, help="folder holding the dataset's IDX files (see compare)")
    study.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    study.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    study.add_argument("--val-size", type=int, default=None, help="override the validation hold-out size")
    study.add_argument("--device", default="cpu", help="cpu or cuda[:N], for every cell (default: %(default)s)")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    study.add_argument(
        "--batch-seeds",
        action="store_true",
        help="train the seeds of each arm together in one process as one batched model (stacked weights; "
        "each seed keeps its own initial weights, data order, mixing plans, dropout masks and Adam state; "
        "results equal one-by-one training up to float rounding). Refused for models with BatchNorm, "
        "Manifold Mixup, AugMix/JSD and torchrun",
    )
    study.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per training process (default: the cores shared among --jobs)",
    )
    study.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="train only the cells i with i %% N == I (0 <= I < N), e.g. the index of a Slurm array task; "
        "processes sharing --out never train a cell twice, with or without --shard",
    )
    study.set_defaults(func=_cmd_study)

    report = sub.add_parser(
        "report",
        help="render report.md/report.html from a study or compare folder",
        description="Render a self-contained HTML report, a Markdown summary and PNG figures "
        "from saved results only (nothing is retrained).",
    )
    report.add_argument("folder", help="a study folder (study.json) or a compare run folder (results.json)")
    report.add_argument("--no-preview", action="store_true", help="skip the preview grid (it needs the data)")
    report.set_defaults(func=_cmd_report)
    return parser


def _cmd_study(args: argparse.Namespace) -> int:
    from vicinal.experiments.report.report import render_report
    from vicinal.experiments.runs.study import load_study, run_study, study_lock

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.out:
        check_writable_folder(Path(args.out))
    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("data_dir", args.data_dir),
            ("train_limit", args.train_limit),
            ("test_limit", args.test_limit),
            ("val_size", args.val_size),
        )
        if v is not None
    }
    spec = load_study(args.study, overrides=overrides, seeds=args.seeds)
    out = Path(args.out or f"runs/study-{spec.name}")
    t0 = time.perf_counter()
    run_study(
        spec,
        out,
        jobs=args.jobs,
        progress=not args.no_progress,
        shard=args.shard,
        threads=args.threads,
        batch_seeds=args.batch_seeds,
        device=args.device,
    )
    with study_lock(out):  # processes sharing the folder write the report in turn
        paths = render_report(out)
    text = Path(paths["markdown"]).read_text()
    print(text[: text.find("\n## ", text.find("## Paired") + 1)])  # the two tables, not the figure sections
    print(f"study {spec.name}: {len(spec.cells())} cells, {time.perf_counter() - t0:.1f} s; report: {paths['html']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from vicinal.experiments.report.report import render_report

    paths = render_report(args.folder, preview=not args.no_preview)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def _config_from(args: argparse.Namespace):
    from vicinal.experiments.runs.compare import CompareConfig

    values = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "val_size": args.val_size,
        "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "method": args.method,
        "alpha": args.alpha,
        "cutmix_alpha": args.cutmix_alpha,
        "switch_prob": args.switch_prob,
        "k": args.k,
        "granularity": args.granularity,
        "pairing": args.pairing,
        "mix_layers": None if args.mix_layers is None else tuple(args.mix_layers.split(",")),
        "augmix": args.augmix,
        "jsd": args.jsd,
        "label_smoothing": args.label_smoothing,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }
    for name in ("epochs", "model", "device", "threads"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    if hasattr(args, "sequential"):
        values["parallel"] = not args.sequential
        values["channels_last"] = not args.no_channels_last
        values["mix_policy"] = args.mix_policy
        values["precision"] = args.precision
        values["dist_timeout_s"] = args.dist_timeout
    known = {f.name for f in fields(CompareConfig)}
    return CompareConfig(**{k: v for k, v in values.items() if k in known})


def _cmd_compare(args: argparse.Namespace) -> int:
    from vicinal.experiments.runs.compare import run_compare, summary_table

    cfg = _config_from(args).validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable_folder(out)
    t0 = time.perf_counter()
    results = run_compare(cfg, out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    print()
    print(summary_table(results))
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s; run folder: {out}")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from vicinal.experiments.runs.compare import load_any, make_splits, write_preview

    cfg = _config_from(args).validate()
    splits = make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    path = write_preview(cfg, splits, Path(args.out))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileExistsError, PermissionError, NotADirectoryError, DiskFullError) as exc:
        # Bad options, bad data, a full disk or an unwritable folder end with one clear
        # line, not a traceback.
        from vicinal.experiments.data import DatasetError

        kind = "data error" if isinstance(exc, DatasetError) else "error"
        message = exc.strerror if isinstance(exc, DiskFullError) else exc
        print(f"vicinal: {kind}: {message}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # a dead rank or worker: one line saying what to do
        print(f"vicinal: error: {exc}", file=sys.stderr)
        if exc.exit_at_once:  # skip the destructors of a broken process group, which may abort
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: workers stopped, the run folder resumable
        message, code = describe_interrupt(exc)
        print(f"vicinal: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
