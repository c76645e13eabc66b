"""Reports rendered from saved results only (no training): Markdown, HTML, PNG figures.

``render_report(dir)`` accepts a study folder (``study.json``) or a ``vicinal compare``
run folder (``results.json``), and writes ``report.md``, ``report.html`` (figures
embedded, one self-contained file, rendered from the Jinja2 template
``templates/report.html.j2``), ``summary.json`` and ``figures/*.png``.

Every file it reads is verified against its checksum record and checked against its
schema first (:mod:`vicinal.experiments.atomic`): a damaged, NaN-holding or foreign
file is refused by name, never reported, and a cell that failed (``failed.json``) is
listed with its error, never counted as a result.

Tables are built once as structured rows (:class:`Table`) and written both as Markdown
and as HTML. A value that needs at least two seeds (a standard deviation, an interval,
a p-value) reads "n/a" with one seed; a metric a run did not record reads "–".
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import jinja2
import numpy as np

from vicinal.experiments.atomic import atomic_write_bytes, atomic_write_json, check_arms, check_fields, read_json
from vicinal.experiments.corruptions import corruption_errors, mean_corruption_error
from vicinal.experiments.errors import CellFailure
from vicinal.experiments.report.plots import corruption_heatmap, pyplot, save_figure, write_preview
from vicinal.experiments.report.stats import EXACT_MAX_PATTERNS, MONTE_CARLO_RESAMPLES, paired_test, summarize
from vicinal.experiments.spec import (
    METHOD_DEFAULTS,
    MIX_OPTIONS,
    CellSpec,
    CompareConfig,
    cell_dir,
    read_cell_record,
    read_failure,
    read_study,
)
from vicinal.experiments.splits import load_splits
from vicinal.experiments.training.loop import RESULT
from vicinal.experiments.training.single import ArmResult, read_result

__all__ = [
    "FGSM_KEY",
    "METRICS",
    "TEMPLATE",
    "Table",
    "aggregate",
    "comparison_table",
    "failed_cells",
    "failures_table",
    "load_results",
    "render_report",
    "results_table",
    "robustness",
    "settings",
    "study_summary",
]

FGSM_KEY = "0.03"


# --------------------------------------------------------------------------- extraction


def _metric(result: dict[str, Any], name: str) -> float:
    """One scalar of a cell's result; NaN when the run did not record it."""
    m = result.get("metrics") or {}
    last = m.get("last") or {}
    if name == "acc_last":
        return float(result["test_acc"])
    if name == "acc_best_epoch":
        accs = [h["test_acc"] for h in result.get("history", []) if "test_acc" in h]
        return float(max(accs)) if accs else math.nan
    if name == "acc_val_selected":
        return float((m.get("best") or {}).get("accuracy", math.nan))
    if name in ("nll", "brier", "ece", "ece_ts", "temperature"):
        return float(last.get(name, math.nan))
    if name.startswith("fgsm"):
        return float((last.get("fgsm") or {}).get(name[4:], math.nan))
    if name == "corruption_error":  # mean over corruptions and severities, in [0, 1]
        errors = _corruption_errors(result)
        return float(np.mean(list(errors.values()))) if errors else math.nan
    raise KeyError(name)


METRICS = [
    ("acc_last", "test acc (last epoch)", 100.0),
    ("acc_best_epoch", "test acc (best epoch)", 100.0),
    ("nll", "NLL", 1.0),
    ("brier", "Brier", 1.0),
    ("ece", "ECE (15 bins)", 100.0),
    ("ece_ts", "ECE after temperature scaling", 100.0),
    ("temperature", "temperature T (validation NLL)", 1.0),
    ("fgsm0.01", "FGSM acc ε=0.01", 100.0),
    ("fgsm0.03", "FGSM acc ε=0.03", 100.0),
    ("fgsm0.1", "FGSM acc ε=0.1", 100.0),
]


def load_results(study_dir: str | os.PathLike) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]]]:
    """A study folder's record (``study.json``) and every finished cell's (spec, result).

    Raises:
        UnreadableFileError: ``study.json`` or a ``result.json`` is damaged, holds NaN or
            has another schema; names the file.
    """
    root = Path(study_dir)
    record = read_study(root / "study.json")
    out = []
    for arm in record["arms"]:
        for seed in record["seeds"]:
            cell = CellSpec(**{**arm, "seed": seed})
            path = cell_dir(root, cell) / RESULT
            if path.exists():
                out.append((cell, read_result(path)))
    return record, out


