"""``s2mts2 demo``: the whole pipeline on two small tasks, minutes on a laptop CPU.

Per task (:data:`TASKS`: generated X-ray-like images, and scikit-learn's handwritten digits
through the CSV route): prepare -> stage 1 (JCL) once -> stage 2 for supervised, mean-teacher
and s2mts2 -> evaluate each on the test split -> paired differences, a bar plot of the mean
AUCs (from 0.5, with their CIs) and one of the paired differences. Then one ``report.md`` and
``results.json`` for both tasks. Run again into the same folder, it replaces its earlier stage
runs (the prepared data is reused).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2mts2.config import RunConfig, load_config, preset_path
from s2mts2.data.digits import CSV_OPTIONS as DIGITS_CSV_OPTIONS
from s2mts2.data.digits import write_digits_folder
from s2mts2.data.prepared import prepare_dataset
from s2mts2.engine.evaluate import (
    SplitPredictions,
    evaluate_split,
    split_predictions,
    threshold_predictions,
)
from s2mts2.engine.finetune import finetune
from s2mts2.engine.pretrain import pretrain
from s2mts2.engine.runinfo import environment
from s2mts2.errors import ConfigError
from s2mts2.eval.metrics import paired_auc_difference
from s2mts2.eval.report import (
    comparison_table,
    paired_difference_table,
    plot_comparison_bars,
    plot_paired_differences,
)
from s2mts2.files import write_text_atomic

log = logging.getLogger("s2mts2")

METHODS = ("supervised", "mean-teacher", "s2mts2")
PAIRS = (("s2mts2", "supervised"), ("s2mts2", "mean-teacher"), ("mean-teacher", "supervised"))
QUICK = ("pretrain.epochs=5", "finetune.epochs=15")
FINDING_STRENGTH = 2.5  # synthetic findings visible enough to learn in minutes on a CPU
SUMMARY_KEYS = ("mean_auc", "mean_auc_ci95")
DEMO_COMMAND = "s2mts2 demo"  # the command its runs record in run.json


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo: where its images come from and the preset that trains on them."""

    name: str  # its folder under the demo's --out
    title: str  # its heading in report.md
    preset: str
    dataset: str  # the `s2mts2 prepare` adapter
    options: Mapping[str, object] = field(default_factory=dict)  # adapter options
    # writes the images into the given folder and returns the dataset root (images that ship
    # as arrays); None: the adapter generates them
    write_images: Callable[[Path], Path] | None = None


TASKS = (
    DemoTask(
        "xray",
        "Generated X-ray-like images, five co-occurring findings (multi-label)",
        "demo",
        "synthetic",
        {"strength": FINDING_STRENGTH},
    ),
    DemoTask(
        "digits",
        "Handwritten digits (scikit-learn's 1,797 real 8x8 images) read from a folder + CSV, "
        "one labelled image per digit (10 classes)",
        "demo-digits",
        "csv",
        DIGITS_CSV_OPTIONS,
        write_digits_folder,
    ),
)


def _json_field(path: Path, key: str) -> Any:
    """``key`` of the JSON object in ``path``; None when the file is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def check_demo_folder(out: Path) -> None:
    """Refuse an ``out`` holding work the demo did not write (it replaces only its own runs).

    In each task's folder, a stage folder with a checkpoint must have a ``run.json`` whose
    command is ``s2mts2 demo``; a prepared dataset in ``data`` must be of the task's adapter.
    """
    hint = "the demo replaces only its own runs: give it another --out"
    for task in TASKS:
        for stage in ("pretrain", *METHODS):
            folder = out / task.name / stage
            command = _json_field(folder / "run.json", "command")
            if (folder / "last.pt").exists() and command != DEMO_COMMAND:
                raise ConfigError(
                    f"--out {out}: {folder} holds a run that `s2mts2 demo` did not write "
                    f"(run.json command: {command or 'none'}); {hint}"
                )
        summary = out / task.name / "data" / "summary.json"
        dataset = _json_field(summary, "dataset")
        if summary.exists() and dataset != task.dataset:
            raise ConfigError(
                f"--out {out}: {summary.parent} holds a prepared {dataset or 'unreadable'} "
                f"dataset, not the demo's {task.dataset} one; {hint}"
            )


def paired_differences(
    predictions: dict[str, SplitPredictions], n_boot: int = 1000
) -> dict[str, dict[str, Any]]:
    """``"a - b"`` -> :func:`paired_auc_difference` of the methods' test predictions, for each
    pair in :data:`PAIRS` (bootstrap resampling whole patients)."""
    out = {}
    for a, b in PAIRS:
        pa, pb = predictions[a], predictions[b]
        table = pa.data.table
        out[f"{a} - {b}"] = paired_auc_difference(
            pa.probs, pb.probs, pa.labels, table, groups=table.groups[pa.rows], n_boot=n_boot
        )
    return out


def _prepare(task: DemoTask, folder: Path, cfg: RunConfig, progress: bool) -> dict[str, Any]:
    """Prepare ``task``'s images into ``folder / "data"``; returns ``summary.json``."""
    data = folder / "data"
    root = task.write_images(folder) if task.write_images is not None else data
    draw = cfg.data.labelled_draw()
    log.info("demo %s: preparing the %s dataset in %s", task.name, task.dataset, data)
    summary = prepare_dataset(
        task.dataset,
        root,
        data,
        size=cfg.data.size,
        labelled=draw.fraction,
        labelled_count=draw.count,
        seed=draw.seed,
        by_group=draw.by_group,
        progress=progress,
        options=dict(task.options),
    )
    log.info(
        "demo %s: %d train images (%d labelled), %d val, %d test; classes %s",
        task.name,
        summary["images"]["train"],
        summary["labelled"],
        summary["images"].get("val", 0),
        summary["images"].get("test", 0),
        ", ".join(summary["classes"]),
    )
    return summary


