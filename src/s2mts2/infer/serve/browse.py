"""A prepared split seen through the model: labels, probabilities, loss, metrics and ROC plot.

Images come from the prepared folder's uint8 cache at the model's input size (else the smallest
larger one, resized down by the evaluation transform) and are named by their position in the
split, never by a path. Multi-label predictions are
the classes with p >= 0.5; a multi-class prediction is the most probable class. An image is
misclassified when a known label disagrees with the prediction.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from s2mts2.data.prepared import PreparedData
from s2mts2.errors import DataError
from s2mts2.eval.metrics import evaluate_predictions
from s2mts2.eval.report import roc_figure
from s2mts2.infer.serve.analysis import Analyst
from s2mts2.infer.serve.render import png_bytes

log = logging.getLogger("s2mts2")

SORTS = ("index", "loss", "confidence")
THRESHOLD = 0.5  # a multi-label class is predicted from this probability on
BATCH = 64
_EPS = 1e-7
MATCH_TOLERANCE = 1e-4  # mean AUC of a stored metrics.json against the probabilities here


def _losses(probs: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """(N,) cross-entropy (multi-class) or mean BCE over the known labels (multi-label; NaN
    when no label is known)."""
    p = np.clip(probs, _EPS, 1 - _EPS)
    if task == "multiclass":
        known = np.nan_to_num(labels)
        loss = -(known * np.log(p)).sum(axis=1)
        return np.where(known.sum(axis=1) > 0, loss, np.nan)
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isnan(labels), np.nan, bce), axis=1)


def _predicted(probs: np.ndarray, task: str) -> np.ndarray:
    """(N, K) bool: the most probable class (multi-class) or p >= THRESHOLD (multi-label)."""
    if task == "multiclass":
        return np.eye(probs.shape[1], dtype=bool)[probs.argmax(axis=1)]
    return probs >= THRESHOLD


@dataclass
class SplitView:
    """The model's probabilities (n, K) for the ``n`` images of one split of a prepared folder."""

    data: PreparedData
    split: str
    rows: np.ndarray  # (n,) table rows of the split
    probabilities: np.ndarray
    labels: np.ndarray  # (n, K): 1/0, NaN unknown
    task: str
    _roc: bytes | None = None

    @classmethod
    def compute(
        cls, analyst: Analyst, data_dir: Path, split: str, progress: bool = True
    ) -> SplitView:
        """Run the model over the split's cached images (``data_dir`` as ``prepare`` wrote it)."""
        info = analyst.info
        data = PreparedData.open(data_dir, _cache_size(data_dir, info.size))
        table = data.table
        if table.classes != info.classes or table.channels != info.channels:
            raise DataError(
                f"--data {data_dir}: classes {table.classes} ({table.channels} channel(s)) differ "
                f"from the model's {info.classes} ({info.channels} channel(s))"
            )
        rows = table.indices(split)
        if len(rows) == 0:
            found = sorted(set(table.split.tolist()))
            raise DataError(f"--data {data_dir}: no {split} split (--split one of {found})")
        cache_rows = data.rows[rows]
        probs = []
        for start in tqdm(
            range(0, len(rows), BATCH), desc=f"{split} split", unit="batch", disable=not progress
        ):
            batch = torch.from_numpy(data.cache.batch(cache_rows[start : start + BATCH]))
            with analyst.lock:
                probs.append(analyst.model(analyst.transform(batch)).numpy())
        return cls(data, split, rows, np.concatenate(probs), table.labels[rows], table.task)

    def __len__(self) -> int:
        return len(self.rows)

    def metrics(self, evaluated: Path | None) -> dict[str, Any]:
        """The split's metrics and where they come from: ``evaluated`` (``s2mts2 evaluate``'s
        metrics.json) when it scores these predictions, else computed here (no bootstrap CI)."""
        table = self.data.table
        computed = evaluate_predictions(
            self.probabilities,
            self.labels,
            classes=table.classes,
            eval_classes=table.eval_classes,
            task=self.task,
            n_boot=0,
        )
        stored = _read_metrics(evaluated)
        if stored is not None and _same_evaluation(stored, computed, self.split):
            return {"source": f"s2mts2 evaluate ({evaluated})", "metrics": stored}
        if stored is not None:
            log.warning("%s: scores another model or data; serve computes the metrics", evaluated)
        source = "computed from the probabilities below (s2mts2 evaluate adds a 95 % CI)"
        return {"source": source, "metrics": computed}

    def roc_png(self) -> bytes:
        """PNG of the split's ROC curves (drawn once)."""
        if self._roc is None:
            table = self.data.table
            fig = roc_figure(
                self.probabilities,
                self.labels,
                table.classes,
                title=f"{table.name} {self.split}",
                eval_classes=table.eval_classes,
            )
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            self._roc = buf.getvalue()
        return self._roc

    def image_png(self, index: int) -> bytes:
        """PNG of image ``index`` (0 <= index < n) of the split, as the model saw it."""
        (pixels,) = self.data.cache.batch(self.data.rows[self.rows[index : index + 1]])
        return png_bytes(pixels.transpose(1, 2, 0))

    def query(
        self,
        *,
        sort: str = "index",
        descending: bool = False,
        true_class: int | None = None,
        predicted_class: int | None = None,
        misclassified_first: bool = False,
        page: int = 0,
        per_page: int = 24,
    ) -> dict[str, Any]:
        """One page of the split's images, filtered and sorted; arguments checked by the caller."""
        predicted = _predicted(self.probabilities, self.task)
        known = ~np.isnan(self.labels)
        wrong = (known & (predicted != (self.labels == 1))).any(axis=1)
        loss = _losses(self.probabilities, self.labels, self.task)
        confidence = self.probabilities.max(axis=1)
        keep = np.ones(len(self), dtype=bool)
        if true_class is not None:
            keep &= self.labels[:, true_class] == 1
        if predicted_class is not None:
            keep &= predicted[:, predicted_class]
        order = np.flatnonzero(keep)
        key = {"index": order, "loss": loss[order], "confidence": confidence[order]}[sort]
        key = np.nan_to_num(key, nan=-np.inf if descending else np.inf)  # unknown loss last
        order = order[np.argsort(-key if descending else key, kind="stable")]
        if misclassified_first:
            order = order[np.argsort(~wrong[order], kind="stable")]
        pages = max(1, -(-len(order) // per_page))
        page = min(page, pages - 1)
        classes = self.data.table.classes
        items = [
            {
                "index": int(i),
                "labels": [classes[k] for k in np.flatnonzero(self.labels[i] == 1)],
                "unknown": [classes[k] for k in np.flatnonzero(~known[i])],
                "predicted": [classes[k] for k in np.flatnonzero(predicted[i])],
                "probabilities": self.probabilities[i].tolist(),
                "loss": None if np.isnan(loss[i]) else float(loss[i]),
                "confidence": float(confidence[i]),
                "misclassified": bool(wrong[i]),
            }
            for i in order[page * per_page : (page + 1) * per_page]
        ]
        return {
            "total": int(len(order)),
            "misclassified": int(wrong[order].sum()),
            "page": page,
            "pages": pages,
            "items": items,
        }


def _cache_size(data_dir: Path, size: int) -> int:
    """The cache at the model's input ``size``, else the smallest larger one (the evaluation
    transform resizes it down, as for a run trained from a larger cache)."""
    sizes = sorted(int(p.name[6:-2]) for p in data_dir.glob("cache-*px") if p.name[6:-2].isdigit())
    return next((s for s in sizes if s >= size), size)


def _read_metrics(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _same_evaluation(stored: dict[str, Any], computed: dict[str, Any], split: str) -> bool:
    """True when ``stored`` is of this split, these images and (nearly) these probabilities."""
    if stored.get("split") != split or stored.get("n_images") != computed["n_images"]:
        return False
    if stored.get("classes") != computed["classes"]:
        return False
    a, b = stored.get("mean_auc"), computed["mean_auc"]
    if a is None or b is None:
        return a is b
    return isinstance(a, (int, float)) and abs(a - b) <= MATCH_TOLERANCE