def failed_cells(path: str | os.PathLike) -> list[tuple[CellSpec, CellFailure]]:
    """The cells of a study folder that failed and have no result: (spec, its ``failed.json``)."""
    root = Path(path)
    if not (root / "study.json").exists():
        return []  # a compare run stops at a failure: it has none to list
    record = read_study(root / "study.json")
    out = []
    for arm in record["arms"]:
        for seed in record["seeds"]:
            cell = CellSpec(**{**arm, "seed": seed})
            folder = cell_dir(root, cell)
            failure = None if (folder / RESULT).exists() else read_failure(folder)
            if failure is not None:
                out.append((cell, failure))
    return out


@dataclass(frozen=True)
class _CompareResults:
    """The schema of a compare run's ``results.json`` (each arm holds :class:`ArmResult`'s fields)."""

    arms: list[dict[str, Any]]
    wall_s: float = 0.0
    parallel: bool = False
    world_size: int = 1
    split_rule: str = ""
    data_source: str = ""


def _check_compare_results(data: Any) -> None:
    check_fields(_CompareResults, data, what="a compare run's results")
    check_arms(ArmResult, data["arms"], what="an arm's result")


def _load_any(path: Path) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]]]:
    """A study folder's or a compare run folder's record and (spec, result) of every finished run."""
    if (path / "study.json").exists():
        return load_results(path)
    if (path / "results.json").exists():
        again = f"run `vicinal compare --resume --out {path}` with the run's options to write it again"
        cfg = read_json(
            path / "config.json",
            check=lambda d: check_fields(CompareConfig, d, what="a compare run's options"),
            remedy="restore it (the report needs the run's options)",
        )
        res = read_json(path / "results.json", check=_check_compare_results, remedy=again)
        cells = []
        for arm in res["arms"]:
            spec = CellSpec(
                arm=arm["name"],
                method="none" if arm["name"] == "none" else cfg.get("method", "mixup"),
                alpha=cfg.get("alpha", 0.2),
                dataset=cfg.get("dataset", "?"),
                epochs=cfg.get("epochs", 0),
                seed=cfg.get("seed", 0),
                baseline="none" if arm["name"] != "none" else None,
            )
            cells.append((spec, arm))
        record = {
            "name": f"compare ({path.name})",
            "description": "a vicinal compare run",
            "seeds": [cfg.get("seed", 0)],
            "arms": [asdict(c) for c, _ in cells],
        }
        return record, cells
    raise ValueError(f"{path} holds neither a study (study.json) nor a compare run (results.json)")


def _baselines_of(arm: CellSpec, arms: dict[str, CellSpec]) -> list[str]:
    """The arms ``arm`` is compared with: its ``baseline`` field (one name, or several
    separated by commas), else the plain arm of the same recipe."""
    if arm.baseline:
        return [b for b in (name.strip() for name in arm.baseline.split(",")) if b in arms]
    base = _baseline_of(arm, arms)
    return [] if base is None else [base]


def _baseline_of(arm: CellSpec, arms: dict[str, CellSpec]) -> str | None:
    if arm.baseline:
        first = _baselines_of(arm, arms)
        return first[0] if first else None
    if arm.method == "none" and arm.label_smoothing == 0:
        return None
    same = [
        a
        for a in arms.values()
        if a.method == "none"
        and a.arm != arm.arm
        and a.noise == arm.noise
        and a.model == arm.model
        and a.schedule == arm.schedule
        and a.epochs == arm.epochs
    ]
    same.sort(key=lambda a: (a.label_smoothing != 0, a.arm))
    return same[0].arm if same else None


# --------------------------------------------------------------------------- tables

NA = "n/a"  # cannot be computed from the seeds there are (one seed: no spread, no test)
MISSING = "–"  # the runs did not record it


def _num(v: float | None) -> float:
    """A stored value as a float for plotting; ``None`` (not computable) becomes NaN."""
    return math.nan if v is None else float(v)


Cell: TypeAlias = str | tuple[str, str]  # a value, or (value, detail): the detail (an interval) is set below it in HTML


def _fmt_summary(s: dict[str, Any], scale: float, digits: int = 2) -> Cell:
    if s["n"] == 0 or s["mean"] is None:
        return MISSING
    mean = f"{s['mean'] * scale:.{digits}f}"
    if s["n"] < 2 or s["std"] is None:
        return f"{mean} ± {NA}"
    return (
        f"{mean} ± {s['std'] * scale:.{digits}f}",
        f"[{s['ci_low'] * scale:.{digits}f}, {s['ci_high'] * scale:.{digits}f}]",
    )


