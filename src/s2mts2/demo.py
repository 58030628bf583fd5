"""``s2mts2 demo``: the whole pipeline on generated X-ray-like images, minutes on a laptop CPU.

generate + prepare -> stage 1 (JCL) once -> stage 2 for supervised, mean-teacher and s2mts2
-> evaluate each on the test split -> table, ``report.md``, ``results.json``, ROC plots, a bar
plot of the mean AUCs (from 0.5, with their CIs) and one of the paired differences.
Run again into the same folder, it replaces its earlier stage runs (the prepared data is reused).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from s2mts2.config import load_config, preset_path
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


def _json_field(path: Path, key: str) -> Any:
    """``key`` of the JSON object in ``path``; None when the file is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def check_demo_folder(out: Path) -> None:
    """Refuse an ``out`` holding work the demo did not write (it replaces only its own runs).

    A stage folder with a checkpoint must have a ``run.json`` whose command is ``s2mts2 demo``;
    a prepared dataset in ``out/data`` must be the generated ``synthetic`` one.
    """
    hint = "the demo replaces only its own runs: give it another --out"
    for stage in ("pretrain", *METHODS):
        folder = out / stage
        command = _json_field(folder / "run.json", "command")
        if (folder / "last.pt").exists() and command != DEMO_COMMAND:
            raise ConfigError(
                f"--out {out}: {folder} holds a run that `s2mts2 demo` did not write "
                f"(run.json command: {command or 'none'}); {hint}"
            )
    summary = out / "data" / "summary.json"
    dataset = _json_field(summary, "dataset")
    if summary.exists() and dataset != "synthetic":
        raise ConfigError(
            f"--out {out}: {out / 'data'} holds a prepared {dataset or 'unreadable'} dataset, "
            f"not the demo's generated one; {hint}"
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


def run_demo(out: str | Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the content of ``results.json``."""
    out = Path(out)
    t0 = time.perf_counter()
    check_demo_folder(out)
    for stage in ("pretrain", *METHODS):  # a demo starts afresh: replace an earlier demo's runs
        if (out / stage / "last.pt").exists():
            log.info("demo: replacing the earlier demo run in %s", out / stage)
            shutil.rmtree(out / stage)
    overrides = [f"data.dir={out / 'data'}", *(QUICK if quick else ())]
    cfg = load_config(preset_path("demo"), overrides)
    log.info("demo: generating and preparing the synthetic dataset in %s", out / "data")
    summary = prepare_dataset(
        "synthetic",
        out / "data",
        out / "data",
        size=cfg.data.size,
        labelled=cfg.data.labelled,
        seed=cfg.data.split_seed,
        progress=progress,
        options={"strength": FINDING_STRENGTH},
    )
    log.info(
        "demo: %d train images (%d labelled), %d val, %d test; classes %s",
        summary["images"]["train"],
        summary["labelled"],
        summary["images"].get("val", 0),
        summary["images"].get("test", 0),
        ", ".join(summary["classes"]),
    )
    log.info("demo: stage 1 (self-supervised mean teacher, JCL)")
    pre = pretrain(cfg, out / "pretrain", progress=progress, command=DEMO_COMMAND)
    results: dict[str, Any] = {"methods": {}, "checkpoints": {}}
    predictions: dict[str, SplitPredictions] = {}
    for method in METHODS:
        log.info("demo: stage 2, method %s", method)
        run_cfg = load_config(
            preset_path("demo"),
            [
                *overrides,
                f"finetune.method={method}",
                f"finetune.pretrained={pre if method == 's2mts2' else ''}",
            ],
        )
        ckpt = finetune(run_cfg, out / method, progress=progress, command=DEMO_COMMAND)
        predictions[method] = split_predictions(ckpt, "test")
        metrics = evaluate_split(
            predictions[method],
            ckpt,
            out_dir=out / method / "eval-test",
            reference=threshold_predictions(ckpt, predictions[method]),
        )
        metrics.pop("report_markdown")
        results["methods"][method] = metrics
        results["checkpoints"][method] = str(ckpt)
    results["paired"] = paired_differences(predictions)
    results["checkpoints"]["pretrain"] = str(pre)
    results.update(
        dataset=summary,
        quick=quick,
        minutes=(time.perf_counter() - t0) / 60,
        environment=environment(),
    )
    table = comparison_table(results["methods"], keys=SUMMARY_KEYS)
    plot_comparison_bars(
        results["methods"],
        "mean_auc",
        out / "comparison.png",
        title="test mean AUC (95 % CI)",
        ci_key="mean_auc_ci95",
    )
    plot_paired_differences(results["paired"], out / "differences.png", title="test, paired")
    report = (
        "# s2mts2 demo\n\n"
        f"Synthetic multi-label X-ray-like images ({summary['images']['train']} train, "
        f"{summary['labelled']} labelled), {cfg.data.size} px, backbone {cfg.model.backbone}. "
        f"Test split, teacher model. Run time {results['minutes']:.1f} min.\n\n"
        f"{table}\n\n"
        "Paired differences of test mean AUC (the same test images; 95 % CI of a patient-level "
        f"paired bootstrap; `differences.png`):\n\n{paired_difference_table(results['paired'])}\n"
        f"Per method: `{out}/<method>/eval-test/report.md`, `predictions.csv` and `roc.png`.\n"
    )
    write_text_atomic(out / "report.md", report)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    print(report)
    return results
