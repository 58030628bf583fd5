"""Per-image results of an evaluation: ``predictions.csv``, written and read back.

One row per image: ``path``, ``group`` (patient / lesion id), ``label:<class>`` per class (1, 0,
or empty for an unknown label), ``p:<class>`` per class (the predicted probability, as float32
in its shortest exact form), then for multi-class tasks ``true_class`` and ``predicted_class``
(the argmax), for multi-label tasks with thresholds ``predicted`` (the classes whose probability
is at or above their threshold, joined by ``;``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2mts2.errors import DataError
from s2mts2.files import write_text_atomic

LABEL = "label:"
PROB = "p:"


@dataclass
class ImagePredictions:
    """``paths`` (N,), ``groups`` (N,) str, ``labels`` (N, C) {0, 1, NaN}, ``probs`` (N, C)
    float32 of the ``classes``; ``eval_classes`` are those averaged into the mean AUC."""

    paths: list[str]
    groups: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    classes: list[str]
    eval_classes: list[str]
    task: str

    def __post_init__(self) -> None:
        n, c = len(self.paths), len(self.classes)
        self.groups = np.asarray(self.groups).astype(str)
        self.labels = np.asarray(self.labels, dtype=np.float64)
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if self.labels.shape != (n, c) or self.probs.shape != (n, c) or self.groups.shape != (n,):
            raise DataError(
                f"predictions of {n} images and {c} classes: got labels {self.labels.shape}, "
                f"probabilities {self.probs.shape}, groups {self.groups.shape}"
            )


def _number(value: float) -> str:
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def _label(value: float) -> str:
    return "" if np.isnan(value) else f"{value:g}"


def write_predictions_csv(
    path: str | Path,
    images: ImagePredictions,
    thresholds: Sequence[float | None] | None = None,
) -> Path:
    """Write ``images`` to ``path`` atomically (layout: the module docstring). ``thresholds``
    (C,) of a multi-label task add the ``predicted`` column (a class without one is never
    listed). Returns the path."""
    classes = images.classes
    multiclass = images.task == "multiclass"
    header = ["path", "group", *(LABEL + c for c in classes), *(PROB + c for c in classes)]
    header += ["true_class", "predicted_class"] if multiclass else []
    header += ["predicted"] if thresholds is not None and not multiclass else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for i, image_path in enumerate(images.paths):
        y, p = images.labels[i], images.probs[i]
        row = [image_path, images.groups[i], *map(_label, y), *map(_number, p)]
        if multiclass:
            known = np.flatnonzero(y == 1)
            row += [classes[known[0]] if len(known) == 1 else "", classes[int(np.argmax(p))]]
        elif thresholds is not None:
            row.append(
                ";".join(c for c, t, v in zip(classes, thresholds, p) if t is not None and v >= t)
            )
        writer.writerow(row)
    write_text_atomic(path, text.getvalue())
    return Path(path)


def read_predictions_csv(
    path: str | Path, *, task: str, eval_classes: Sequence[str] | None = None
) -> ImagePredictions:
    """Read a ``predictions.csv`` of :func:`write_predictions_csv`; ``task`` and ``eval_classes``
    (default: all classes) come from its ``metrics.json``. A DataError names the file and the
    line when it is not in that layout."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it: {e}") from e
    if not rows or rows[0][:2] != ["path", "group"]:
        raise DataError(f"{path}: not a predictions.csv of s2mts2 evaluate (no path,group header)")
    header = rows[0]
    classes = [h.removeprefix(LABEL) for h in header if h.startswith(LABEL)]
    c = len(classes)
    if not classes or header[2 + c : 2 + 2 * c] != [PROB + name for name in classes]:
        raise DataError(
            f"{path}: expected columns {LABEL}<class> then {PROB}<class> for the same classes"
        )
    paths, groups, labels, probs = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} cells for {len(header)} columns")
        try:
            labels.append([float(v) if v != "" else np.nan for v in row[2 : 2 + c]])
            probs.append([float(v) for v in row[2 + c : 2 + 2 * c]])
        except ValueError as e:
            raise DataError(f"{path}, line {line}: {e} (expected numbers)") from e
        paths.append(row[0])
        groups.append(row[1])
    return ImagePredictions(
        paths=paths,
        groups=np.asarray(groups, dtype=str),
        labels=np.asarray(labels, dtype=np.float64).reshape(len(paths), c),
        probs=np.asarray(probs, dtype=np.float32).reshape(len(paths), c),
        classes=classes,
        eval_classes=list(eval_classes) if eval_classes is not None else list(classes),
        task=task,
    )