def _fmt_diff(c: dict[str, Any] | None) -> Cell:
    """A paired difference in points with its interval."""
    if not c or c.get("mean") is None:
        return MISSING
    mean = f"{100 * c['mean']:+.2f}"
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return (mean, f"[{NA}]")
    return (mean, f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]")


def _fmt_p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NA
    return f"{v:.3g}"


@dataclass
class Table:
    """A table as structured rows: ``rows`` are lists of cells, one per column.

    A cell is a string or a ``(value, detail)`` pair; Markdown writes the pair on one
    line, HTML sets the detail (a confidence interval) in small type below the value.
    """

    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool]  # per column: right-aligned numbers

    def drop_empty(self, first: int) -> Table:
        """Leave out the columns from ``first`` on in which no row has a value."""
        keep = [i for i in range(len(self.columns)) if i < first or any(r[i] != MISSING for r in self.rows)]
        return Table(
            [self.columns[i] for i in keep], [[r[i] for i in keep] for r in self.rows], [self.numeric[i] for i in keep]
        )

    def markdown(self) -> str:
        def cell(c: Cell) -> str:
            text = c if isinstance(c, str) else " ".join(c)
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [
            "| " + " | ".join(cell(c) for c in self.columns) + " |",
            "|" + "".join(" ---: |" if num else " --- |" for num in self.numeric),
        ]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def context(self) -> dict[str, Any]:
        """What the HTML template needs: ``columns`` and ``rows`` of ``{text, detail, numeric}`` cells."""

        def cell(c: Cell, numeric: bool) -> dict[str, Any]:
            text, detail = (c, "") if isinstance(c, str) else c
            return {"text": text, "detail": detail, "numeric": numeric}

        return {
            "columns": [cell(c, num) for c, num in zip(self.columns, self.numeric)],
            "rows": [[cell(c, num) for c, num in zip(row, self.numeric)] for row in self.rows],
        }


def aggregate(cells: list[tuple[CellSpec, dict[str, Any]]]) -> dict[str, Any]:
    """Per-arm summaries and per-arm paired comparisons with the baseline."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    specs: dict[str, CellSpec] = {}
    for spec, res in cells:
        by_arm[spec.arm][spec.seed] = res
        specs.setdefault(spec.arm, spec)
    arms_out = {}
    for arm, seeds in by_arm.items():
        arms_out[arm] = {key: summarize([_metric(r, key) for r in seeds.values()]) for key, _, _ in METRICS}
    comparisons = {}
    for arm, spec in specs.items():
        for base in _baselines_of(spec, specs):
            if base not in by_arm:
                continue
            common = sorted(set(by_arm[arm]) & set(by_arm[base]))
            if not common:
                continue
            comp: dict[str, Any] = {"arm": arm, "baseline": base, "seeds": common}
            for key in ("acc_last", "acc_best_epoch", "ece", "ece_ts", "fgsm" + FGSM_KEY, "corruption_error"):
                a = [_metric(by_arm[arm][s], key) for s in common]
                b = [_metric(by_arm[base][s], key) for s in common]
                if any(math.isnan(v) for v in a + b):
                    continue
                comp[key] = paired_test(a, b)
            comparisons[f"{arm} vs {base}"] = comp
    return {
        "arms": arms_out,
        "comparisons": comparisons,
        "specs": {k: asdict(v) for k, v in specs.items()},
        "seeds": {k: sorted(v) for k, v in by_arm.items()},
    }


def results_table(agg: dict[str, Any]) -> Table:
    """One row per arm: mean ± std [95% CI] of every metric over its seeds."""
    rows = []
    for arm, summ in agg["arms"].items():
        cells: list[Cell] = [_fmt_summary(summ[key], scale, 2 if scale == 100 else 4) for key, _, scale in METRICS]
        rows.append([arm, str(len(agg["seeds"][arm])), *cells])
    table = Table(["arm", "seeds"] + [label for _, label, _ in METRICS], rows, [False] + [True] * (len(METRICS) + 1))
    return table.drop_empty(first=2)


def _data_origin(root: Path, cells: list[tuple[CellSpec, dict[str, Any]]]) -> dict[str, Any]:
    """Where a study's data came from, as its cells recorded it (cell.json)."""
    for spec, _ in cells:
        path = cell_dir(root, spec) / "cell.json"
        if path.exists():
            data = read_cell_record(path)
            if data.get("data_source"):
                return {"data_source": data["data_source"], "split_rule": data.get("split_rule")}
    return {}


