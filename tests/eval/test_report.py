"""Markdown tables and plots written from metric dicts."""

import numpy as np
import pytest
from matplotlib.axes import Axes
from PIL import Image
from spies import spy

from s2mts2.errors import ConfigError, DataError
from s2mts2.eval import report as report_module
from s2mts2.eval.metrics import evaluate_predictions, threshold_evaluation
from s2mts2.eval.report import (
    comparison_table,
    confusion_figure,
    markdown_table,
    paired_difference_table,
    plot_comparison_bars,
    plot_confusion_matrix,
    plot_paired_differences,
    plot_roc,
)

ISIC = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


@pytest.fixture
def multilabel():
    rng = np.random.default_rng(0)
    classes = ["Effusion", "Hernia", "No Finding"]
    labels = rng.integers(0, 2, (60, 3)).astype(float)
    labels[:, 1] = 0.0
    labels[:4, 0] = np.nan
    probs = rng.random((60, 3)) * 0.5 + 0.5 * np.nan_to_num(labels)
    return probs, labels, classes


def test_markdown_table_multilabel(multilabel):
    probs, labels, classes = multilabel
    metrics = evaluate_predictions(
        probs, labels, classes=classes, eval_classes=classes[:2], n_boot=50
    )
    text = markdown_table(metrics, classes)
    lines = text.splitlines()
    assert lines[0] == "| class | positives | AUC |"
    effusion = next(line for line in lines if line.startswith("| Effusion |"))
    assert f"{metrics['per_class_auc']['Effusion']:.4f}" in effusion
    assert "| Hernia | 0 | n/a |" in text
    assert "| No Finding * |" in text and "\\* not included in the mean AUC" in text
    assert f"{metrics['mean_auc']:.4f}" in text and "95 % CI" in text
    assert "- Mean AUC over 1 class (Hernia: no AUC without positives and negatives" in text
    assert "sensitivity" not in text


def test_markdown_table_multiclass_columns_and_summary():
    rng = np.random.default_rng(1)
    truth = np.concatenate([[0, 1], rng.integers(0, 2, 38)])  # class "c" never occurs
    onehot = np.eye(3)[truth]
    probs = rng.dirichlet(np.ones(3), 40) * 0.5 + 0.5 * onehot
    metrics = evaluate_predictions(probs, onehot, classes=["a", "b", "c"], task="multiclass")
    text = markdown_table(metrics)
    assert text.splitlines()[0] == (
        "| class | positives | AUC | sensitivity | specificity | precision | F1 |"
    )
    row_c = next(line for line in text.splitlines() if line.startswith("| c |"))
    assert row_c.count("n/a") >= 2  # AUC and sensitivity undefined without positives
    for title in ("Accuracy", "Balanced accuracy", "Macro F1"):
        assert f"- {title}: " in text
    assert f"{metrics['balanced_accuracy']:.4f}" in text
    assert "SRC-MT" not in text  # its p >= 0.18 rule was made for the ISIC2018 classes only
    assert "not included in the mean AUC" not in text  # every class is in the mean
    # the confusion matrix: a row per true class holding its counts
    lines = text.splitlines()
    start = lines.index("| true \\ predicted | a | b | c |")
    for i, name in enumerate("abc"):
        cells = [c.strip() for c in lines[start + 2 + i].strip("|").split("|")]
        assert cells == [name, *map(str, metrics["confusion_matrix"][i])]


def test_markdown_table_reports_src_mt_for_the_isic2018_classes():
    rng = np.random.default_rng(2)
    truth = np.concatenate([np.arange(7), rng.integers(0, 7, 93)])
    onehot = np.eye(7)[truth]
    probs = rng.dirichlet(np.ones(7), 100) * 0.5 + 0.5 * onehot
    metrics = evaluate_predictions(probs, onehot, classes=ISIC, task="multiclass", n_boot=0)
    text = markdown_table(metrics)
    srcmt = next(line for line in text.splitlines() if line.startswith("- SRC-MT's evaluation"))
    assert "p ≥ 0.18" in srcmt and f"accuracy {metrics['src_mt']['accuracy']:.4f}" in srcmt
    src = metrics["src_mt"]
    assert f"sensitivity {src['sensitivity']:.4f}, specificity {src['specificity']:.4f}" in srcmt


def test_markdown_table_lists_the_thresholds_and_where_they_were_chosen(multilabel):
    probs, labels, classes = multilabel
    metrics = evaluate_predictions(probs, labels, classes=classes, n_boot=0)
    metrics["thresholds"] = {
        **threshold_evaluation(probs[:30], labels[:30], probs[30:], labels[30:], classes),
        "note": "chosen on the val split (30 images), applied to test.",
    }
    text = markdown_table(metrics, classes)
    assert "Per-class thresholds (Youden's J): chosen on the val split (30 images)" in text
    effusion = metrics["thresholds"]["per_class"]["Effusion"]
    row = next(line for line in text.splitlines() if line.startswith("| Effusion | 0."))
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys = ("threshold", "sensitivity", "specificity", "precision", "f1")
    assert cells[1:] == [f"{effusion[k]:.4f}" for k in keys]
    assert "| Hernia | n/a | n/a | n/a | n/a | n/a |" in text  # no positives: no threshold


