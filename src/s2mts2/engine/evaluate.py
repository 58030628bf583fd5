"""``s2mts2 evaluate``: metrics, per-image predictions, markdown report and plots (ROC; confusion
matrix of a multi-class task) of a fine-tuned checkpoint; per-class thresholds of a multi-label
task chosen on the validation split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2mts2.config import config_from_dict
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.inference import predict
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import evaluate_predictions, threshold_evaluation
from s2mts2.eval.predictions import ImagePredictions, write_predictions_csv
from s2mts2.eval.report import markdown_table, plot_confusion_matrix, plot_roc
from s2mts2.eval.shift import ImageShift
from s2mts2.files import write_text_atomic
from s2mts2.models.heads import Network
from s2mts2.runtime.device import Precision, resolve_device


def load_finetuned(path: Path) -> dict[str, Any]:
    """Read a stage-2 checkpoint safely; errors name ``path`` and what it is instead."""
    state = load_checkpoint(path)
    if state["kind"] != "finetune":
        raise ConfigError(
            f"{path} is a {state['kind']} checkpoint; a fine-tuned (stage-2) one is needed, "
            "e.g. runs/<run>/best.pt from s2mts2 finetune"
        )
    missing = [key for key in ("meta", "config", "teacher") if not isinstance(state.get(key), dict)]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} entry: not a complete stage-2 checkpoint")
    try:
        config_from_dict(state["config"])
    except ConfigError as e:
        raise DataError(f"{path}: its config is damaged or edited: {e}") from e
    ModelInfo.from_mapping(state["meta"], path)  # a DataError naming what is damaged
    return state


def load_classifier(
    state: dict[str, Any], model: str = "teacher", source: str | Path = "checkpoint"
) -> Network:
    """Rebuild the network of a stage-2 checkpoint (``load_finetuned``) with the teacher's or
    the student's weights; a DataError naming ``source`` when they do not fit it."""
    cfg = config_from_dict(state["config"])
    meta = state["meta"]
    net = classifier_network(cfg.model, meta["channels"], len(meta["classes"]), init="random")
    if model == "teacher":
        weights = {k.removeprefix("module."): v for k, v in state["teacher"].items()}
        weights.pop("_extra_state", None)
    elif "student" in state:
        weights = state["student"]
    else:  # a best.pt: the shipped model, the teacher only
        raise DataError(
            f"{source} holds the teacher only (the model that is shipped); the student is in the "
            f"run's last.pt: evaluate {Path(source).parent / 'last.pt'} --model student"
        )
    try:
        net.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise DataError(
            f"{source}: the {model}'s weights do not fit the network its meta and config "
            f"describe ({meta['channels']} channel(s), {len(meta['classes'])} classes, "
            f"{cfg.model.backbone}): damaged or edited ({lines[min(1, len(lines) - 1)]})"
        ) from e
    return net.eval()


def default_eval_dir(checkpoint: Path, split: str, model: str = "teacher") -> Path:
    """Where ``evaluate`` writes by default: ``eval-<split>`` next to ``best.pt``.

    The student's goes next to the teacher's, another checkpoint's (such as ``last.pt``) to
    ``eval-<split>-last``, so that evaluating one never replaces the other's.
    """
    suffix = "" if model == "teacher" else f"-{model}"
    suffix += "" if checkpoint.stem == "best" else f"-{checkpoint.stem}"
    return checkpoint.parent / f"eval-{split}{suffix}"


@dataclass
class SplitPredictions:
    """A stage-2 checkpoint's probabilities ``probs`` (N, C) on the ``rows`` (N,) of the ``split``
    of the prepared ``data``, with the checkpoint's ``meta``."""

    probs: np.ndarray
    rows: np.ndarray
    data: PreparedData
    meta: dict[str, Any]
    split: str

    @property
    def labels(self) -> np.ndarray:
        """(N, C) labels of the rows: {0, 1, NaN} (multi-label) or one-hot (multi-class)."""
        return self.data.table.labels[self.rows]

    def metrics(self, n_boot: int = 1000) -> dict[str, Any]:
        """:func:`evaluate_predictions` of these rows with the table's classes, task and groups
        (the bootstrap CI resamples whole groups; ``n_boot = 0`` skips it)."""
        t = self.data.table
        return evaluate_predictions(
            self.probs,
            self.labels,
            classes=t.classes,
            eval_classes=t.eval_classes,
            task=t.task,
            groups=t.groups[self.rows],
            n_boot=n_boot,
        )

    def images(self) -> ImagePredictions:
        """The rows' paths, groups, labels and probabilities (what ``predictions.csv`` holds)."""
        t = self.data.table
        return ImagePredictions(
            paths=[t.paths[i] for i in self.rows],
            groups=t.groups[self.rows],
            labels=self.labels,
            probs=self.probs,
            classes=t.classes,
            eval_classes=t.eval_classes,
            task=t.task,
        )