# Flags that add something on top of an arm's method: an arm has them only when they are
# on (a False flag is not a setting of that arm), and AugMix as the method is not AugMix
# on top of itself.
_ON_TOP_FLAGS = ("augmix", "jsd")


def _own_settings(arm: dict[str, Any]) -> dict[str, Any]:
    """An arm's settings as it ran them: its method with that method's parameters only."""
    own = dict(arm)
    method = own.get("method")
    for key in MIX_OPTIONS:  # options of other methods (resolution leaves them None)
        if key in own and key not in METHOD_DEFAULTS.get(str(method), {}):
            own[key] = None
    for flag in _ON_TOP_FLAGS:
        if own.get(flag) is False or (flag == "augmix" and method == "augmix"):
            own[flag] = None
    return own


def settings(record: dict[str, Any]) -> tuple[str, Table]:
    """What actually ran (overrides included): the settings common to every arm as one
    line, and a table of the settings that differ between arms; each arm shows its
    method's own parameters only (:func:`_own_settings`)."""
    arms = [_own_settings(a) for a in record["arms"]]
    names = [k for k in arms[0] if k not in ("arm", "seed")] if arms else []
    varying = [k for k in names if len({json.dumps(a.get(k)) for a in arms}) > 1]
    common = [k for k in names if k not in varying and arms[0].get(k) is not None]
    line = "Common to every arm: " + ", ".join(f"{k}={arms[0][k]}" for k in common) if arms else ""
    line += f"; seeds {', '.join(str(s) for s in record.get('seeds', []))}."
    if record.get("data_source"):
        line += f" Data: {record['data_source']}; split: {record.get('split_rule')}."
    rows: list[list[Cell]] = [[a["arm"]] + ["–" if a.get(k) is None else str(a[k]) for k in varying] for a in arms]
    return line, Table(["arm", *varying], rows, [False] * (1 + len(varying)))


def _perm_cell(c: dict[str, Any]) -> str:
    p = _fmt_p(c.get("perm_p"))
    return f"{p} (MC)" if p != NA and c.get("perm_exact") is False else p


def comparison_table(agg: dict[str, Any]) -> Table:
    """One row per compared arm: paired differences with its baseline, p-values, wins."""
    columns = [
        "arm",
        "vs",
        "seeds",
        "Δ test acc, last epoch (points) [95% CI]",
        "paired t p",
        "sign-flip p",
        "wins",
        "Δ best-epoch acc",
        "Δ ECE (points)",
        "Δ ECE after temp. scaling (points)",
        "Δ FGSM acc ε=" + FGSM_KEY,
        "Δ mean corruption error (points) [95% CI]",
        "its paired t p",
    ]
    rows = []
    for comp in agg["comparisons"].values():
        arm = comp["arm"]
        acc = comp.get("acc_last")
        if not acc:
            continue
        rows.append(
            [
                arm,
                comp["baseline"],
                str(len(comp["seeds"])),
                _fmt_diff(acc),
                _fmt_p(acc.get("t_p")),
                _perm_cell(acc),
                f"{acc['wins']}/{acc['n']}",
                _fmt_diff(comp.get("acc_best_epoch")),
                _fmt_diff(comp.get("ece")),
                _fmt_diff(comp.get("ece_ts")),
                _fmt_diff(comp.get("fgsm" + FGSM_KEY)),
                _fmt_diff(comp.get("corruption_error")),
                _fmt_p(comp["corruption_error"].get("t_p")) if comp.get("corruption_error") else MISSING,
            ]
        )
    return Table(columns, rows, [False, False] + [True] * 11).drop_empty(first=7)


# --------------------------------------------------------------------------- figures


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path, close=True)


FOREST_PANELS = [
    ("acc_last", "test accuracy, last epoch", "higher is better"),
    ("ece", "ECE (15 bins)", "lower is better"),
    ("ece_ts", "ECE after temperature scaling", "lower is better"),
    ("fgsm" + FGSM_KEY, f"FGSM accuracy, ε={FGSM_KEY}", "higher is better"),
    ("corruption_error", "mean corruption error", "lower is better"),
]


