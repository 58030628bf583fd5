"""Human-readable reports of metrics: markdown tables, ROC curves, confusion matrices and
comparison plots (bars from a baseline, paired differences with their CIs).

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
from s2mts2.eval.metrics import THRESHOLD_KEYS, class_indices, per_class_auc
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
    if "confusion_matrix" in metrics:
        lines += ["", _confusion_table(metrics["confusion_matrix"], metrics["classes"])]
    if metrics.get("thresholds"):
        lines += ["", _threshold_table(metrics["thresholds"], names)]
    return "\n".join(lines) + "\n"


def _confusion_table(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """Markdown confusion matrix: a row per true class, a column per predicted class."""
    lines = [
        "Confusion matrix (rows: true class, columns: predicted class):",
        "",
        _row(["true \\ predicted", *classes]),
        _row(["---"] * (len(classes) + 1)),
    ]
    lines += [_row([name, *map(str, row)]) for name, row in zip(classes, confusion)]
    return "\n".join(lines)


def _threshold_table(thresholds: Mapping[str, Any], classes: Sequence[str]) -> str:
    """Markdown table of per-class thresholds and the metrics at them (``thresholds`` as
    ``evaluate`` stores it: per_class, macro means and a ``note`` on where they were chosen)."""
    per_class = thresholds["per_class"]
    lines = [
        f"Per-class thresholds (Youden's J): {thresholds['note']}",
        "",
        _row(["class", "threshold", "sensitivity", "specificity", "precision", "F1"]),
        _row(["---"] * 6),
    ]
    for name in classes:
        values = per_class[name]
        lines.append(
            _row([name, _fmt(values["threshold"]), *(_fmt(values[k]) for k in THRESHOLD_KEYS)])
        )
    lines.append(_row(["macro", "", *(_fmt(thresholds[k]) for k in THRESHOLD_KEYS)]))
    return "\n".join(lines)


def comparison_table(
    results: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] = ("mean_auc", "mean_auc_ci95"),
    first: str = "method",
) -> str:
    """Markdown table with one row per method and one column per key, e.g. supervised /
    mean-teacher / s2mts2 side by side (``first`` heads the column of their names). A value is a
    number, a [lo, hi] interval (keys ending in "_ci95"), a (mean, sd) pair (repeated runs) or
    missing / None ("n/a")."""
    lines = [_row([first, *keys]), _row(["---"] * (len(keys) + 1))]
    for method, values in results.items():
        lines.append(_row([method, *(_fmt_cell(key, values.get(key)) for key in keys)]))
    return "\n".join(lines) + "\n"


def paired_difference_table(paired: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of paired differences ``{"a - b": {"difference", "difference_ci95"}}``
    (:func:`s2mts2.eval.metrics.paired_auc_difference`)."""
    lines = [_row(["comparison", "difference", "95 % CI"]), _row(["---"] * 3)]
    for name, d in paired.items():
        low, high = d["difference_ci95"]
        diff = NA if d["difference"] is None else f"{d['difference']:+.4f}"
        ci = NA if low is None else f"{low:+.4f} .. {high:+.4f}"
        lines.append(_row([name, diff, ci]))
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


def bar_baseline(metric: str) -> float:
    """Where bars of ``metric`` start: 0.5 (chance) for an AUC, 0 otherwise."""
    return 0.5 if "auc" in metric.lower() else 0.0