def run_task(task: DemoTask, folder: Path, *, quick: bool, progress: bool) -> dict[str, Any]:
    """Prepare, stage 1 once, stage 2 per method, test evaluation and paired differences of
    ``task`` in ``folder``; writes the task's two plots and returns its part of results.json."""
    t0 = time.perf_counter()
    for stage in ("pretrain", *METHODS):  # a demo starts afresh: replace an earlier demo's runs
        if (folder / stage / "last.pt").exists():
            log.info("demo: replacing the earlier demo run in %s", folder / stage)
            shutil.rmtree(folder / stage)
    overrides = [f"data.dir={folder / 'data'}", *(QUICK if quick else ())]
    cfg = load_config(preset_path(task.preset), overrides)
    summary = _prepare(task, folder, cfg, progress)
    log.info("demo %s: stage 1 (self-supervised mean teacher, JCL)", task.name)
    pre = pretrain(cfg, folder / "pretrain", progress=progress, command=DEMO_COMMAND)
    results: dict[str, Any] = {"title": task.title, "methods": {}, "checkpoints": {}}
    predictions: dict[str, SplitPredictions] = {}
    for method in METHODS:
        log.info("demo %s: stage 2, method %s", task.name, method)
        run_cfg = load_config(
            preset_path(task.preset),
            [
                *overrides,
                f"finetune.method={method}",
                f"finetune.pretrained={pre if method == 's2mts2' else ''}",
            ],
        )
        ckpt = finetune(run_cfg, folder / method, progress=progress, command=DEMO_COMMAND)
        predictions[method] = split_predictions(ckpt, "test")
        metrics = evaluate_split(
            predictions[method],
            ckpt,
            out_dir=folder / method / "eval-test",
            reference=threshold_predictions(ckpt, predictions[method]),
        )
        metrics.pop("report_markdown")
        results["methods"][method] = metrics
        results["checkpoints"][method] = str(ckpt)
    results["paired"] = paired_differences(predictions)
    results["checkpoints"]["pretrain"] = str(pre)
    results.update(
        dataset=summary,
        size=cfg.data.size,
        backbone=cfg.model.backbone,
        init=cfg.model.init,
        minutes=(time.perf_counter() - t0) / 60,
    )
    plot_comparison_bars(
        results["methods"],
        "mean_auc",
        folder / "comparison.png",
        title=f"{task.name}: test mean AUC (95 % CI)",
        ci_key="mean_auc_ci95",
    )
    plot_paired_differences(
        results["paired"], folder / "differences.png", title=f"{task.name}: test, paired"
    )
    return results


def task_report(task: DemoTask, folder: Path, results: Mapping[str, Any]) -> str:
    """The Markdown section of one task in report.md."""
    summary = results["dataset"]
    table = comparison_table(results["methods"], keys=SUMMARY_KEYS)
    return (
        f"## {task.title}\n\n"
        f"{summary['images']['train']} training images, {summary['labelled']} labelled; "
        f"{summary['images'].get('test', 0)} test images; {results['size']} px, backbone "
        f"{results['backbone']}, {results['init']} initialisation. Test split, teacher model. "
        f"Run time {results['minutes']:.1f} min.\n\n{table}\n"
        "Paired differences of test mean AUC (the same test images; 95 % CI of a paired "
        "bootstrap over patients, over images where the dataset names none; "
        f"`{folder}/differences.png`):\n\n"
        f"{paired_difference_table(results['paired'])}\n"
        f"Per method: `{folder}/<method>/eval-test/report.md`, `predictions.csv` and "
        "`roc.png`.\n"
    )


def run_demo(out: str | Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every task of the demo into ``out / <task>``; returns the content of
    ``results.json`` (``{"tasks": {name: ...}, "quick", "minutes", "environment"}``)."""
    out = Path(out)
    t0 = time.perf_counter()
    check_demo_folder(out)
    results: dict[str, Any] = {"tasks": {}}
    for task in TASKS:
        results["tasks"][task.name] = run_task(
            task, out / task.name, quick=quick, progress=progress
        )
    results.update(quick=quick, minutes=(time.perf_counter() - t0) / 60, environment=environment())
    report = "# s2mts2 demo\n\n" + "\n".join(
        task_report(task, out / task.name, results["tasks"][task.name]) for task in TASKS
    )
    write_text_atomic(out / "report.md", report)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    print(report)
    return results