def _fig_forest(agg: dict[str, Any], out: Path) -> Path | None:
    """Every compared arm's paired difference with its baseline and 95% CI, one panel per metric."""
    comps = [(c["arm"], c) for c in agg["comparisons"].values() if c.get("acc_last")]
    panels = [p for p in FOREST_PANELS if any(c.get(p[0]) for _, c in comps)]
    if not comps or not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.8 + 3.6 * len(panels), max(2.4, 1.4 + 0.42 * len(comps))), sharey=True, squeeze=False
    )
    ys = np.arange(len(comps))
    # "$" would start matplotlib math text in an arm name.
    labels = [f"{arm} − {c['baseline']}  (n={len(c['seeds'])})".replace("$", r"\$") for arm, c in comps]
    for ax, (key, title, better) in zip(axes[0], panels):
        ax.axvline(0, color="0.3", lw=1, zorder=1)
        for y, (_, c) in zip(ys, comps):
            d = c.get(key)
            if not d or d.get("mean") is None:
                ax.text(0, y, "not recorded", ha="center", va="center", fontsize=7, color="0.5")
                continue
            mean, lo, hi = 100 * d["mean"], d.get("ci_low"), d.get("ci_high")
            if lo is None or hi is None:  # one seed: a point without an interval
                ax.plot(mean, y, "o", mfc="white", mec="0.4", zorder=3)
                continue
            lo, hi = 100 * lo, 100 * hi
            color = "tab:blue" if lo > 0 or hi < 0 else "0.45"
            ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3, zorder=3)
        ax.set_title(f"{title}\n({better})", fontsize=10)
        ax.set_xlabel("difference (points)")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15)
    axes[0][0].set_yticks(ys, labels)
    axes[0][0].set_ylim(len(comps) - 0.5, -0.5)  # first arm on top
    fig.suptitle("Paired differences with the baseline: mean and 95% CI over seeds", fontsize=11)
    fig.tight_layout()
    return _save(fig, out / "forest.png")


def _fig_alpha(agg: dict[str, Any], out: Path) -> Path | None:
    specs = {k: CellSpec(**v) for k, v in agg["specs"].items()}
    groups: dict[tuple[str, float], list[str]] = defaultdict(list)
    for arm, s in specs.items():
        if s.method != "none" and s.alpha is not None:  # alpha None: a method without it (cutmix)
            groups[(s.method, s.noise)].append(arm)
    groups = {k: v for k, v in groups.items() if len({specs[a].alpha for a in v}) >= 3}
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (method, noise), arms in groups.items():
        arms.sort(key=lambda a: _num(specs[a].alpha))
        xs = [_num(specs[a].alpha) for a in arms]
        ms = [100 * _num(agg["arms"][a]["acc_last"]["mean"]) for a in arms]
        es = [100 * (agg["arms"][a]["acc_last"]["std"] or 0.0) for a in arms]
        ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label=f"{method}" + (f", noise {noise:g}" if noise else ""))
        base = _baseline_of(specs[arms[0]], specs)
        if base:
            b = agg["arms"][base]["acc_last"]
            ax.axhline(100 * _num(b["mean"]), color="gray", ls="--", label=f"{base} (mean)")
            if b["std"] is not None:
                ax.axhspan(100 * (b["mean"] - b["std"]), 100 * (b["mean"] + b["std"]), color="gray", alpha=0.15)
    ax.set(
        xscale="log", xlabel="α", ylabel="test accuracy, last epoch (%)", title="Accuracy vs α (mean ± std over seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_vs_alpha.png")


def _fig_noise(agg: dict[str, Any], out: Path) -> Path | None:
    specs = {k: CellSpec(**v) for k, v in agg["specs"].items()}
    groups: dict[tuple[str, float | None], list[str]] = defaultdict(list)
    for arm, s in specs.items():
        groups[(s.method, s.alpha if s.method != "none" else None)].append(arm)
    groups = {k: v for k, v in groups.items() if len({specs[a].noise for a in v}) >= 2}
    if not groups:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for (method, alpha), arms in groups.items():
        arms.sort(key=lambda a: specs[a].noise)
        xs = [100 * specs[a].noise for a in arms]
        label = "no mixing" if method == "none" else method + ("" if alpha is None else f" α={alpha:g}")
        for ax, key in zip(axes, ("acc_last", "acc_best_epoch")):
            ms = [100 * _num(agg["arms"][a][key]["mean"]) for a in arms]
            es = [100 * (agg["arms"][a][key]["std"] or 0.0) for a in arms]
            ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label=label)
    axes[0].set(title="Last epoch", xlabel="label noise (%)", ylabel="test accuracy (%)")
    axes[1].set(title="Best epoch", xlabel="label noise (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_vs_noise.png")


