"""The S²MTS² ablation on real data, resumable per cell: one command builds the whole table.

    python benchmarks/ham10000.py [--quick] [--device cuda] [--keep-checkpoints DIR]
                                  [--split srcmt|lesion ...] [--dataset ham10000|nih-sample|digits]
                                  [--fractions F ...]

Methods (same backbone, resolution and fine-tuning budget, from the preset):
``supervised`` (labelled images only), ``mean-teacher`` (no stage 1), ``moco-mt`` (stage 1 with
``pretrain.loss=moco``, then mean-teacher fine-tuning) and ``s2mts2`` (stage 1 with JCL, then
mean-teacher fine-tuning). Methods without stage 1 train their backbone at the full LR
(``finetune.backbone_lr_scale=1``); the pre-trained ones use the preset's scale.

Every cell (method × seed) lives in ``RUNS/<benchmark>/<method>-s<seed>/`` and is finished when its
``result.json`` exists; an interrupted cell resumes from its ``last.pt`` (removed once the cell
is finished: ``best.pt`` stays). One stage-1 checkpoint
per loss (``RUNS/<benchmark>/stage1-<loss>/``, preset seed) is shared by the seeds: stage 1 sees no
labels, the seed drives the labelled subset, the initialisation of the head and the augmentation
of stage 2. Re-running skips what is finished, so the table can be built over several runs; the
summary (``benchmarks/results/<benchmark>.json`` + bar plot PNG) is rewritten from the finished
cells after every cell.

``--fractions 0.02 0.05 0.1 0.2`` makes it the label-efficiency study (preset
``ham10000-64`` unless ``--preset``): every method × fraction × seed is a cell
``RUNS/<benchmark>-fractions/<method>-f<fraction>-s<seed>/``; the labelled subset of a
(fraction, seed) is the same file for every method, and the stage-1 checkpoints are shared by all
fractions and seeds. Its summary ``<benchmark>-fractions.json``, ``.png`` (test macro AUC against
the fraction) and ``.md`` (the tables) add, when the invocation ends or with
``--summary-only``, the paired differences s2mts2 − supervised and s2mts2 − mean-teacher per
fraction (per seed, and their mean with a 95 % CI that resamples seeds and test lesions).
Every HAM10000 cell is also scored on the test images under the fixed colour, contrast and
gamma changes of ``s2mts2.eval.shift.DERMOSCOPY_SHIFTS`` (``shifted_macro_auc`` in its
result.json), and the validation images likewise (``val_shifted_macro_auc``: what a choice
between recipes reads, beside ``val_mean_auc``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2mts2.config import RunConfig, config_from_dict, config_to_dict, load_config
from s2mts2.data.digits import CSV_OPTIONS as DIGITS_CSV_OPTIONS
from s2mts2.data.digits import write_digits_folder
from s2mts2.data.prepared import PreparedData, prepare_dataset
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.evaluate import (
    SplitPredictions,
    evaluate_split,
    split_predictions,
    threshold_predictions,
)
from s2mts2.engine.finetune import finetune
from s2mts2.engine.pretrain import pretrain
from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import seeds_paired_auc_difference
from s2mts2.eval.report import comparison_table, plot_comparison_bars, plot_metric_by_fraction
from s2mts2.eval.shift import DERMOSCOPY_SHIFTS, ImageShift
from s2mts2.files import write_atomic, write_text_atomic

log = logging.getLogger("s2mts2.benchmark")

REPO = Path(__file__).resolve().parents[1]
METHODS = ("supervised", "mean-teacher", "moco-mt", "s2mts2")
STAGE1_LOSS = {"moco-mt": "moco", "s2mts2": "jcl"}
# summary metric name -> key of evaluate_checkpoint's metrics, "a.b" for metrics["a"]["b"]
# (multi-class only beyond the AUC); srcmt_*: SRC-MT's thresholded one-vs-rest evaluation
METRICS = {
    "macro_auc": "mean_auc",
    "balanced_accuracy": "balanced_accuracy",
    "accuracy": "accuracy",
    "macro_f1": "f1",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "srcmt_accuracy": "src_mt.accuracy",
    "srcmt_sensitivity": "src_mt.sensitivity",
    "srcmt_specificity": "src_mt.specificity",
    "srcmt_f1": "src_mt.f1",
}
QUICK = ("pretrain.epochs=4", "finetune.epochs=5")
STUDY_PRESET = "ham10000-64"  # the label-efficiency study's preset (--fractions)
PAIRED = (("s2mts2", "supervised"), ("s2mts2", "mean-teacher"))  # a − b per fraction
PROBS_NAME = "test-probs.npy"  # a cell's (N, C) test probabilities
# small grey-scale datasets: the released brightness/contrast jitter back on (the preset drops the
# colour jitter for dermoscopy, where colour is diagnostic); more, smaller fine-tuning steps than
# one pass of 64 so that the EMA teachers (0.99) move
SMALL_GREY = (
    "pretrain.augment.jitter_p=0.8",
    "finetune.batch_size=32",
    "finetune.steps_per_epoch=20",
)


@dataclass(frozen=True)
class Benchmark:
    """One dataset × split: how to prepare it and which preset trains on it."""

    name: str  # result file stem and run folder name
    adapter: str  # `s2mts2 prepare` adapter
    root: Path | None  # dataset folder (None for generated data)
    options: dict[str, Any] = field(default_factory=dict)  # adapter options
    preset: str = "ham10000-cpu"
    overrides: tuple[str, ...] = ()  # applied after the preset, before the user's --set
    min_test_positives: int = 0  # macro AUC over eval classes with at least this many positives
    # writes the dataset folder into the given data folder and returns it (data that ships as
    # arrays, not files); used instead of ``root``
    make_root: Callable[[Path], Path] | None = None
    shifts: tuple[ImageShift, ...] = ()  # test-set image changes every cell is also scored on


def benchmark_for(dataset: str, split: str, data_root: Path) -> Benchmark:
    """The benchmark definitions: HAM10000 (SRC-MT / lesion split), NIH sample, digits."""
    if dataset == "ham10000":
        if split not in ("srcmt", "lesion"):
            raise ConfigError(f"--split {split!r}: HAM10000 has the splits srcmt and lesion")
        options = {"split": "lesion"} if split == "lesion" else {}
        name = "ham10000" if split == "srcmt" else "ham10000-lesion"
        return Benchmark(
            name, "isic2018", data_root / "ham10000", options, shifts=DERMOSCOPY_SHIFTS
        )
    if dataset == "nih-sample":
        if split != "grouped":
            raise ConfigError(f"--split {split!r}: the NIH sample has the patient-grouped split")
        return Benchmark(
            "nih-sample",
            "chestxray14",
            data_root / "nih14_sample",
            {"split": "grouped"},
            # 685 training images, grey X-rays
            overrides=("data.size=64", "pretrain.epochs=20", "pretrain.batch_size=64", *SMALL_GREY),
            min_test_positives=10,
        )
    if dataset == "digits":
        if split != "stratified":
            raise ConfigError(f"--split {split!r}: the digits have the stratified split")
        return Benchmark(
            "digits",
            "csv",
            None,
            dict(DIGITS_CSV_OPTIONS),
            make_root=write_digits_folder,
            # set before any run, from what the images are (no tuning): 8x8 digits upscaled to
            # 32 px; few labels (5 % of training, ~7 per class); a flip turns one digit into
            # another (the augmentations' rotation is at most 10 degrees), so no flips; 1,257
            # grey training images: more stage-1 epochs
            overrides=(
                "data.size=32",
                "data.labelled=0.05",
                "pretrain.epochs=100",
                "pretrain.monitor_every=10",
                "pretrain.augment.hflip_p=0",
                "pretrain.augment.vflip_p=0",
                "finetune.augment.hflip_p=0",
                "finetune.augment.vflip_p=0",
                *SMALL_GREY,
            ),
        )
    raise ConfigError(f"--dataset {dataset!r}: expected ham10000, nih-sample or digits")


@dataclass
class Plan:
    """What one invocation runs and where it writes."""

    bench: Benchmark
    runs_dir: Path  # run folders of this benchmark (cells, stage 1, prepared data)
    results_dir: Path
    overrides: tuple[str, ...] = ()
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] = ()  # labelled fractions of the study; () = the preset's only
    quick: bool = False
    device: str | None = None
    keep_dir: Path | None = None
    n_boot: int = 500
    progress: bool = True
    command: str = ""

    @property
    def stem(self) -> str:
        return result_stem(self.bench.name, self.fractions, self.quick)


def result_stem(name: str, fractions: tuple[float, ...], quick: bool) -> str:
    """Name of the run folder and of the result files: ``ham10000[-fractions][-quick]``."""
    return name + ("-fractions" if fractions else "") + ("-quick" if quick else "")


def cell_name(method: str, fraction: float | None, seed: int) -> str:
    """Folder of one cell: ``<method>-s<seed>``, in the study ``<method>-f<fraction>-s<seed>``."""
    return f"{method}-s{seed}" if fraction is None else f"{method}-f{fraction:g}-s{seed}"


def machine() -> str:
    """A short description of the computer the runs use."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA)"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores"


