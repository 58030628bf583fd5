"""``s2mts2 evaluate``: metrics, markdown report and ROC plot of a fine-tuned checkpoint."""

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
from s2mts2.engine.finetune import predict
from s2mts2.engine.runtime import Precision, resolve_device
from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import evaluate_predictions
from s2mts2.eval.report import markdown_table, plot_roc
from s2mts2.files import write_text_atomic
from s2mts2.models.heads import Network


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
    from s2mts2.infer.predict import ModelInfo  # which builds on this module

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
    """A stage-2 checkpoint's probabilities ``probs`` (N, C) on the ``rows`` (N,) of a split of
    the prepared ``data``, with the checkpoint's ``meta``."""

    probs: np.ndarray
    rows: np.ndarray
    data: PreparedData
    meta: dict[str, Any]

    @property
    def labels(self) -> np.ndarray:
        return self.data.table.labels[self.rows]


def split_predictions(
    checkpoint: Path,
    split: str = "test",
    model: str = "teacher",
    data_dir: str | Path | None = None,
    device: str = "auto",
) -> SplitPredictions:
    """Run a stage-2 checkpoint (its teacher or student) over one split, in fp32."""
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
    probs = predict(net, data, idx, meta["size"], dev, fp32, meta["task"])
    return SplitPredictions(np.asarray(probs), idx, data, meta)


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
    """Evaluate on a split of the prepared data; writes metrics.json, report.md, roc.png."""
    checkpoint = Path(checkpoint)
    pred = split_predictions(checkpoint, split, model, data_dir, device)
    return evaluate_split(
        pred, checkpoint, split=split, model=model, out_dir=out_dir, n_boot=n_boot
    )


def evaluate_split(
    pred: SplitPredictions,
    checkpoint: Path,
    *,
    split: str = "test",
    model: str = "teacher",
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Metrics, report.md and roc.png of ``checkpoint``'s predictions ``pred`` on ``split``."""
    probs, idx, meta = pred.probs, pred.rows, pred.meta
    t = pred.data.table
    metrics = evaluate_predictions(
        probs,
        t.labels[idx],
        classes=t.classes,
        eval_classes=t.eval_classes,
        task=t.task,
        groups=t.groups[idx],
        n_boot=n_boot,
    )
    metrics.update(checkpoint=str(checkpoint), split=split, model=model, method=meta.get("method"))
    out = Path(out_dir) if out_dir else default_eval_dir(checkpoint, split, model)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{meta.get('method', '')} {model}, {t.name} {split}".strip()
    report = f"# Evaluation: {title}\n\n" + markdown_table(metrics, t.classes)
    plot_roc(
        probs, t.labels[idx], t.classes, out / "roc.png", title=title, eval_classes=t.eval_classes
    )
    write_text_atomic(out / "report.md", report)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    metrics["report_markdown"] = report + f"\nwrote {out / 'metrics.json'}, report.md, roc.png"
    return metrics