def test_multiclass_cells_and_summary_lines_hold_their_own_values():
    rng = np.random.default_rng(1)
    truth = np.concatenate([[0, 1, 2], rng.integers(0, 3, 57)])
    onehot = np.eye(3)[truth]
    probs = rng.dirichlet(np.ones(3), 60) * 0.6 + 0.4 * onehot
    m = evaluate_predictions(probs, onehot, classes=["a", "b", "c"], task="multiclass", n_boot=50)
    text = markdown_table(m)
    keys = ("sensitivity", "specificity", "precision", "f1")
    for name in ("a", "b", "c"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:] == [f"{m['per_class'][name][k]:.4f}" for k in keys]
    assert len({m["sensitivity"], m["specificity"]}) == 2  # the data tell the two apart
    assert f"- Macro sensitivity: {m['sensitivity']:.4f}" in text
    assert f"- Macro specificity: {m['specificity']:.4f}" in text
    lo, hi = m["mean_auc_ci95"]
    assert lo < hi and f"(95 % CI {lo:.4f}–{hi:.4f})" in text


def test_plot_roc_writes_png(tmp_path, multilabel):
    probs, labels, classes = multilabel
    path = plot_roc(probs, labels, classes, tmp_path / "sub" / "roc.png", title="test")
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    with pytest.raises(ConfigError):
        plot_roc(probs, labels, classes, tmp_path / "x.png", eval_classes=["Mass"])


def test_roc_curves_use_the_known_labels_of_the_eval_classes_only(
    tmp_path, monkeypatch, multilabel
):
    probs, labels, classes = multilabel
    curves = spy(monkeypatch, report_module, "roc_curve")
    plot_roc(probs, labels, classes, tmp_path / "roc.png", eval_classes=["Effusion"])
    (((y, p), _),) = curves  # Effusion only; Hernia (no positives) and No Finding are left out
    known = ~np.isnan(labels[:, 0])  # four unknown labels
    assert np.array_equal(y, labels[known, 0]) and np.array_equal(p, probs[known, 0])


def test_comparison_table_rows():
    results = {
        "supervised": {"mean_auc": 0.7012, "mean_auc_ci95": [0.69, 0.71]},
        "mean-teacher": {"mean_auc": (0.72, 0.01)},
        "s2mts2": {"mean_auc": 0.75, "mean_auc_ci95": None},
    }
    lines = comparison_table(results).splitlines()
    assert lines[0] == "| method | mean_auc | mean_auc_ci95 |"
    assert lines[2] == "| supervised | 0.7012 | 0.6900–0.7100 |"
    assert lines[3] == "| mean-teacher | 0.7200 ± 0.0100 | n/a |"
    assert lines[4] == "| s2mts2 | 0.7500 | n/a |"
    assert comparison_table(results, keys=["f1"]).splitlines()[2] == "| supervised | n/a |"


def test_plot_comparison_bars_writes_png(tmp_path, monkeypatch):
    results = {
        "supervised": {"mean_auc": (0.70, 0.02)},
        "mean-teacher": {"mean_auc": 0.73},
        "s2mts2": {"mean_auc": None},
    }
    calls = spy(monkeypatch, Axes, "annotate")
    path = plot_comparison_bars(results, "mean_auc", tmp_path / "bars.png", title="2 %")
    assert [args[1] for args, _ in calls] == [
        "0.700",
        "0.730",
        "n/a",
    ]  # a missing value is not drawn as 0
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_error_bars_only_where_a_spread_was_measured(tmp_path, monkeypatch):
    """A (mean, sd) value gets an error bar, a plain number none; with no spread at all no error
    bars are passed (matplotlib 3.7.0 raises StopIteration on an all-NaN ``yerr``)."""
    bars = spy(monkeypatch, Axes, "bar")
    plot_comparison_bars({"a": {"m": (0.7, 0.02)}, "b": {"m": 0.73}}, "m", tmp_path / "one.png")
    plot_comparison_bars({"a": {"m": 0.7}, "b": {"m": None}}, "m", tmp_path / "none.png")
    spread, none = (kwargs["yerr"] for _, kwargs in bars)
    np.testing.assert_allclose(spread[:, 0], [0.02, 0.02])  # below, above
    assert np.isnan(spread[:, 1]).all()
    assert none is None