def base_config(plan: Plan) -> RunConfig:
    """Preset <- benchmark overrides <- quick settings <- the user's --set; data in runs_dir."""
    quick = QUICK if plan.quick else ()
    cfg = load_config(plan.bench.preset, [*plan.bench.overrides, *quick, *plan.overrides])
    cfg.data.dir = str(plan.runs_dir.parent / "data" / f"{plan.bench.name}-{cfg.data.size}px")
    if plan.device:
        cfg.device = plan.device
    return cfg


def prepare(plan: Plan, cfg: RunConfig) -> None:
    """Build the image cache and table once (skipped when the summary exists)."""
    out = Path(cfg.data.dir)
    if (out / "summary.json").is_file():
        return
    b = plan.bench
    if b.make_root is not None:  # data that ships as arrays: written next to the prepared data
        root = b.make_root(out.parent)
    else:  # the dataset's folder, or none for generated data
        root = b.root if b.root is not None else out
    log.info("preparing %s into %s", b.adapter, out)
    prepare_dataset(
        b.adapter,
        root,
        out,
        size=cfg.data.size,
        labelled=cfg.data.labelled,
        seed=cfg.data.split_seed,
        progress=plan.progress,
        options=dict(b.options),
    )


def _recipe(cfg: dict[str, Any], stage: str) -> dict[str, Any]:
    """The parts of a resolved config that define a stage's result (not paths or devices)."""
    section = {k: v for k, v in cfg[stage].items() if k != "pretrained"}
    return {
        "size": cfg["data"]["size"],
        "labelled": cfg["data"]["labelled"],
        "model": cfg["model"],
        stage: section,
        **({"seed": cfg["seed"]} if stage == "finetune" else {}),
    }