def _bar_values(
    results: Mapping[str, Mapping[str, Any]], metric: str, ci_key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M,) values (NaN where missing) and (M,) lower / upper error-bar lengths (NaN: none): a
    (mean, sd) value gives ± sd, a [lo, hi] under ``ci_key`` gives the interval."""
    means, below, above = [], [], []
    for values in results.values():
        value = values.get(metric)
        mean, sd = np.nan, np.nan
        if isinstance(value, (list, tuple)):
            mean, sd = (float(v) for v in value)
        elif value is not None:
            mean = float(value)
        low, high = mean - sd, mean + sd
        interval = values.get(ci_key) if ci_key else None
        if interval is not None and None not in interval and not np.isnan(mean):
            low, high = (float(v) for v in interval)
        means.append(mean)
        below.append(mean - low)
        above.append(high - mean)
    return np.array(means), np.array(below), np.array(above)


def plot_comparison_bars(
    results: Mapping[str, Mapping[str, Any]],
    metric: str,
    path: str | Path,
    title: str | None = None,
    *,
    ci_key: str | None = None,
    baseline: float | None = None,
) -> Path:
    """Bar plot PNG of ``results[method][metric]`` per method; returns the path.

    Bars rise from ``baseline`` (default :func:`bar_baseline`: 0.5 for an AUC, 0 otherwise), and
    a metric within [0, 1] keeps the axis up to 1, so that 0.898 against 0.902 looks as close as
    it is. A (mean, sd) value gets an error bar of ± sd, a ``results[method][ci_key]`` interval
    [lo, hi] an asymmetric one; missing / None values are marked "n/a", not drawn.
    """
    methods = list(results)
    means, below, above = _bar_values(results, metric, ci_key)
    bottom = bar_baseline(metric) if baseline is None else float(baseline)
    fig = Figure(figsize=(max(4.0, 1.2 * len(methods) + 1.5), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    spread = ~np.isnan(below)
    # no error bars at all without a spread (matplotlib 3.7.0 raises on an all-NaN yerr)
    errors = np.vstack([below, above]) if spread.any() else None
    ax.bar(
        x,
        np.nan_to_num(means - bottom),
        bottom=bottom,
        yerr=errors,
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    ax.axhline(bottom, color="black", linewidth=0.8)
    tops = means + np.nan_to_num(above)
    ends = np.concatenate([tops, means - np.nan_to_num(below)])
    ends = ends[~np.isnan(ends)]
    low = min(bottom, float(ends.min(initial=bottom)))
    high = float(ends.max(initial=bottom))
    if bottom >= 0.0 and high <= 1.0:
        high = 1.0  # a metric within [0, 1]: the axis ends at its best value
    ax.set_ylim(low, high + 0.08 * (high - low or 1.0))  # room for the labels
    for xi, mean, top in zip(x, means, tops):
        if np.isnan(mean):
            ax.annotate(NA, (xi, bottom), ha="center", va="bottom")
        else:
            ax.annotate(
                f"{mean:.3f}",
                (xi, top),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
            )
    ax.set_xticks(x, methods)
    ax.set_ylabel(f"{metric} (bars from {bottom:g})")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_paired_differences(
    paired: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None
) -> Path:
    """PNG of paired differences ``{"a - b": {"difference", "difference_ci95"}}``: a point and
    its 95 % CI per comparison around a line at 0 (no difference). Returns the path."""
    names = list(paired)
    fig = Figure(figsize=(6.5, 1.6 + 0.5 * max(1, len(names))))
    ax = fig.add_subplot()
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
    for y, name in enumerate(names):
        d = paired[name]
        if d["difference"] is None:
            ax.annotate(NA, (0.0, y), ha="center", va="center")
            continue
        low, high = d["difference_ci95"]
        xerr = None if low is None else [[d["difference"] - low], [high - d["difference"]]]
        ax.errorbar(d["difference"], y, xerr=xerr, fmt="o", color="tab:blue", capsize=4)
        ax.annotate(
            f"{d['difference']:+.4f}",
            (d["difference"], y),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference of the mean AUC (95 % bootstrap CI)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_metric_by_fraction(
    runs: Mapping[str, Mapping[float, Sequence[float]]],
    metric: str,
    path: str | Path,
    title: str | None = None,
    ylim: tuple[float, float] = (0.5, 1.0),
) -> Path:
    """Line plot PNG of a metric against the labelled fraction, one line per method.

    ``runs[method][fraction]`` holds the metric of each seed (S,); the line joins the means over
    the seeds and a band spans their minimum to maximum. The x-axis is logarithmic with a tick at
    every fraction; the y-axis spans ``ylim`` (fixed, not fitted to the data, so that small
    differences are not magnified), extended down to show any value below it. Returns the path.
    """
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    fractions = sorted({f for by_fraction in runs.values() for f in by_fraction})
    lowest = min(
        (min(v) for by_fraction in runs.values() for v in by_fraction.values() if len(v)),
        default=ylim[0],
    )
    for method, by_fraction in runs.items():
        xs = sorted(f for f, values in by_fraction.items() if len(values))
        if not xs:
            continue
        values = [np.asarray(by_fraction[f], dtype=np.float64) for f in xs]
        (line,) = ax.plot(xs, [v.mean() for v in values], marker="o", label=method)
        lows, highs = [v.min() for v in values], [v.max() for v in values]
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
    ax.minorticks_off()
    ax.set_ylim(min(ylim[0], np.floor(20 * lowest) / 20), ylim[1])
    ax.set_xlabel("labelled fraction of the training images")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(confusion: Any, classes: Sequence[str], title: str | None = None) -> Figure:
    """Two heat maps of a (C, C) confusion matrix (rows: true class, columns: predicted): the
    counts and the row-normalised fractions (each true class's row sums to 1; an empty row
    stays 0). Every cell is written out."""
    counts = np.asarray(confusion, dtype=np.int64)
    c = len(classes)
    if counts.shape != (c, c):
        raise DataError(f"confusion matrix of shape {counts.shape} for {c} classes")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = max(3.5, 0.55 * c + 2.0)
    fig = Figure(figsize=(2 * side + 0.5, side + 0.6), layout="constrained")
    for k, (values, name, text) in enumerate(
        (
            (counts, "counts", lambda v: f"{int(v)}"),
            (fractions, "row-normalised", lambda v: f"{v:.2f}"),
        )
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        shown = values / max(values.max(), 1) if k == 0 else values
        ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    text(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if shown[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(c), classes, rotation=45, ha="right")
        ax.set_yticks(range(c), classes)
        ax.set(xlabel="predicted class", ylabel="true class", title=name)
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion_matrix(
    confusion: Any, classes: Sequence[str], path: str | Path, title: str | None = None
) -> Path:
    """Write :func:`confusion_figure` as a PNG to ``path``; returns the path written."""
    return _save(confusion_figure(confusion, classes, title), path)