def _fig_curves(agg: dict[str, Any], cells: list[tuple[CellSpec, dict[str, Any]]], out: Path) -> Path | None:
    hist: dict[str, list[list[float]]] = defaultdict(list)
    for spec, res in cells:
        hist[spec.arm].append([h["val_acc"] for h in res.get("history", [])])
    if not hist:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, runs in list(hist.items())[:10]:
        n = min(len(r) for r in runs)
        if n == 0:
            continue
        arr = 100 * np.array([r[:n] for r in runs])
        ax.plot(range(1, n + 1), arr.mean(0), marker=".", label=arm)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Learning curves (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "learning_curves.png")


def _corruption_errors(result: dict[str, Any]) -> dict[str, float] | None:
    """{corruption: mean error over severities} of one cell, or None if not measured."""
    table = ((result.get("metrics") or {}).get("last") or {}).get("corruptions")
    if not table:
        return None
    return corruption_errors({(c, i + 1): acc for c, v in table.items() for i, acc in enumerate(v["acc"])})


def robustness(cells: list[tuple[CellSpec, dict[str, Any]]]) -> tuple[Table, dict[str, dict[str, float]]] | None:
    """Corruption robustness per arm: clean error, mean corruption error, corrupted-set
    ECE and mCE (the AugMix paper's, against the arm's baseline, paired by seed).

    Returns the table and ``{arm: {corruption: mean error in [0, 1] over seeds}}`` for the heat map,
    or None when no cell measured corruptions.
    """
    errors: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    eces: dict[str, dict[int, float]] = defaultdict(dict)
    clean: dict[str, dict[int, float]] = defaultdict(dict)
    specs: dict[str, CellSpec] = {}
    for spec, res in cells:
        e = _corruption_errors(res)
        if e is None:
            continue
        specs.setdefault(spec.arm, spec)
        errors[spec.arm][spec.seed] = e
        table = res["metrics"]["last"]["corruptions"]
        eces[spec.arm][spec.seed] = 100 * float(np.mean([x for v in table.values() for x in v["ece"]]))
        clean[spec.arm][spec.seed] = 100 * (1 - res["test_acc"])
    if not errors:
        return None
    rows: list[list[Cell]] = []
    heat: dict[str, dict[str, float]] = {}
    for arm, by_seed in errors.items():
        corruptions = list(next(iter(by_seed.values())))
        heat[arm] = {c: float(np.mean([e[c] for e in by_seed.values()])) for c in corruptions}
        mean_err = summarize([100 * float(np.mean(list(e.values()))) for e in by_seed.values()])
        base = _baseline_of(specs[arm], specs)
        mce: Cell = MISSING
        if base is not None and base in errors:
            common = sorted(set(by_seed) & set(errors[base]))
            if common:
                try:
                    values = [mean_corruption_error(by_seed[s], errors[base][s]) for s in common]
                except ValueError:  # the baseline made no error on some corruption: mCE is undefined
                    mce = f"{NA} (baseline error 0)"
                else:
                    mce = _fmt_summary(summarize(values), 1)
                    mce = (f"{mce[0]} vs {base}", mce[1]) if isinstance(mce, tuple) else f"{mce} vs {base}"
        rows.append(
            [
                arm,
                str(len(by_seed)),
                _fmt_summary(summarize(list(clean[arm].values())), 1),
                _fmt_summary(mean_err, 1),
                mce,
                _fmt_summary(summarize(list(eces[arm].values())), 1),
            ]
        )
    columns = ["arm", "seeds", "clean error (%)", "mean corruption error (%)", "mCE (%)", "ECE on corrupted (%)"]
    return Table(columns, rows, [False, False, True, True, True, True]), heat


_ROBUSTNESS_NOTE = (
    "Errors on the test set corrupted by 10 corruptions at 5 severities (vicinal.experiments.corruptions, after "
    "CIFAR-10-C). mCE: for each corruption the arm's errors summed over severities divided by its baseline's, "
    "averaged over corruptions, per seed (the AugMix paper's definition; the baseline scores 100)."
)