def _check_recipe(folder: Path, stored: dict[str, Any], cfg: RunConfig, stage: str) -> None:
    """ConfigError unless ``folder`` was made with ``cfg``'s recipe; settings newer than the
    folder are taken at their defaults (which keep the behaviour they were added with)."""
    current = json.loads(json.dumps(config_to_dict(cfg)))  # the form stored in JSON
    stored = json.loads(json.dumps(config_to_dict(config_from_dict(stored))))
    if _recipe(stored, stage) != _recipe(current, stage):
        raise ConfigError(
            f"{folder} was made with another recipe than the current preset/--set values; "
            "delete it or use another --runs-dir"
        )


def _add_minutes(folder: Path, minutes: float) -> float:
    """Accumulate the compute minutes of a run folder over interrupted runs (timing.json)."""
    path = folder / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {"minutes": 0.0, "machines": []}
    timing["minutes"] += minutes
    if machine() not in timing["machines"]:
        timing["machines"].append(machine())
    _write_json(path, timing)
    return timing["minutes"]


def _write_json(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2))


def _keep(plan: Plan, files: list[Path]) -> None:
    """Copy checkpoints and logs to --keep-checkpoints DIR/<benchmark>/<folder>/."""
    if plan.keep_dir is None:
        return
    for f in files:
        if f.is_file():
            dest = plan.keep_dir / plan.stem / f.parent.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)


