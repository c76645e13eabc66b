"""Reports rendered from saved results only (no training): Markdown, HTML, PNG figures.

``render_report(dir)`` accepts a study folder (``study.json``) or a ``vicinal compare``
run folder (``results.json``), and writes ``report.md``, ``report.html`` (figures
embedded, one self-contained file) and ``figures/*.png``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vicinal.experiments.stats import paired_test, summarize
from vicinal.experiments.study import CellSpec, load_results
from vicinal.experiments.train import atomic_write_bytes, atomic_write_json

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
    if name in ("nll", "brier", "ece"):
        return float(last.get(name, math.nan))
    if name.startswith("fgsm"):
        return float((last.get("fgsm") or {}).get(name[4:], math.nan))
    raise KeyError(name)


METRICS = [
    ("acc_last", "test acc (last epoch)", 100.0),
    ("acc_best_epoch", "test acc (best epoch)", 100.0),
    ("nll", "NLL", 1.0),
    ("brier", "Brier", 1.0),
    ("ece", "ECE (15 bins)", 100.0),
    ("fgsm0.01", "FGSM acc ε=0.01", 100.0),
    ("fgsm0.03", "FGSM acc ε=0.03", 100.0),
    ("fgsm0.1", "FGSM acc ε=0.1", 100.0),
]


def _load_any(path: Path) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]]]:
    if (path / "study.json").exists():
        return load_results(path)
    if (path / "results.json").exists():
        cfg = json.loads((path / "config.json").read_text())
        res = json.loads((path / "results.json").read_text())
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


def _baseline_of(arm: CellSpec, arms: dict[str, CellSpec]) -> str | None:
    if arm.baseline:
        return arm.baseline if arm.baseline in arms else None
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


def _fmt_summary(s: dict[str, Any], scale: float, digits: int = 2) -> str:
    if s["n"] == 0:
        return "–"
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return (
        f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f} "
        f"[{s['ci_low'] * scale:.{digits}f}, {s['ci_high'] * scale:.{digits}f}]"
    )


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
        base = _baseline_of(spec, specs)
        if base is None or base not in by_arm:
            continue
        common = sorted(set(by_arm[arm]) & set(by_arm[base]))
        if not common:
            continue
        comp = {"baseline": base, "seeds": common}
        for key in ("acc_last", "acc_best_epoch", "ece", "fgsm" + FGSM_KEY):
            a = [_metric(by_arm[arm][s], key) for s in common]
            b = [_metric(by_arm[base][s], key) for s in common]
            if any(math.isnan(v) for v in a + b):
                continue
            comp[key] = paired_test(a, b)
        comparisons[arm] = comp
    return {
        "arms": arms_out,
        "comparisons": comparisons,
        "specs": {k: asdict(v) for k, v in specs.items()},
        "seeds": {k: sorted(v) for k, v in by_arm.items()},
    }


def _results_table(agg: dict[str, Any]) -> str:
    head = "| arm | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    for arm, summ in agg["arms"].items():
        cells = [_fmt_summary(summ[key], scale, 2 if scale == 100 else 4) for key, _, scale in METRICS]
        lines.append(f"| {arm} | {len(agg['seeds'][arm])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _comparison_table(agg: dict[str, Any]) -> str:
    lines = [
        "| arm | vs | seeds | Δ test acc, last epoch (points) [95% CI] | paired t p | sign-flip p | wins | "
        "Δ best-epoch acc | Δ ECE (points) | Δ FGSM acc ε=0.03 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def d(c: dict[str, Any] | None) -> str:
        if not c:
            return "–"
        if c["n"] < 2:
            return f"{100 * c['mean']:+.2f}"
        return f"{100 * c['mean']:+.2f} [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"

    for arm, comp in agg["comparisons"].items():
        acc = comp.get("acc_last")
        if not acc:
            continue
        p = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"
        lines.append(
            f"| {arm} | {comp['baseline']} | {len(comp['seeds'])} | {d(acc)} | {p(acc['t_p'])} | "
            f"{p(acc['perm_p'])} | {acc['wins']}/{acc['n']} | {d(comp.get('acc_best_epoch'))} | "
            f"{d(comp.get('ece'))} | {d(comp.get('fgsm' + FGSM_KEY))} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from vicinal.experiments.plots import _save as save_png

    out = save_png(fig, path)
    _plt().close(fig)
    return out


def _fig_alpha(agg: dict[str, Any], out: Path) -> Path | None:
    specs = {k: CellSpec(**v) for k, v in agg["specs"].items()}
    groups: dict[tuple[str, float], list[str]] = defaultdict(list)
    for arm, s in specs.items():
        if s.method != "none":
            groups[(s.method, s.noise)].append(arm)
    groups = {k: v for k, v in groups.items() if len({specs[a].alpha for a in v}) >= 3}
    if not groups:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (method, noise), arms in groups.items():
        arms.sort(key=lambda a: specs[a].alpha)
        xs = [specs[a].alpha for a in arms]
        ms = [100 * agg["arms"][a]["acc_last"]["mean"] for a in arms]
        es = [100 * np.nan_to_num(agg["arms"][a]["acc_last"]["std"]) for a in arms]
        ax.errorbar(xs, ms, yerr=es, marker="o", capsize=3, label=f"{method}" + (f", noise {noise:g}" if noise else ""))
        base = _baseline_of(specs[arms[0]], specs)
        if base:
            b = agg["arms"][base]["acc_last"]
            ax.axhline(100 * b["mean"], color="gray", ls="--", label=f"{base} (mean)")
            if b["n"] > 1:
                ax.axhspan(100 * (b["mean"] - b["std"]), 100 * (b["mean"] + b["std"]), color="gray", alpha=0.15)
    ax.set(
        xscale="log", xlabel="α", ylabel="test accuracy, last epoch (%)", title="Accuracy vs α (mean ± std over seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_vs_alpha.png")


def _fig_noise(agg: dict[str, Any], out: Path) -> Path | None:
    specs = {k: CellSpec(**v) for k, v in agg["specs"].items()}
    groups: dict[tuple[str, float], list[str]] = defaultdict(list)
    for arm, s in specs.items():
        groups[(s.method, s.alpha if s.method != "none" else 0.0)].append(arm)
    groups = {k: v for k, v in groups.items() if len({specs[a].noise for a in v}) >= 2}
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for (method, alpha), arms in groups.items():
        arms.sort(key=lambda a: specs[a].noise)
        xs = [100 * specs[a].noise for a in arms]
        label = "no mixing" if method == "none" else f"{method} α={alpha:g}"
        for ax, key in zip(axes, ("acc_last", "acc_best_epoch")):
            ms = [100 * agg["arms"][a][key]["mean"] for a in arms]
            es = [100 * np.nan_to_num(agg["arms"][a][key]["std"]) for a in arms]
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
    plt = _plt()
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
    plt = _plt()
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
    from vicinal.experiments.compare import CompareConfig, load_any, make_splits, write_preview

    for arm in record["arms"]:
        spec = CellSpec(**{**arm, "seed": record["seeds"][0]})
        if spec.method == "none":
            continue
        try:
            cfg = CompareConfig(
                dataset=spec.dataset,
                data_dir=spec.data_dir,
                method=spec.method,
                alpha=spec.alpha,
                cutmix_alpha=spec.cutmix_alpha,
                switch_prob=spec.switch_prob,
                k=spec.k,
                granularity=spec.granularity,
                pairing=spec.mix_config().pairing,  # type: ignore[union-attr]
                val_size=spec.val_size,
                train_limit=spec.train_limit,
                seed=spec.seed,
            )
            return write_preview(cfg, make_splits(load_any(cfg.dataset, cfg.data_dir), cfg), out / "preview.png")
        except (ValueError, OSError):
            return None  # the data is not here: the report goes on without the grid
    return None


# --------------------------------------------------------------------------- rendering


def _md_table_to_html(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.strip().splitlines()]
    head, body = rows[0], rows[2:]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    for r in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_report(path: str | os.PathLike, *, preview: bool = True) -> dict[str, Path]:
    """Write report.md, report.html and figures/*.png into ``path``; returns their paths."""
    root = Path(path)
    record, cells = _load_any(root)
    if not cells:
        raise ValueError(f"{root} has no finished runs to report on")
    agg = aggregate(cells)
    figdir = root / "figures"
    figs = {
        "Accuracy vs α": _fig_alpha(agg, figdir),
        "Accuracy vs label noise": _fig_noise(agg, figdir),
        "Learning curves": _fig_curves(agg, cells, figdir),
        "Reliability diagrams (last epoch, pooled over seeds)": _fig_reliability(cells, figdir),
        "Mixed training images": _fig_preview(record, figdir) if preview else None,
    }
    figs = {k: v for k, v in figs.items() if v is not None}
    results_md = _results_table(agg)
    comp_md = _comparison_table(agg)
    intro = [
        f"# vicinal report: {record['name']}",
        "",
        record.get("description", ""),
        "",
        "Values are mean ± sample std [95% Student-t confidence interval of the mean] over seeds. "
        "Accuracies, ECE and FGSM accuracies in percent; NLL and Brier on the test set at the last epoch. "
        "'Best epoch' is the highest test accuracy over epochs (the mixup paper's Table 2 convention). "
        "Comparisons are paired by seed: both arms of a seed start from the same initial weights and see the "
        "same data order.",
        "",
    ]
    md = intro + ["## Results", "", results_md, "", "## Paired comparisons with the baseline", "", comp_md, ""]
    for title, fig in figs.items():
        md += [f"## {title}", "", f"![{title}]({fig.relative_to(root).as_posix()})", ""]
    atomic_write_bytes(root / "report.md", "\n".join(md).encode())

    parts = [
        f"<h1>vicinal report: {html.escape(record['name'])}</h1>",
        f"<p>{html.escape(record.get('description', ''))}</p>",
        f"<p>{html.escape(intro[4])}</p>",
        "<h2>Results</h2>",
        _md_table_to_html(results_md),
        "<h2>Paired comparisons with the baseline</h2>",
        _md_table_to_html(comp_md),
    ]
    for title, fig in figs.items():
        data = base64.b64encode(fig.read_bytes()).decode()
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">',
        ]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vicinal report</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    atomic_write_bytes(root / "report.html", page.encode())
    atomic_write_json(root / "summary.json", agg)
    return {"markdown": root / "report.md", "html": root / "report.html", **{k: v for k, v in figs.items()}}