def test_bars_rise_from_a_baseline_so_small_gaps_look_small(tmp_path, monkeypatch):
    """AUC bars start at 0.5 and the axis ends at 1: 0.898 against 0.902 are bars of 0.398 and
    0.402 on an axis of about half a unit, not a gap filling the plot."""
    bars = spy(monkeypatch, Axes, "bar")
    limits = spy(monkeypatch, Axes, "set_ylim")
    results = {"a": {"mean_auc": 0.898}, "b": {"mean_auc": 0.902}}
    plot_comparison_bars(results, "mean_auc", tmp_path / "auc.png")
    ((args, kwargs),) = bars
    np.testing.assert_allclose(args[2], [0.398, 0.402])  # (axes, x, heights)
    assert kwargs["bottom"] == 0.5
    ((_, low, high), _) = limits[-1]
    assert low == 0.5 and high >= 1.0
    # other metrics rise from 0; an explicit baseline wins
    plot_comparison_bars({"a": {"f1": 0.4}}, "f1", tmp_path / "f1.png")
    plot_comparison_bars({"a": {"f1": 0.4}}, "f1", tmp_path / "f1b.png", baseline=0.2)
    assert [kw["bottom"] for _, kw in bars[1:]] == [0.0, 0.2]
    # an AUC below chance goes below the baseline: the axis follows it
    plot_comparison_bars({"a": {"mean_auc": 0.42}}, "mean_auc", tmp_path / "low.png")
    assert limits[-1][0][1] == 0.42


def test_confidence_intervals_give_asymmetric_error_bars(tmp_path, monkeypatch):
    bars = spy(monkeypatch, Axes, "bar")
    calls = spy(monkeypatch, Axes, "annotate")
    results = {
        "a": {"mean_auc": 0.80, "mean_auc_ci95": [0.75, 0.83]},
        "b": {"mean_auc": 0.85, "mean_auc_ci95": None},
    }
    plot_comparison_bars(results, "mean_auc", tmp_path / "ci.png", ci_key="mean_auc_ci95")
    ((_, kwargs),) = bars
    np.testing.assert_allclose(kwargs["yerr"][:, 0], [0.05, 0.03])
    assert np.isnan(kwargs["yerr"][:, 1]).all()
    assert [args[1] for args, _ in calls] == ["0.800", "0.850"]
    assert calls[0][0][2][1] == pytest.approx(0.83)  # the label sits above the interval


def test_paired_differences_plot_and_table(tmp_path, monkeypatch):
    paired = {
        "b - a": {"difference": 0.012, "difference_ci95": [-0.004, 0.03]},
        "c - a": {"difference": None, "difference_ci95": [None, None]},
    }
    bars = spy(monkeypatch, Axes, "errorbar")
    path = plot_paired_differences(paired, tmp_path / "d.png", title="to a")
    with Image.open(path) as image:
        assert image.format == "PNG"
    ((args, kwargs),) = bars  # the undefined difference is written as n/a, not drawn
    assert args[1:] == (0.012, 0)
    np.testing.assert_allclose(np.ravel(kwargs["xerr"]), [0.016, 0.018])
    lines = paired_difference_table(paired).splitlines()
    assert lines[2] == "| b - a | +0.0120 | -0.0040 .. +0.0300 |"
    assert lines[3] == "| c - a | n/a | n/a |"


def test_confusion_figure_writes_counts_and_row_fractions(tmp_path):
    counts = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])  # the last class never occurs
    fig = confusion_figure(counts, ["a", "b", "c"], title="t")
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.texts] == [str(v) for v in counts.ravel()]
    fractions = ["0.83", "0.17", "0.00", "0.50", "0.50", "0.00", "0.00", "0.00", "0.00"]
    assert [t.get_text() for t in right.texts] == fractions
    assert [t.get_text() for t in left.get_yticklabels()] == ["a", "b", "c"]
    path = plot_confusion_matrix(counts, ["a", "b", "c"], tmp_path / "cm.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    with pytest.raises(DataError, match="for 2 classes"):
        confusion_figure(counts, ["a", "b"])


def test_metric_by_fraction_plots_mean_and_spread_on_a_fixed_axis(tmp_path, monkeypatch):
    figures = []
    real_save = report_module._save
    monkeypatch.setattr(
        report_module, "_save", lambda fig, path: figures.append(fig) or real_save(fig, path)
    )
    runs = {
        "supervised": {0.02: [0.80, 0.82, 0.84], 0.2: [0.90, 0.91, 0.92]},
        "s2mts2": {0.02: [0.85], 0.2: [0.93]},
    }
    out = report_module.plot_metric_by_fraction(
        runs, "test macro AUC", tmp_path / "f.png", title="t"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figures[0].axes[0]
    assert ax.get_ylim() == (0.5, 1.0)  # not fitted to the data (0.80..0.93)
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == [
        "2 %",
        "20 %",
    ]
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(lines["supervised"], [0.82, 0.91])
    np.testing.assert_allclose(lines["s2mts2"], [0.85, 0.93])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the supervised min..max band
    assert band.min() == pytest.approx(0.80) and band.max() == pytest.approx(0.92)
    runs["supervised"][0.02] = [0.47, 0.52]  # below chance: the axis extends to show it
    report_module.plot_metric_by_fraction(runs, "test macro AUC", tmp_path / "g.png")
    assert figures[1].axes[0].get_ylim() == (0.45, 1.0)
