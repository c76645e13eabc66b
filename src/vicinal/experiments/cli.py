"""The command line: ``vicinal compare | preview | study | report``.

The options of ``compare`` and ``preview``, and the overrides of ``study``, are generated
from the fields of the specifications (:mod:`vicinal.experiments.spec`): each field's
:class:`~vicinal.experiments.spec.CliOption` gives its help and flag, and its default
is the field's default. Bad options or data, damaged run files, a full disk and a
vanished run folder end with one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import Field
from pathlib import Path
from typing import Any

from vicinal.experiments.atomic import DiskFullError, check_writable_folder
from vicinal.experiments.data import DatasetError
from vicinal.experiments.errors import CellsFailed, RunFailed
from vicinal.experiments.presets import PRESETS
from vicinal.experiments.report.plots import write_preview
from vicinal.experiments.report.report import render_report, study_summary
from vicinal.experiments.runs.compare import run_compare, summary_table
from vicinal.experiments.runs.processes import describe_interrupt
from vicinal.experiments.runs.study import run_study, study_lock
from vicinal.experiments.spec import STUDY_OVERRIDES, CompareConfig, RunSpec, cli_options, load_study
from vicinal.experiments.splits import load_splits

__all__ = ["COMPARE_OPTIONS", "PREVIEW_OPTIONS", "build_parser", "main"]

#: The CompareConfig fields ``vicinal compare`` offers (all that carry a CliOption).
COMPARE_OPTIONS: tuple[str, ...] = tuple(f.name for f, _ in cli_options(CompareConfig))
#: The fields ``vicinal preview`` offers: the data, the mixing, the seed and the batch size.
PREVIEW_OPTIONS: tuple[str, ...] = tuple(
    f.name
    for f, option in cli_options(RunSpec)
    if option.group in ("data", "mixing") or f.name in ("seed", "batch_size")
)

_GROUP_TITLES = {
    "data": "data",
    "mixing": "mixing (the mixed arm)",
    "optim": "optimizer and learning-rate schedule (every arm)",
    "run": "run",
}


def _value_type(f: Field[Any], cls: type[Any]) -> Any:
    """The type a field's command-line string converts to: its annotation without ``| None``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    return hint


def add_spec_options(
    parser: argparse.ArgumentParser, cls: type[Any], names: tuple[str, ...], *, overrides: bool = False
) -> None:
    """Add the fields ``names`` of specification class ``cls`` to ``parser``, grouped as their CliOption says.

    Args:
        overrides: every option defaults to None ("keep what the study says") instead of
            the field's default, and its help says so (``vicinal study``).
    """
    groups: dict[str, Any] = {}
    for f, option in cli_options(cls, names):
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(_GROUP_TITLES[option.group])
        flag = option.flag or "--" + f.name.replace("_", "-")
        help_text = option.help + (" (overrides every arm's)" if overrides else "")
        value_type = _value_type(f, cls)
        if value_type is bool:
            action = "store_false" if option.turns_off else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_text)
            continue
        group.add_argument(
            flag,
            dest=f.name,
            type=option.parse or value_type,
            choices=option.choices,
            default=None if overrides else f.default,
            help=help_text,
        )


def spec_values(args: argparse.Namespace, names: tuple[str, ...], *, overrides: bool = False) -> dict[str, Any]:
    """The parsed values of the fields ``names``; with ``overrides``, only those given."""
    values = {name: getattr(args, name) for name in names}
    return {k: v for k, v in values.items() if v is not None} if overrides else values


def build_parser() -> argparse.ArgumentParser:
    """The ``vicinal`` argument parser with its four commands."""
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
        "two shuffled streams. On (N, F) features the default model is the MLP, on (N, T, F) sequences the GRU.",
    )
    add_spec_options(compare, CompareConfig, COMPARE_OPTIONS)
    output = compare.add_argument_group("output")
    output.add_argument("--out", default=None, help="run folder (default: runs/compare-<time>)")
    output.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(func=_cmd_compare)

    preview = sub.add_parser(
        "preview",
        help="write a 3x3 grid of mixed training images with their soft labels",
        description="Write preview.png: nine images of the first mixed training batch, each "
        "titled with its soft label as class names and weights.",
    )
    add_spec_options(preview, RunSpec, PREVIEW_OPTIONS)
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
    add_spec_options(study, RunSpec, STUDY_OVERRIDES, overrides=True)
    study.add_argument("--device", default="cpu", help="cpu or cuda[:N], for every cell (default: %(default)s)")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    study.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first cell that fails (its loss diverges, a file of its folder is damaged). By default "
        "the other cells go on; each failed cell is recorded in its failed.json and in the report, and the "
        "command exits with status 1 at the end",
    )
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
    if args.out:
        check_writable_folder(Path(args.out))
    overrides = spec_values(args, STUDY_OVERRIDES, overrides=True)
    spec = load_study(args.study, overrides=overrides, seeds=args.seeds)
    out = Path(args.out or f"runs/study-{spec.name}")
    t0 = time.perf_counter()
    failed: CellsFailed | None = None
    with _resume_hint("run the same command again to resume (finished cells are kept)"):
        try:
            run_study(
                spec,
                out,
                jobs=args.jobs,
                progress=not args.no_progress,
                shard=args.shard,
                threads=args.threads,
                batch_seeds=args.batch_seeds,
                device=args.device,
                fail_fast=args.fail_fast,
            )
        except CellsFailed as exc:  # the report of the finished cells first, then the failures' line
            failed = exc
        if failed is not None and not failed.finished:
            raise failed
        with study_lock(out):  # processes sharing the folder write the report in turn
            paths = render_report(out)
    print(study_summary(out))
    print(f"study {spec.name}: {len(spec.cells())} cells, {time.perf_counter() - t0:.1f} s; report: {paths['html']}")
    if failed is not None:
        raise failed
    return 0


@contextlib.contextmanager
def _resume_hint(hint: str) -> Iterator[None]:
    """A full disk during a run ends with ``hint``: how to resume once there is space."""
    try:
        yield
    except DiskFullError as exc:
        if not exc.started:  # refused before the run wrote anything: its message says what to do
            raise
        raise DiskFullError(exc.errno or errno.ENOSPC, f"{exc.strerror}; free some space, then {hint}") from exc


def _cmd_report(args: argparse.Namespace) -> int:
    paths = render_report(args.folder, preview=not args.no_preview)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    cfg = CompareConfig(**spec_values(args, COMPARE_OPTIONS)).validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_FOLDER (the run to continue)")
    out = Path(args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable_folder(out)
    t0 = time.perf_counter()
    with _resume_hint(f"resume with --resume --out {out}"):
        results = run_compare(cfg, out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    print()
    print(summary_table(results))
    print(f"\ntotal wall time {time.perf_counter() - t0:.1f} s; run folder: {out}")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    spec = RunSpec(**spec_values(args, PREVIEW_OPTIONS))
    spec.check_common()
    spec = spec.resolved()
    spec.mixing()  # validated before the data is loaded
    path = write_preview(spec, load_splits(spec), Path(args.out))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileExistsError, PermissionError, NotADirectoryError, DiskFullError) as exc:
        # Bad options, bad data, a full disk or an unwritable folder end with one clear
        # line, not a traceback.
        kind = "data error" if isinstance(exc, DatasetError) else "error"
        message = exc.strerror if isinstance(exc, DiskFullError) else exc
        print(f"vicinal: {kind}: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A write outside the run files' own (a folder, a lock): the same line.
        print(f"vicinal: error: no space left on device while writing {exc.filename}", file=sys.stderr)
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
