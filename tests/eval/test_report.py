"""Markdown tables and plots written from metric dicts."""

import numpy as np
import pytest
from PIL import Image

from s2mts2.errors import ConfigError
from s2mts2.eval.metrics import evaluate_predictions
from s2mts2.eval.report import (
    comparison_table,
    markdown_table,
    plot_comparison_bars,
    plot_roc,
)


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
    assert "| No Finding * |" in text  # not in the mean
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
    srcmt = next(line for line in text.splitlines() if line.startswith("- SRC-MT's evaluation"))
    assert "p ≥ 0.18" in srcmt and f"accuracy {metrics['src_mt']['accuracy']:.4f}" in srcmt


def test_plot_roc_writes_png(tmp_path, multilabel):
    probs, labels, classes = multilabel
    path = plot_roc(probs, labels, classes, tmp_path / "sub" / "roc.png", title="test")
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    with pytest.raises(ConfigError):
        plot_roc(probs, labels, classes, tmp_path / "x.png", eval_classes=["Mass"])


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


def test_plot_comparison_bars_writes_png(tmp_path):
    results = {
        "supervised": {"mean_auc": (0.70, 0.02)},
        "mean-teacher": {"mean_auc": 0.73},
        "s2mts2": {"mean_auc": None},
    }
    path = plot_comparison_bars(results, "mean_auc", tmp_path / "bars.png", title="2 %")
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