def split_predictions(
    checkpoint: Path,
    split: str = "test",
    model: str = "teacher",
    data_dir: str | Path | None = None,
    device: str = "auto",
    shift: ImageShift | None = None,
) -> SplitPredictions:
    """Run a stage-2 checkpoint (its teacher or student) over one split, in fp32; ``shift``
    changes the cached uint8 images first (a deterministic change of the image source)."""
    state = load_finetuned(checkpoint)
    meta = state["meta"]
    dev = resolve_device(device)
    fp32 = Precision(dev.type)  # reported numbers in full precision, like the ONNX export
    net = fp32.prepare(load_classifier(state, model, checkpoint), dev)
    # the cache the run trained on (earlier checkpoints: the one at the input size)
    data = PreparedData.open(data_dir or meta["data_dir"], meta.get("cache_size", meta["size"]))
    if data.table.classes != meta["classes"]:
        raise DataError(
            f"{data.dir}: classes {data.table.classes} differ from the checkpoint's "
            f"{meta['classes']}"
        )
    idx = data.table.indices(split)
    if len(idx) == 0:
        found = sorted(set(data.table.split.tolist()))
        raise DataError(
            f"{data.dir}: the {split} split has no images; this dataset has {found} "
            f"(--split {found[-1] if found else 'val'})"
        )
    probs = predict(net, data, idx, meta["size"], dev, fp32, meta["task"], shift)
    return SplitPredictions(np.asarray(probs), idx, data, meta, split)


def threshold_predictions(
    checkpoint: Path,
    pred: SplitPredictions,
    *,
    model: str = "teacher",
    data_dir: str | Path | None = None,
    device: str = "auto",
) -> SplitPredictions | None:
    """The predictions that choose a multi-label task's per-class thresholds: the validation
    split's; ``pred`` itself when it is the validation split or the data has none; None for a
    multi-class task (its prediction is the most probable class)."""
    if pred.data.table.task != "multilabel":
        return None
    if pred.split == "val" or len(pred.data.table.indices("val")) == 0:
        return pred
    return split_predictions(checkpoint, "val", model, data_dir, device)


def _threshold_source(reference: SplitPredictions, pred: SplitPredictions) -> dict[str, Any]:
    """Where the thresholds were chosen: ``chosen_on`` (a split), ``held_out`` (not the
    evaluated images) and a ``note`` for the report."""
    n = len(reference.rows)
    if reference.split != pred.split:
        note = f"chosen on the {reference.split} split ({n} images), applied to {pred.split}."
    elif pred.split == "val":
        note = (
            f"chosen and scored on the val split itself ({n} images): in-sample, so "
            "optimistic; evaluate another split for held-out figures."
        )
    else:
        note = (
            f"this dataset has no validation split, so they were chosen on the {pred.split} "
            f"split itself ({n} images): in-sample, so optimistic."
        )
    return {
        "chosen_on": reference.split,
        "held_out": reference.split != pred.split,
        "note": note,
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    model: str = "teacher",
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate on a split of the prepared data (:func:`evaluate_split`)."""
    checkpoint = Path(checkpoint)
    pred = split_predictions(checkpoint, split, model, data_dir, device)
    reference = threshold_predictions(
        checkpoint, pred, model=model, data_dir=data_dir, device=device
    )
    return evaluate_split(
        pred, checkpoint, model=model, out_dir=out_dir, n_boot=n_boot, reference=reference
    )


def evaluate_split(
    pred: SplitPredictions,
    checkpoint: Path,
    *,
    model: str = "teacher",
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    reference: SplitPredictions | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint``'s predictions ``pred``: writes metrics.json, report.md,
    predictions.csv, roc.png and, for a multi-class task, confusion.png. ``reference``
    (:func:`threshold_predictions`) chooses per-class Youden thresholds scored on ``pred``."""
    probs, meta, split = pred.probs, pred.meta, pred.split
    t = pred.data.table
    metrics = pred.metrics(n_boot)
    metrics.update(
        checkpoint=str(checkpoint),
        data=str(pred.data.dir),
        split=split,
        model=model,
        method=meta.get("method"),
    )
    thresholds = None
    if reference is not None:
        metrics["thresholds"] = {
            **threshold_evaluation(
                reference.probs, reference.labels, probs, pred.labels, t.classes
            ),
            **_threshold_source(reference, pred),
        }
        thresholds = [v["threshold"] for v in metrics["thresholds"]["per_class"].values()]
    out = Path(out_dir) if out_dir else default_eval_dir(checkpoint, split, model)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{meta.get('method', '')} {model}, {t.name} {split}".strip()
    report = f"# Evaluation: {title}\n\n" + markdown_table(metrics, t.classes)
    written = ["metrics.json", "report.md", "predictions.csv", "roc.png"]
    write_predictions_csv(out / "predictions.csv", pred.images(), thresholds)
    plot_roc(
        probs, pred.labels, t.classes, out / "roc.png", title=title, eval_classes=t.eval_classes
    )
    if "confusion_matrix" in metrics:
        plot_confusion_matrix(metrics["confusion_matrix"], t.classes, out / "confusion.png", title)
        written.append("confusion.png")
    write_text_atomic(out / "report.md", report)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    metrics["report_markdown"] = report + f"\nwrote {out}/: {', '.join(written)}"
    return metrics
