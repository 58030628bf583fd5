"""``s2mts2 compare``: a table and plots of several evaluated runs; paired differences with a
bootstrap CI where they were evaluated on the same images.

Each input is a run folder (its ``best.pt``), a checkpoint, an evaluation folder or its
``metrics.json``. A checkpoint is evaluated (``s2mts2 evaluate``'s default folder) unless that
folder already holds an evaluation newer than the checkpoint. The first run is the reference of
the paired differences.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2mts2.engine.evaluate import default_eval_dir, evaluate_checkpoint
from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import paired_auc_difference
from s2mts2.eval.predictions import ImagePredictions, read_predictions_csv
from s2mts2.eval.report import (
    comparison_table,
    paired_difference_table,
    plot_comparison_bars,
    plot_paired_differences,
)
from s2mts2.files import write_text_atomic

log = logging.getLogger("s2mts2")

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
TABLE_KEYS = ("mean_auc", "mean_auc_ci95")
MULTICLASS_KEYS = ("accuracy", "balanced_accuracy")


@dataclass
class EvaluatedRun:
    """One compared run: its ``name``, the ``source`` given, the evaluation ``folder``, its
    ``metrics`` (metrics.json) and per-image ``images`` (None without a predictions.csv)."""

    name: str
    source: Path
    folder: Path
    metrics: dict[str, Any]
    images: ImagePredictions | None


def evaluation_folder(
    source: Path,
    *,
    split: str = "test",
    model: str = "teacher",
    n_boot: int = 1000,
    device: str = "auto",
) -> Path:
    """The evaluation folder of ``source`` (a run folder, a checkpoint, an evaluation folder or
    a metrics JSON file), evaluating a checkpoint whose folder holds no current evaluation."""
    if source.is_file() and source.suffix == ".json":
        return source.parent
    if source.is_dir() and (source / METRICS).is_file():
        return source
    checkpoint = source / "best.pt" if source.is_dir() else source
    if not checkpoint.is_file() or checkpoint.suffix != ".pt":
        raise DataError(
            f"{source}: expected a run folder (with best.pt), a checkpoint (.pt), an evaluation "
            f"folder (with {METRICS}) or a metrics JSON file"
        )
    folder = default_eval_dir(checkpoint, split, model)
    metrics = folder / METRICS
    if metrics.is_file() and metrics.stat().st_mtime >= checkpoint.stat().st_mtime:
        log.info("compare: %s: using its evaluation in %s", checkpoint, folder)
    else:
        log.info("compare: evaluating %s on the %s split", checkpoint, split)
        evaluate_checkpoint(checkpoint, split=split, model=model, n_boot=n_boot, device=device)
    return folder


def read_evaluation(name: str, source: Path, folder: Path, metrics_file: Path) -> EvaluatedRun:
    """The metrics (and predictions.csv, when there) of one evaluation folder."""
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{metrics_file}: not a readable metrics JSON file: {e}") from e
    if not isinstance(metrics, dict) or "mean_auc" not in metrics:
        raise DataError(f"{metrics_file}: no mean_auc: not a metrics.json of s2mts2 evaluate")
    images = None
    if (folder / PREDICTIONS).is_file():
        images = read_predictions_csv(
            folder / PREDICTIONS,
            task=metrics.get("task", "multilabel"),
            eval_classes=metrics.get("eval_classes"),
        )
    return EvaluatedRun(name, source, folder, metrics, images)


def run_names(folders: Sequence[Path]) -> list[str]:
    """Short distinct names: the run folder's name, with the evaluation folder's when two runs
    share it, the whole path when that is not enough."""
    for name_of in (
        lambda f: f.parent.name,
        lambda f: f"{f.parent.name}/{f.name}",
        lambda f: str(f),
    ):
        names = [name_of(f) for f in folders]
        if len(set(names)) == len(names):
            return names
    raise ConfigError("compare: the same evaluation is given twice")


def aligned_probabilities(
    reference: EvaluatedRun, other: EvaluatedRun
) -> tuple[np.ndarray | None, str]:
    """``other``'s (N, C) probabilities in ``reference``'s image order when both were evaluated
    on the same images with the same labels (else None), and why not."""
    a, b = reference.images, other.images
    if a is None or b is None:
        missing = reference if a is None else other
        return None, f"{missing.folder} has no {PREDICTIONS} (evaluate it again)"
    if (reference.metrics.get("split"), a.classes) != (other.metrics.get("split"), b.classes):
        return None, "another split or other classes"
    position = {path: i for i, path in enumerate(b.paths)}
    if len(position) != len(b.paths) or sorted(position) != sorted(a.paths):
        return None, "other images"
    order = np.array([position[path] for path in a.paths], dtype=np.int64)
    if not np.array_equal(a.labels, b.labels[order], equal_nan=True):
        return None, "the same images with other labels"
    return b.probs[order], ""


def paired_to_reference(
    runs: Sequence[EvaluatedRun], n_boot: int = 1000
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``"run - reference"`` -> :func:`paired_auc_difference` for every run evaluated on the
    reference's images (bootstrap resampling whole patients / lesions), and for the others
    ``{run: why not}``."""
    reference, paired, unpaired = runs[0], {}, {}
    for run in runs[1:]:
        probs, reason = aligned_probabilities(reference, run)
        if probs is None:
            unpaired[run.name] = reason
            continue
        images = reference.images
        assert images is not None  # aligned_probabilities checked it
        paired[f"{run.name} - {reference.name}"] = paired_auc_difference(
            probs, images.probs, images.labels, images, groups=images.groups, n_boot=n_boot
        )
    return paired, unpaired


