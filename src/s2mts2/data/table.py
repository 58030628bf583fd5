"""The contract every dataset adapter returns: one row per image.

Data flows: files -> adapter (DatasetTable) -> split/labelled subset -> uint8 cache -> batches.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2mts2.errors import DataError
from s2mts2.files import write_text_atomic
from s2mts2.task import Task

SPLITS = ("train", "val", "test")


@dataclass
class DatasetTable:
    """Images of one dataset with labels, groups and split.

    Attributes:
        name: adapter name (``chestxray14``, ``chexpert``, ``isic2018``, ``csv``, ``synthetic``).
        paths: (N,) absolute image paths.
        labels: (N, C) float32; 1/0 per class, NaN = unknown (masked in the loss).
            Multi-class tasks are one-hot.
        classes: C class names.
        task: ``multilabel`` (sigmoid/BCE) or ``multiclass`` (softmax/CE).
        groups: (N,) patient or lesion ids (str); the splits this package draws keep a group
            in one split (a dataset's own split may not: SRC-MT's ISIC2018 split, a CSV's split
            column, which the CSV adapter reports).
        split: (N,) ``train`` | ``val`` | ``test``.
        channels: 1 (grey-scale X-rays) or 3 (RGB dermoscopy).
        eval_classes: classes averaged into the headline mean AUC (ChestX-ray14 leaves out
            ``No Finding``); defaults to all classes.
        missing: rows of the source CSV whose image file was not found (reported, left out).
        split_source: how the train/val/test split was made (named in ``summary.json``).
    """

    name: str
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    task: Task
    groups: np.ndarray
    split: np.ndarray
    channels: int
    eval_classes: list[str] = field(default_factory=list)
    missing: int = 0
    split_source: str = ""

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if n and (not self.classes or np.isnan(self.labels).all()):
            raise DataError(f"{self.name}: not one image has a label (are the label cells blank?)")
        self.groups = np.asarray(self.groups).astype(str)
        self.split = np.asarray(self.split).astype(str)
        if self.labels.shape != (n, len(self.classes)):
            raise DataError(
                f"{self.name}: label matrix has shape {self.labels.shape}, "
                f"expected ({n}, {len(self.classes)})"
            )
        if self.groups.shape != (n,) or self.split.shape != (n,):
            raise DataError(f"{self.name}: groups and split must have one entry per image ({n})")
        bad = set(np.unique(self.split)) - set(SPLITS)
        if bad:
            raise DataError(f"{self.name}: unknown split names {sorted(bad)}, expected {SPLITS}")
        if self.task not in ("multilabel", "multiclass"):
            raise DataError(f"{self.name}: task must be multilabel or multiclass, got {self.task}")
        if self.channels not in (1, 3):
            raise DataError(f"{self.name}: channels must be 1 or 3, got {self.channels}")
        if not self.eval_classes:
            self.eval_classes = list(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, split: str) -> np.ndarray:
        """(n,) int64 row indices of one split."""
        return np.flatnonzero(self.split == split)

    def groups_in_several_splits(self) -> int:
        """How many groups (patients, lesions) have images in more than one split: 0 for the
        splits this package draws; a dataset's own split may leak (SRC-MT's ISIC2018 split)."""
        splits_of: dict[str, set[str]] = {}
        for group, part in zip(self.groups.tolist(), self.split.tolist()):
            splits_of.setdefault(group, set()).add(part)
        return sum(len(parts) > 1 for parts in splits_of.values())

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS if (self.split == s).any()}

    # ---- persistence: DIR/table.csv + DIR/table.json -------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """Write ``table.csv`` (path, group, split, one column per class) and ``table.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["path", "group", "split", *self.classes])
        for i, p in enumerate(self.paths):
            w.writerow(
                [p, self.groups[i], self.split[i]]
                + ["" if np.isnan(v) else f"{v:g}" for v in self.labels[i]]
            )
        write_text_atomic(out / "table.csv", text.getvalue())
        meta = {
            "name": self.name,
            "classes": self.classes,
            "task": self.task,
            "channels": self.channels,
            "eval_classes": self.eval_classes,
            "missing": self.missing,
            "split_source": self.split_source,
        }
        write_text_atomic(out / "table.json", json.dumps(meta, indent=2))

    @classmethod
    def load(cls, data_dir: str | Path) -> DatasetTable:
        d = Path(data_dir)
        if not (d / "table.json").exists() or not (d / "table.csv").exists():
            raise DataError(
                f"{d}: not a prepared dataset (table.csv/table.json missing); "
                f"run `s2mts2 prepare DATASET --root ... --out {d}` first"
            )
        meta = json.loads((d / "table.json").read_text())
        paths, groups, split, rows = [], [], [], []
        with open(d / "table.csv", newline="") as f:
            r = csv.reader(f)
            next(r)
            for row in r:
                paths.append(row[0])
                groups.append(row[1])
                split.append(row[2])
                rows.append([float(v) if v != "" else np.nan for v in row[3:]])
        labels = np.asarray(rows, dtype=np.float32).reshape(len(paths), len(meta["classes"]))
        return cls(
            name=meta["name"],
            paths=paths,
            labels=labels,
            classes=meta["classes"],
            task=meta["task"],
            groups=np.asarray(groups),
            split=np.asarray(split),
            channels=meta["channels"],
            eval_classes=meta["eval_classes"],
            missing=meta["missing"],
            split_source=meta.get("split_source", ""),  # tables of earlier versions lack it
        )
