"""Human-readable reports of metrics: markdown tables, ROC curves and comparison bar plots.

Tables read the dicts of :func:`s2mts2.eval.metrics.evaluate_predictions`; undefined values (None)
print as "n/a". Plots are drawn on a bare matplotlib ``Figure`` (Agg, no pyplot state, no display).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from s2mts2.errors import DataError
from s2mts2.eval.metrics import class_indices, per_class_auc
from s2mts2.files import write_atomic

NA = "n/a"
MULTICLASS_COLUMNS = ("sensitivity", "specificity", "precision", "f1")
MULTICLASS_SUMMARY = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Macro sensitivity"),
    ("specificity", "Macro specificity"),
    ("precision", "Macro precision"),
    ("f1", "Macro F1"),
)


def _fmt(value: float | None, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or "n/a" for None."""
    return NA if value is None else f"{value:.{digits}f}"


def _fmt_cell(key: str, value: Any) -> str:
    """A table cell: a float, a [lo, hi] interval for keys ending in "_ci95", a (mean, sd) pair
    otherwise; "n/a" when missing."""
    if value is None:
        return NA
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise DataError(f"{key}: expected a number or a pair, got {value!r}")
        first, second = value
        if key.endswith("_ci95"):
            return f"{_fmt(first)}–{_fmt(second)}"
        return f"{_fmt(first)} ± {_fmt(second)}"
    return _fmt(float(value))


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(metrics: Mapping[str, Any], classes: Sequence[str] | None = None) -> str:
    """Per-class table (class, positives, AUC; multi-class also sensitivity, specificity,
    precision, F1) followed by summary lines (mean AUC with its 95 % CI; multi-class accuracy,
    balanced accuracy, macro averages and SRC-MT's thresholded evaluation). metrics: a dict of
    evaluate_predictions; classes: the rows, in order (default: all classes of the dict)."""
    names = list(metrics["per_class_auc"]) if classes is None else list(classes)
    multiclass = metrics.get("task") == "multiclass"
    eval_classes = set(metrics.get("eval_classes", names))
    header = ["class", "positives", "AUC"]
    if multiclass:
        header += ["sensitivity", "specificity", "precision", "F1"]
    lines = [_row(header), _row(["---"] * len(header))]
    for name in names:
        if name not in metrics["per_class_auc"]:
            raise DataError(f"markdown_table: class {name!r} is not in the metrics")
        label = name if name in eval_classes else f"{name} *"
        cells = [label, str(metrics["positives"][name]), _fmt(metrics["per_class_auc"][name])]
        if multiclass:
            cells += [_fmt(metrics["per_class"][name][key]) for key in MULTICLASS_COLUMNS]
        lines.append(_row(cells))
    lines.append("")
    if eval_classes != set(names):
        lines += ["\\* not included in the mean AUC", ""]
    ci = metrics.get("mean_auc_ci95")
    ci_text = f" (95 % CI {_fmt(ci[0])}–{_fmt(ci[1])})" if ci else ""
    scored = [c for c in eval_classes if metrics["per_class_auc"].get(c) is not None]
    unscored = sorted(eval_classes - set(scored))
    left_out = (
        f" ({', '.join(unscored)}: no AUC without positives and negatives, left out)"
        if unscored
        else ""
    )
    lines.append(
        f"- Mean AUC over {len(scored)} class{'es' * (len(scored) != 1)}{left_out}: "
        f"{_fmt(metrics['mean_auc'])}{ci_text}, "
        f"{metrics['n_images']} images"
    )
    if multiclass:
        lines += [f"- {title}: {_fmt(metrics[key])}" for key, title in MULTICLASS_SUMMARY]
        if "src_mt" in metrics:
            s = metrics["src_mt"]
            lines.append(
                f"- SRC-MT's evaluation (one-vs-rest, a class predicted where p ≥ "
                f"{s['threshold']:g}; macro): accuracy {_fmt(s['accuracy'])}, sensitivity "
                f"{_fmt(s['sensitivity'])}, specificity {_fmt(s['specificity'])}, precision "
                f"{_fmt(s['precision'])}, F1 {_fmt(s['f1'])}"
            )
    return "\n".join(lines) + "\n"