def _knn_scores(metrics_csv: Path) -> tuple[float | None, float | None, int]:
    """(random-init kNN mean AUC, last monitored kNN mean AUC, its epoch) from metrics.csv."""
    with metrics_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("knn_mean_auc")]
    if not rows:
        return None, None, 0
    first = float(rows[0]["knn_mean_auc"]) if int(rows[0]["epoch"]) == 0 else None
    return first, float(rows[-1]["knn_mean_auc"]), int(rows[-1]["epoch"])


def stage1(plan: Plan, cfg: RunConfig, loss: str) -> Path:
    """Run, resume or reuse the stage-1 checkpoint of ``loss``; returns its last.pt."""
    c = copy.deepcopy(cfg)
    c.pretrain.loss = loss  # type: ignore[assignment]
    out = plan.runs_dir / f"stage1-{loss}"
    ckpt = out / "last.pt"
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        _check_recipe(out, state["config"], c, "pretrain")
        if state["epoch"] >= c.pretrain.epochs:
            return ckpt
        del state
    log.info("stage 1 (%s) -> %s%s", loss, out, " (resuming)" if ckpt.is_file() else "")
    t0 = time.perf_counter()
    pretrain(c, out, resume=ckpt.is_file(), progress=plan.progress, command=plan.command)
    _add_minutes(out, (time.perf_counter() - t0) / 60)
    _keep(plan, [ckpt, out / "metrics.csv", out / "timing.json"])
    return ckpt