def compare_runs(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    split: str = "test",
    model: str = "teacher",
    n_boot: int = 1000,
    device: str = "auto",
) -> dict[str, Any]:
    """``s2mts2 compare``: writes ``comparison.md``, ``comparison.json``, ``comparison.png``
    (mean AUC per run, bars from 0.5, 95 % CIs) and, where runs share the reference's images,
    ``differences.png`` (paired differences to the first run with their CIs) into ``out``.
    Returns the content of comparison.json, with the markdown under ``report_markdown``."""
    if len(sources) < 2:
        raise ConfigError("compare: give at least two runs or evaluations")
    if names is not None and len(names) != len(sources):
        raise ConfigError(f"--names: {len(names)} names for {len(sources)} runs")
    paths = [Path(s) for s in sources]
    folders = [
        evaluation_folder(p, split=split, model=model, n_boot=n_boot, device=device) for p in paths
    ]
    metric_files = [p if p.suffix == ".json" else f / METRICS for p, f in zip(paths, folders)]
    labels = list(names) if names is not None else run_names(folders)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--names: the names must differ, got {labels}")
    runs = [read_evaluation(*args) for args in zip(labels, paths, folders, metric_files)]
    paired, unpaired = paired_to_reference(runs, n_boot)

    multiclass = all(r.metrics.get("task") == "multiclass" for r in runs)
    keys = [*TABLE_KEYS, *(MULTICLASS_KEYS if multiclass else ())]
    table = {r.name: r.metrics for r in runs}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_comparison_bars(
        table,
        "mean_auc",
        out / "comparison.png",
        title="mean AUC (95 % CI)",
        ci_key="mean_auc_ci95",
    )
    written = ["comparison.md", "comparison.json", "comparison.png"]
    lines = ["# Comparison", "", comparison_table(table, keys, first="run")]
    lines += [
        f"- {r.name}: {r.metrics.get('split', '?')} split, {r.metrics.get('n_images', '?')} "
        f"images, {r.folder}"
        for r in runs
    ]
    lines += [
        "",
        f"Paired differences of the mean AUC to {runs[0].name} (the same images; 95 % CI of a "
        "paired bootstrap over patients / lesions):",
        "",
    ]
    if paired:
        lines.append(paired_difference_table(paired))
        plot_paired_differences(paired, out / "differences.png", title=f"to {runs[0].name}")
        written.append("differences.png")
    lines += [f"- {name}: not paired: {why}" for name, why in unpaired.items()]
    report = "\n".join(lines).rstrip("\n") + "\n"
    result = {
        "reference": runs[0].name,
        "runs": {
            r.name: {
                "source": str(r.source),
                "evaluation": str(r.folder),
                **{k: r.metrics.get(k) for k in ("split", "n_images", "task", *keys)},
            }
            for r in runs
        },
        "paired": paired,
        "not_paired": unpaired,
    }
    write_text_atomic(out / "comparison.md", report)
    write_text_atomic(out / "comparison.json", json.dumps(result, indent=2))
    result["report_markdown"] = report + f"\nwrote {out}/: {', '.join(written)}"
    return result
