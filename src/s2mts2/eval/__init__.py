"""Evaluation: metrics (rank AUC, ISIC2018 / SRC-MT metrics, bootstrap CIs), reports, kNN; may
import data, task and files."""

from s2mts2.eval.metrics import (
    MetricAccumulator,
    auc,
    bootstrap_ci,
    evaluate_predictions,
    mean_auc,
    multiclass_metrics,
    per_class_auc,
    src_mt_metrics,
    threshold_evaluation,
    youden_thresholds,
)
from s2mts2.eval.report import (
    comparison_table,
    markdown_table,
    plot_comparison_bars,
    plot_confusion_matrix,
    plot_paired_differences,
    plot_roc,
)

__all__ = [
    "MetricAccumulator",
    "auc",
    "bootstrap_ci",
    "comparison_table",
    "evaluate_predictions",
    "markdown_table",
    "mean_auc",
    "multiclass_metrics",
    "per_class_auc",
    "plot_comparison_bars",
    "plot_confusion_matrix",
    "plot_paired_differences",
    "plot_roc",
    "src_mt_metrics",
    "threshold_evaluation",
    "youden_thresholds",
]