def comparison_table(
    results: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] = ("mean_auc", "mean_auc_ci95"),
) -> str:
    """Markdown table with one row per method and one column per key, e.g. supervised /
    mean-teacher / s2mts2 side by side. A value is a number, a [lo, hi] interval (keys ending in
    "_ci95"), a (mean, sd) pair (repeated runs) or missing / None ("n/a")."""
    lines = [_row(["method", *keys]), _row(["---"] * (len(keys) + 1))]
    for method, values in results.items():
        lines.append(_row([method, *(_fmt_cell(key, values.get(key)) for key in keys)]))
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    write_atomic(out, lambda f: fig.savefig(f, format=out.suffix.lstrip(".") or "png", dpi=120))
    return out


def plot_roc(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    path: str | Path,
    title: str | None = None,
    eval_classes: Sequence[str] | None = None,
) -> Path:
    """Write :func:`roc_figure` as a PNG to ``path``; returns the path written."""
    return _save(roc_figure(probs, labels, classes, title, eval_classes), path)


def roc_figure(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    title: str | None = None,
    eval_classes: Sequence[str] | None = None,
) -> Figure:
    """A ROC curve per class (those of eval_classes when given), AUCs in the legend.

    probs (N, C); labels (N, C) in {0, 1} with NaN = unknown (ignored per class). Classes without
    positives or negatives are skipped.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    aucs = per_class_auc(p, y)
    if len(aucs) != len(classes):
        raise DataError(f"plot_roc: probs have {len(aucs)} columns for {len(classes)} classes")
    fig = Figure(figsize=(6.5, 6.5))
    ax = fig.add_subplot()
    ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors)
    for c in class_indices(classes, eval_classes):
        if aucs[c] is None:
            continue
        known = ~np.isnan(y[:, c])
        fpr, tpr, _ = roc_curve(y[known, c], p[known, c])
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{classes[c]} ({aucs[c]:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="class (AUC)", fontsize="small", loc="lower right")
    fig.tight_layout()
    return fig


def plot_comparison_bars(
    results: Mapping[str, Mapping[str, Any]],
    metric: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Bar plot PNG of ``results[method][metric]`` per method; a (mean, sd) value gets an error
    bar of ± sd, a plain number none; missing / None values are marked "n/a". Returns the path."""
    methods = list(results)
    means: list[float] = []
    sds: list[float] = []
    for method in methods:
        value = results[method].get(metric)
        if value is None:
            mean, sd = np.nan, 0.0
        elif isinstance(value, (list, tuple)):
            mean, sd = (float(v) for v in value)
        else:
            mean, sd = float(value), 0.0
        means.append(mean)
        sds.append(sd)
    fig = Figure(figsize=(max(4.0, 1.2 * len(methods) + 1.5), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    # no cap drawn for single values; no error bars at all without a spread (matplotlib 3.7.0
    # raises on an all-NaN yerr)
    errors = [sd if sd > 0 else np.nan for sd in sds] if any(sd > 0 for sd in sds) else None
    ax.bar(x, np.nan_to_num(means), yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    defined = [(m - s, m + s) for m, s in zip(means, sds) if not np.isnan(m)]
    if defined:
        low = min(lo for lo, _ in defined)
        high = max(hi for _, hi in defined)
        if low >= 0.0 and high <= 1.0:
            margin = max(0.05, 0.2 * (high - low))
            ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin) + 0.02)
    bottom = ax.get_ylim()[0]
    for xi, mean, sd in zip(x, means, sds):
        if np.isnan(mean):
            ax.annotate(NA, (xi, bottom), ha="center", va="bottom")
        else:
            ax.annotate(
                f"{mean:.3f}",
                (xi, mean + sd),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
            )
    ax.set_xticks(x, methods)
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