def stage1_info(folder: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """kNN monitor (random init vs last monitored epoch) and timing of a stage-1 folder."""
    if not (folder / "metrics.csv").is_file():
        return None
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    random_init, trained, epoch = _knn_scores(folder / "metrics.csv")
    return {
        "epochs": cfg.pretrain.epochs,
        "knn_mean_auc_random_init": random_init,
        "knn_mean_auc_trained": trained,
        "knn_epoch": epoch,
        "finished": epoch >= cfg.pretrain.epochs,
        "minutes": timing.get("minutes"),
        "machines": timing.get("machines", []),
        "seed": cfg.seed,
    }


def cell_config(
    cfg: RunConfig, method: str, seed: int, pretrained: Path | None, fraction: float | None = None
) -> RunConfig:
    """The fine-tuning config of one cell: seed drives labelled subset, init and augmentation;
    ``fraction`` (None: the preset's) the size of the labelled subset. A (fraction, seed) draws
    the same labelled subset for every method."""
    c = copy.deepcopy(cfg)
    c.seed = seed
    c.data.split_seed = seed
    if fraction is not None:
        c.data.labelled = fraction
        c.data.labelled_count = 0
    if method in STAGE1_LOSS:
        if pretrained is None:
            raise ConfigError(f"method {method} needs a stage-1 checkpoint")
        c.finetune.method = "s2mts2"
        c.finetune.pretrained = str(pretrained)
    else:
        c.finetune.method = method  # type: ignore[assignment]
        c.finetune.pretrained = ""
        c.finetune.backbone_lr_scale = 1.0
    return c


def summary_metrics(metrics: dict[str, Any], min_positives: int) -> dict[str, float]:
    """The table's metrics of one evaluation; macro AUC over eval classes with enough positives."""
    out = {}
    for name, path in METRICS.items():
        value: Any = metrics
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            out[name] = float(value)
    if min_positives > 0:
        aucs = [
            metrics["per_class_auc"][c]
            for c in metrics["eval_classes"]
            if metrics["positives"][c] >= min_positives and metrics["per_class_auc"][c] is not None
        ]
        out["macro_auc"] = float(np.mean(aucs))
    return out


def shifted_macro_auc(
    best: Path, shift: ImageShift, device: str, min_positives: int, split: str = "test"
) -> float | None:
    """Macro AUC (as in the summary) of a checkpoint on the ``split`` images under ``shift``."""
    pred = split_predictions(best, split, device=device, shift=shift)
    return summary_metrics(pred.metrics(n_boot=0), min_positives).get("macro_auc")


def save_probs(path: Path, pred: SplitPredictions) -> None:
    """The (N, C) float32 test probabilities of a cell, in the order of the split's table rows
    (what the paired comparisons read)."""
    write_atomic(path, lambda f: np.save(f, pred.probs.astype(np.float32)))


def run_cell(
    plan: Plan,
    cfg: RunConfig,
    method: str,
    seed: int,
    pretrained: Path | None,
    fraction: float | None = None,
) -> dict[str, Any]:
    """Fine-tune (or resume) one cell, evaluate its selected checkpoint on test (in-domain and
    under the benchmark's shifts), store its test probabilities and result."""
    out = plan.runs_dir / cell_name(method, fraction, seed)
    result_path = out / "result.json"
    c = cell_config(cfg, method, seed, pretrained, fraction)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        _check_recipe(out, result["config"], c, "finetune")
        return result
    last = out / "last.pt"
    log.info("cell %s -> %s%s", out.name, out, " (resuming)" if last.is_file() else "")
    t0 = time.perf_counter()
    best = finetune(c, out, resume=last.is_file(), progress=plan.progress, command=plan.command)
    pred = split_predictions(best, "test", device=c.device)
    save_probs(out / PROBS_NAME, pred)
    reference = threshold_predictions(best, pred, device=c.device)  # multi-label: val's
    metrics = evaluate_split(
        pred, best, out_dir=out / "eval-test", n_boot=plan.n_boot, reference=reference
    )
    min_positives = plan.bench.min_test_positives
    state = load_checkpoint(best)
    result = {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "metrics": summary_metrics(metrics, min_positives),
        "shifted_macro_auc": {
            shift.name: shifted_macro_auc(best, shift, c.device, min_positives)
            for shift in plan.bench.shifts
        },
        # the same shifts on validation: what a choice between recipes may read
        "val_shifted_macro_auc": {
            shift.name: shifted_macro_auc(best, shift, c.device, 0, split="val")
            for shift in plan.bench.shifts
        },
        "mean_auc_ci95": metrics.get("mean_auc_ci95"),
        "selected_epoch": state["epoch"],
        "val_mean_auc": state["best_val"],
        "minutes": _add_minutes(out, (time.perf_counter() - t0) / 60),
        "machine": machine(),
        "config": config_to_dict(c),
    }
    _write_json(result_path, result)
    _keep(plan, [best, out / "metrics.csv", result_path])
    # finished: best.pt is what evaluations read; the training state (~180 MB for a ResNet-18
    # with its optimiser, ~17 GB over a whole study) is no longer needed to resume
    last.unlink(missing_ok=True)
    return result


def study_values(cell: dict[str, Any]) -> dict[str, float]:
    """A cell's summary metrics plus, per shift, ``macro_auc_<shift>`` and, when every shift is
    scored, ``shift_drop``: in-domain macro AUC minus the mean of the shifted ones."""
    values = dict(cell["metrics"])
    shifted = cell.get("shifted_macro_auc") or {}
    for name, value in shifted.items():
        if value is not None:
            values[f"macro_auc_{name}"] = value
    scored = [v for v in shifted.values() if v is not None]
    if scored and len(scored) == len(shifted) and "macro_auc" in values:
        values["shift_drop"] = values["macro_auc"] - float(np.mean(scored))
    return values


def aggregate(
    cells: list[dict[str, Any]],
    methods: tuple[str, ...],
    values: Callable[[dict[str, Any]], dict[str, float]] = lambda cell: cell["metrics"],
) -> dict[str, Any]:
    """{method: {metric: {mean, sd, runs}, seeds: [...]}} over the metrics ``values`` gives each
    cell; sd is the sample sd (None for 1 run)."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = sorted((c for c in cells if c["method"] == method), key=lambda c: c["seed"])
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [c["seed"] for c in mine]}
        for name in values(mine[0]):
            runs = [values(c)[name] for c in mine]
            entry[name] = {
                "mean": float(np.mean(runs)),
                "sd": float(np.std(runs, ddof=1)) if len(runs) > 1 else None,
                "runs": runs,
            }
        out[method] = entry
    return out


def finished_cells(plan: Plan) -> list[dict[str, Any]]:
    """The result.json of every finished cell of this benchmark on disk (any seed or fraction,
    earlier or concurrent invocations)."""
    pattern = "-f*-s*" if plan.fractions else "-s*"
    return [
        json.loads(path.read_text())
        for method in METHODS
        for path in sorted(plan.runs_dir.glob(f"{method}{pattern}/result.json"))
    ]


def paired_differences(
    plan: Plan, cfg: RunConfig, cells: list[dict[str, Any]], fractions: list[float]
) -> dict[str, dict[str, Any]]:
    """{fraction: {"a - b": seeds_paired_auc_difference + seeds}} for the pairs of ``PAIRED``,
    over the seeds both methods finished at that fraction (test images resampled by lesion)."""
    done = {(c["method"], c["fraction"], c["seed"]) for c in cells}
    out: dict[str, dict[str, Any]] = {}
    for fraction in fractions:
        for a, b in PAIRED:
            seeds = sorted(
                s for (m, f, s) in done if m == a and f == fraction and (b, f, s) in done
            )
            if not seeds:
                continue
            table = PreparedData.open(cfg.data.dir, cfg.data.cache_for(cfg.finetune_size())).table
            test = table.indices("test")
            probs = [
                np.stack(
                    [np.load(plan.runs_dir / cell_name(m, fraction, s) / PROBS_NAME) for s in seeds]
                )
                for m in (a, b)
            ]
            result = seeds_paired_auc_difference(
                *probs, table.labels[test], table, groups=table.groups[test], n_boot=plan.n_boot
            )
            out.setdefault(f"{fraction:g}", {})[f"{a} - {b}"] = {"seeds": seeds, **result}
    return out


def write_summary(plan: Plan, cfg: RunConfig, final: bool = True) -> dict[str, Any]:
    """Write RESULTS/<stem>.json and <stem>.png from every finished cell on disk; returns the
    summary. In the study (``plan.fractions``) also <stem>.md, and with ``final`` the paired
    comparisons (bootstraps: left out of the rewrites after each cell)."""
    cells = finished_cells(plan)
    seeds = sorted({*plan.seeds, *(c["seed"] for c in cells)})
    fractions = sorted({*plan.fractions, *(c["fraction"] for c in cells if c.get("fraction"))})
    stage1_runs = {
        loss: info
        for loss in ("jcl", "moco")
        if (info := stage1_info(plan.runs_dir / f"stage1-{loss}", cfg)) is not None
    }
    minutes = sum(c["minutes"] for c in cells) + sum(
        s["minutes"] or 0.0 for s in stage1_runs.values()
    )
    machines = sorted(
        {c["machine"] for c in cells} | {m for s in stage1_runs.values() for m in s["machines"]}
    )
    summary: dict[str, Any] = {
        "benchmark": plan.bench.name,
        "split": plan.bench.options.get("split", "srcmt"),
        "preset": plan.bench.preset,
        "overrides": [*plan.bench.overrides, *(QUICK if plan.quick else ()), *plan.overrides],
        "machine": "; ".join(machines) or machine(),
        "command": plan.command,
        "minutes": round(minutes, 1),
        "cells": {
            "done": len(cells),
            "total": len(METHODS) * len(seeds) * max(1, len(fractions)),
            "seeds": seeds,
        },
        "stage1": stage1_runs,
        "notes": [
            "test metrics of the teacher checkpoint selected on validation mean AUC",
            "one stage-1 checkpoint per loss (preset seed) is shared by all seeds"
            + (" and fractions" if fractions else "")
            + "; the seed drives the labelled subset, head initialisation and augmentation of "
            "stage 2",
            "supervised and mean-teacher train the backbone at the full LR "
            "(finetune.backbone_lr_scale=1); moco-mt and s2mts2 use the preset's scale",
            "sd: sample standard deviation over seeds (null with one seed)",
        ],
        "config": config_to_dict(cfg),
    }
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    path = plan.results_dir / plan.stem
    if not fractions:
        summary["methods"] = methods = aggregate(cells, METHODS)
        _write_json(path.with_suffix(".json"), summary)
        table = _table(methods)
        if table:
            plot_comparison_bars(
                table,
                "macro_auc",
                path.with_suffix(".png"),
                title=f"{plan.stem}: test macro AUC, seeds {sorted({c['seed'] for c in cells})}",
            )
        return summary
    summary["fractions"] = fractions
    summary["by_fraction"] = {
        f"{f:g}": aggregate([c for c in cells if c["fraction"] == f], METHODS, study_values)
        for f in fractions
    }
    summary["shifts"] = [asdict(shift) for shift in plan.bench.shifts]
    summary["notes"] += [
        "the labelled subset of a (fraction, seed) is the same file for every method",
        "shift_drop: in-domain test macro AUC minus the mean of macro_auc_<shift> over the "
        "shifts (fixed photometric changes of the test images, listed in shifts)",
        "paired: a - b per seed on the same test images, and their mean with a percentile "
        "bootstrap 95 % CI resampling the seeds and the test images (whole lesions)",
    ]
    if final:
        summary["paired"] = paired_differences(plan, cfg, cells, fractions)
    summary["cell_results"] = [
        {k: c.get(k) for k in ("method", "fraction", "seed", "metrics", "shifted_macro_auc")}
        | {k: c[k] for k in ("selected_epoch", "val_mean_auc", "minutes")}
        for c in cells
    ]
    _write_json(path.with_suffix(".json"), summary)
    write_text_atomic(path.with_suffix(".md"), fraction_markdown(summary, plan.stem))
    runs = {
        method: {
            float(f): entry[method]["macro_auc"]["runs"]
            for f, entry in summary["by_fraction"].items()
            if method in entry
        }
        for method in METHODS
    }
    plot_metric_by_fraction(
        {m: r for m, r in runs.items() if r},
        "test macro AUC",
        path.with_suffix(".png"),
        title=f"{plan.stem}: mean over seeds, band = min..max",
    )
    return summary


def _table(methods: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{method: {metric: (mean, sd) or mean}}, the form of comparison_table and the bar plot."""
    return {
        m: {
            k: v["mean"] if v["sd"] is None else (v["mean"], v["sd"])
            for k, v in e.items()
            if k != "seeds"
        }
        for m, e in methods.items()
    }


def markdown(summary: dict[str, Any], stem: str) -> str:
    """The README table of a summary (``stem``: its file name): mean ± sd per method and metric,
    in the study the tables of ``fraction_markdown``."""
    if "by_fraction" in summary:
        return fraction_markdown(summary, stem)
    methods = summary["methods"]
    table = _table(methods)
    keys = [k for k in METRICS if any(k in e for e in methods.values())]
    return comparison_table(table, keys) if table else "(no finished cells)\n"


def _mean_sd(value: dict[str, Any] | None, signed: bool = False) -> str:
    """'mean ± sd (n)' of an aggregate entry; '–' when missing."""
    if value is None:
        return "–"
    mean = f"{value['mean']:+.4f}" if signed else f"{value['mean']:.4f}"
    sd = "" if value["sd"] is None else f" ± {value['sd']:.4f}"
    return f"{mean}{sd} ({len(value['runs'])})"


def fraction_markdown(summary: dict[str, Any], stem: str) -> str:
    """The study's tables: test macro AUC by method × fraction, the paired differences per
    fraction and the AUC under the image shifts."""
    fractions = [f"{f:g}" for f in summary["fractions"]]
    by = summary["by_fraction"]
    methods = [m for m in METHODS if any(m in by[f] for f in fractions)]

    def cell(method: str, fraction: str, metric: str, signed: bool = False) -> str:
        return _mean_sd(by[fraction].get(method, {}).get(metric), signed)

    head = [f"{100 * float(f):g} %" for f in fractions]
    lines = [
        f"Test macro AUC of `{summary['benchmark']}` by labelled fraction, mean ± sample sd over "
        "seeds (number of seeds); `" + summary["command"] + "`:",
        "",
        "| method | " + " | ".join(head) + " |",
        "| --- |" + " --- |" * len(fractions),
        *(
            f"| {m} | " + " | ".join(cell(m, f, "macro_auc") for f in fractions) + " |"
            for m in methods
        ),
        "",
        f"![test macro AUC against the labelled fraction](results/{stem}.png)",
        "",
    ]
    paired = summary.get("paired")
    if paired:
        lines += [
            "Paired differences of test macro AUC (seed s of both methods on the same labelled "
            "subset); mean over seeds with a 95 % CI of a bootstrap over seeds × test lesions:",
            "",
            "| fraction | difference | per seed | mean [95 % CI] |",
            "| --- | --- | --- | --- |",
        ]
        for f, pairs in paired.items():
            for name, r in pairs.items():
                per_seed = ", ".join(
                    f"s{s} {p['difference']:+.4f}" for s, p in zip(r["seeds"], r["per_seed"])
                )
                low, high = r["difference_ci95"]
                ci = "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"
                lines.append(
                    f"| {100 * float(f):g} % | {name.replace(' - ', ' − ')} | {per_seed} | "
                    f"{r['difference']:+.4f} {ci} |"
                )
        lines.append("")
    shifts = [s["name"] for s in summary["shifts"]]
    if shifts:
        lines += [
            "Test macro AUC under fixed image changes (" + ", ".join(shifts) + "; "
            "`s2mts2.eval.shift.DERMOSCOPY_SHIFTS`), mean ± sd over seeds; drop = in-domain − "
            "mean of the shifted:",
            "",
            "| method | fraction | in-domain | " + " | ".join(shifts) + " | drop |",
            "| --- | --- | --- |" + " --- |" * (len(shifts) + 1),
        ]
        for f in fractions:
            for m in methods:
                if m in by[f]:
                    row = [cell(m, f, "macro_auc")]
                    row += [cell(m, f, f"macro_auc_{s}") for s in shifts]
                    row.append(cell(m, f, "shift_drop", signed=True))
                    lines.append(f"| {m} | {100 * float(f):g} % | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def run_benchmark(plan: Plan) -> dict[str, Any]:
    """Prepare, run every missing stage-1 checkpoint and cell, write and return the summary."""
    unknown = [m for m in plan.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    bad = [f for f in plan.fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"--fractions: {bad} are not in (0, 1]")
    cfg = base_config(plan)
    prepare(plan, cfg)
    ckpts: dict[str, Path] = {}
    for seed in plan.seeds:
        for fraction in plan.fractions or (None,):
            for method in plan.methods:
                loss = STAGE1_LOSS.get(method)
                if loss is not None and loss not in ckpts:
                    ckpts[loss] = stage1(plan, cfg, loss)
                run_cell(plan, cfg, method, seed, ckpts[loss] if loss else None, fraction)
                write_summary(plan, cfg, final=False)
    return write_summary(plan, cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ham10000", choices=["ham10000", "nih-sample", "digits"])
    p.add_argument(
        "--split", nargs="+", default=None, help="ham10000: srcmt (default) | lesion, or both"
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[],
        metavar="F",
        help=f"labelled fractions of the label-efficiency study (HAM10000 preset {STUDY_PRESET})",
    )
    p.add_argument("--quick", action="store_true", help="one seed, few epochs (a smoke run)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: the preset's)")
    p.add_argument("--keep-checkpoints", type=Path, default=None, metavar="DIR")
    p.add_argument("--preset", default=None, help="preset name or YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "benchmarks")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--summary-only", action="store_true", help="rewrite the JSON/PNG from finished cells"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    default_split = {"ham10000": "srcmt", "nih-sample": "grouped", "digits": "stratified"}
    fractions = tuple(args.fractions)
    # the command that builds this table (a --summary-only rewrite names it too)
    command = shlex.join(
        ["python", "benchmarks/ham10000.py", *(a for a in argv if a != "--summary-only")]
    )
    try:
        for split in args.split or [default_split[args.dataset]]:
            bench = benchmark_for(args.dataset, split, args.data_root)
            if args.preset or (fractions and args.dataset == "ham10000"):
                bench = replace(bench, preset=args.preset or STUDY_PRESET)
            plan = Plan(
                bench=bench,
                runs_dir=args.runs_dir / result_stem(bench.name, fractions, args.quick),
                results_dir=args.results_dir,
                overrides=tuple(args.set),
                methods=tuple(args.methods),
                seeds=tuple(args.seeds or ((0,) if args.quick else (0, 1, 2))),
                fractions=fractions,
                quick=args.quick,
                device=args.device,
                keep_dir=args.keep_checkpoints,
                n_boot=args.n_boot,
                progress=not args.no_progress,
                command=command,
            )
            summary = (
                write_summary(plan, base_config(plan)) if args.summary_only else run_benchmark(plan)
            )
            print(markdown(summary, plan.stem))
            print(f"wrote {plan.results_dir / plan.stem}.json and .png ({summary['minutes']} min)")
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