def _fig_reliability(cells: list[tuple[CellSpec, dict[str, Any]]], out: Path) -> Path | None:
    pooled: dict[str, np.ndarray] = {}
    for spec, res in cells:
        bins = ((res.get("metrics") or {}).get("last") or {}).get("reliability")
        if not bins:
            continue
        arr = np.array(
            [[b["count"], (b["confidence"] or 0) * b["count"], (b["accuracy"] or 0) * b["count"]] for b in bins]
        )
        pooled[spec.arm] = pooled.get(spec.arm, 0) + arr
    if not pooled:
        return None
    arms = list(pooled)[:6]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(arms), figsize=(3.2 * len(arms), 3.4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        arr = pooled[arm]
        nb = len(arr)
        centers = (np.arange(nb) + 0.5) / nb
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = arr[:, 2] / arr[:, 0]
            conf = arr[:, 1] / arr[:, 0]
        ece = float(np.nansum(arr[:, 0] / arr[:, 0].sum() * np.abs(acc - conf)))
        ax.bar(centers, np.nan_to_num(acc), width=1 / nb, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(title=f"{arm}\nECE {100 * ece:.2f}%", xlabel="confidence", xlim=(0, 1), ylim=(0, 1))
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return _save(fig, out / "reliability.png")


def _fig_preview(record: dict[str, Any], out: Path) -> Path | None:
    for arm in record["arms"]:
        spec = CellSpec(**{**arm, "seed": record["seeds"][0]})
        if spec.method == "none":
            continue
        try:
            # Stored arms may carry options their method doesn't use (written before the
            # options were resolved): treat them as inherited, not asked for.
            resolved = spec.resolved(inherited=frozenset(MIX_OPTIONS))
            return write_preview(resolved, load_splits(resolved), out / "preview.png")
        except (ValueError, OSError):
            return None  # the data is not here: the report goes on without the grid
    return None


# --------------------------------------------------------------------------- rendering

TEMPLATE = "report.html.j2"


def _template() -> Any:
    """The HTML template (package data ``vicinal/experiments/templates/``), autoescaping on."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vicinal.experiments.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE)


def _notes() -> list[str]:
    exact_seeds = int(math.log2(EXACT_MAX_PATTERNS))
    return [
        "Values are mean ± sample std [95% Student-t confidence interval of the mean] over seeds. "
        "Accuracies, ECE and FGSM accuracies in percent; NLL and Brier on the test set at the last epoch. "
        "'Best epoch' is the highest test accuracy over epochs (the mixup paper's Table 2 convention).",
        "Comparisons are paired by seed: both arms of a seed start from the same initial weights and see the "
        "same data order. Δ is arm minus baseline, in points. 'paired t p' is the two-sided paired t-test; "
        "'sign-flip p' is the two-sided permutation test of the mean difference (each seed's difference "
        f"keeps or flips its sign), exact over all 2^n sign patterns up to n = {exact_seeds} seeds, beyond that "
        f"Monte Carlo over {MONTE_CARLO_RESAMPLES:,} seeded random patterns, marked (MC). "
        "'wins' counts the seeds on which the arm beat its baseline.",
        f"{NA}: needs at least two seeds. {MISSING}: not recorded by these runs.",
    ]


def _meta(agg: dict[str, Any], cells: list[tuple[CellSpec, dict[str, Any]]], failed: int = 0) -> str:
    n_seeds = len({s for seeds in agg["seeds"].values() for s in seeds})
    return f"{len(agg['arms'])} arms × {n_seeds} seeds, {len(cells)} finished runs" + (
        f", {failed} failed (listed below, not counted)" if failed else ""
    )


def failures_table(failed: list[tuple[CellSpec, CellFailure]]) -> Table:
    """One row per failed cell: its arm, seed and error (what ``failed.json`` says)."""
    rows: list[list[Cell]] = [[spec.arm, str(spec.seed), f"{f.type}: {f.error}"] for spec, f in failed]
    return Table(["arm", "seed", "error"], rows, [False, True, False])


_FAILED_NOTE = (
    "These cells stopped with an error and have no result: their seeds are left out of every table above. "
    "Each cell's failed.json holds its error; running the study again retries them."
)


def _loaded(
    root: Path,
) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]], list[tuple[CellSpec, CellFailure]]]:
    """The record, the finished runs and the failed cells of a folder; refuses a folder with no finished run."""
    record, cells = _load_any(root)
    failed = failed_cells(root)
    if not cells:
        note = f" ({len(failed)} cells failed: see their failed.json)" if failed else ""
        raise ValueError(f"{root} has no finished runs to report on{note}")
    return record, cells, failed


def _tables_markdown(results: Table, comparisons: Table) -> list[str]:
    """The results and paired-comparison sections of report.md, as lines."""
    return [
        "## Results",
        "",
        results.markdown(),
        "",
        "## Paired comparisons with the baseline",
        "",
        comparisons.markdown() if comparisons.rows else "No arm has a baseline to compare with.",
        "",
    ]


def study_summary(path: str | os.PathLike) -> str:
    """What ``vicinal study`` prints: the report's title and size, and its results and
    paired-comparison tables, in Markdown (from saved results only, as :func:`render_report`)."""
    record, cells, failed = _loaded(Path(path))
    agg = aggregate(cells)
    lines = [f"# vicinal report: {record['name']}", "", _meta(agg, cells, len(failed)), ""]
    lines += _tables_markdown(results_table(agg), comparison_table(agg))
    if failed:
        lines += ["## Failed cells", "", failures_table(failed).markdown(), ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_report(path: str | os.PathLike, *, preview: bool = True) -> dict[str, Path]:
    """Write report.md, report.html, summary.json and figures/*.png into ``path``.

    Returns:
        ``{"markdown": ..., "html": ..., <figure title>: <png path>, ...}``.
    """
    root = Path(path)
    record, cells, failed = _loaded(root)
    agg = aggregate(cells)
    figdir = root / "figures"
    forest = _fig_forest(agg, figdir)
    drawn = {
        "Accuracy vs α": _fig_alpha(agg, figdir),
        "Accuracy vs label noise": _fig_noise(agg, figdir),
        "Learning curves": _fig_curves(agg, cells, figdir),
        "Reliability diagrams (last epoch, pooled over seeds)": _fig_reliability(cells, figdir),
        "Mixed training images": _fig_preview(record, figdir) if preview else None,
    }
    robust = robustness(cells)
    if robust is not None:
        drawn["Corruption errors (mean over severities and seeds, %)"] = corruption_heatmap(
            robust[1], figdir / "corruptions.png"
        )
    figs: dict[str, Path] = {k: v for k, v in drawn.items() if v is not None}
    forest_title = "Differences from the baseline"
    forest_caption = (
        "Each row is one arm minus its baseline, paired by seed: the dot is the mean difference, the bar its "
        "95% Student-t interval (blue where it excludes 0, grey where it does not; an open dot: one seed, no "
        "interval). Right of the line at 0 the arm scores higher."
    )
    results = results_table(agg)
    comparisons = comparison_table(agg)
    notes = _notes()
    meta = _meta(agg, cells, len(failed))

    md = [f"# vicinal report: {record['name']}", ""]
    if record.get("description"):
        md += [record["description"], ""]
    md += [meta, ""]
    if forest is not None:
        md += [f"## {forest_title}", "", f"![{forest_title}]({forest.relative_to(root).as_posix()})", ""]
        md += [forest_caption, ""]
    for note in notes:
        md += [note, ""]
    md += _tables_markdown(results, comparisons)
    if failed:
        md += ["## Failed cells", "", _FAILED_NOTE, "", failures_table(failed).markdown(), ""]
    if robust is not None:
        md += ["## Robustness to corruptions", "", _ROBUSTNESS_NOTE, "", robust[0].markdown(), ""]
    settings_line, settings_table = settings({**record, **_data_origin(root, cells)})
    md += ["## Settings that ran", "", settings_line, "", settings_table.markdown(), ""]
    for title, fig in figs.items():
        md += [f"## {title}", "", f"![{title}]({fig.relative_to(root).as_posix()})", ""]
    atomic_write_bytes(root / "report.md", "\n".join(md).encode())

    page = _template().render(
        name=record["name"],
        description=record.get("description", ""),
        meta=meta,
        forest=None if forest is None else {"title": forest_title, "caption": forest_caption, "src": _data_uri(forest)},
        notes=notes,
        tables=[
            {"id": "results", "title": "Results", "table": results.context(), "empty": "No results."},
            {
                "id": "comparisons",
                "title": "Paired comparisons with the baseline",
                "table": comparisons.context(),
                "empty": "No arm has a baseline to compare with.",
            },
            *(
                []
                if not failed
                else [
                    {
                        "id": "failed",
                        "title": "Failed cells",
                        "table": failures_table(failed).context(),
                        "empty": "",
                        "caption": _FAILED_NOTE,
                    }
                ]
            ),
            *(
                []
                if robust is None
                else [
                    {
                        "id": "corruptions",
                        "title": "Robustness to corruptions",
                        "table": robust[0].context(),
                        "empty": "",
                        "caption": _ROBUSTNESS_NOTE,
                    }
                ]
            ),
            {
                "id": "settings",
                "title": "Settings that ran",
                "table": settings_table.context(),
                "empty": settings_line,
                "caption": settings_line,
            },
        ],
        figures=[{"title": title, "src": _data_uri(fig)} for title, fig in figs.items()],
    )
    atomic_write_bytes(root / "report.html", page.encode())
    atomic_write_json(root / "summary.json", agg)
    out: dict[str, Path] = {"markdown": root / "report.md", "html": root / "report.html"}
    if forest is not None:
        out[forest_title] = forest
    return {**out, **figs}
