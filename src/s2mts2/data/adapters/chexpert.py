"""CheXpert (v1.0 or v1.0-small): ``train.csv`` -> train, ``valid.csv`` -> val."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from s2mts2.data.adapters.common import (
    UNCERTAIN,
    CsvTable,
    cell_matrix,
    check_choice,
    existing,
    find_file,
    refuse_repeats,
    report_missing,
    require_images,
)
from s2mts2.data.table import DatasetTable
from s2mts2.errors import DataError

OBSERVATIONS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
PATIENT = re.compile(r"patient\d+")
TOP_DIRS = ("train", "valid", "test")
CELL = {"": np.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


def _dataset_dir(root: Path) -> Path:
    """The folder holding ``train.csv``: ``root`` itself or the one sub-folder that has it."""
    names = ("train.csv", "train.csv.gz")
    if find_file(root, names):
        return root
    found = (
        sorted(d for d in root.iterdir() if d.is_dir() and find_file(d, names))
        if root.is_dir()
        else []
    )
    if len(found) != 1:
        where = f"several folders: {', '.join(d.name for d in found)}" if found else "none"
        raise DataError(
            f"chexpert: need train.csv (or train.csv.gz) in {root} or in one folder below it; "
            f"found {where}"
        )
    return found[0]


def _resolve(dataset: str, rel: str) -> str:
    """Absolute path of a ``Path`` cell (``CheXpert-v1.0-small/train/...``): the first folder
    names the dataset folder (whatever it is called on disk) unless it is a split folder."""
    first, _, rest = rel.replace("\\", "/").strip("/").partition("/")
    return os.path.join(dataset, f"{first}/{rest}" if first in TOP_DIRS else rest)


def load_chexpert(
    root: str | Path,
    *,
    classes: str = "competition",
    uncertain: str = "ignore",
    blank: str = "zeros",
    frontal_only: bool = False,
) -> DatasetTable:
    """Read CheXpert ``train.csv`` (split train) and ``valid.csv`` if present (split val).

    Labels: (N, C) over the 14 observations (``classes="all"``) or the 5 competition ones
    (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion). Uncertain (-1) labels
    become NaN (``uncertain="ignore"``: masked in the loss), 0 (``zeros``) or 1 (``ones``).
    Blank cells (not mentioned in the report) become 0 by default (``blank="zeros"``, the common
    convention: an observation the report does not mention is taken as absent) or NaN
    (``blank="ignore"``). Groups: the ``patientNNNNN`` id of the path. There is no test split.

    Args:
        root: the dataset folder (``CheXpert-v1.0-small``) or the folder above it. The CSV
            ``Path`` column is relative to the folder above the dataset folder.
        frontal_only: keep only ``Frontal`` images.
    """
    check_choice("classes", classes, ("all", "competition"))
    check_choice("uncertain", uncertain, tuple(UNCERTAIN))
    check_choice("blank", blank, ("zeros", "ignore"))
    check_choice("frontal_only", frontal_only, (True, False))
    names = list(OBSERVATIONS if classes == "all" else COMPETITION)
    dataset = _dataset_dir(Path(root).expanduser().absolute())

    paths, labels, groups, split = [], [], [], []
    listed, missing = 0, []
    for csv_name, split_name in (("train", "train"), ("valid", "val")):
        csv_path = find_file(dataset, (f"{csv_name}.csv", f"{csv_name}.csv.gz"))
        if csv_path is None:
            continue
        table = CsvTable(csv_path)
        rel = table.values("Path")
        refuse_repeats(table, rel, "image")
        keep = np.ones(len(rel), dtype=bool)
        if frontal_only:
            keep &= np.asarray(table.values("Frontal/Lateral")) == "Frontal"
        full = [os.path.normpath(_resolve(str(dataset), r)) for r in rel]
        on_disk = existing(full)
        found = np.flatnonzero(keep & on_disk)
        listed += int(keep.sum())
        missing += [rel[i] for i in np.flatnonzero(keep & ~on_disk)]
        for i in found:
            m = PATIENT.search(rel[i])
            if m is None:
                raise DataError(
                    f"{csv_path}, line {table.lines[i]}: no patientNNNNN folder in {rel[i]!r}"
                )
            groups.append(m.group(0))
        paths += [full[i] for i in found]
        labels.append(cell_matrix(table, found, names, CELL, "1, 0, -1 or blank"))
        split += [split_name] * len(found)
    report_missing("chexpert", missing, listed, dataset)
    require_images("chexpert", len(paths), dataset)

    y = np.concatenate(labels)
    blank_value = 0.0 if blank == "zeros" else np.nan
    uncertain_value = UNCERTAIN[uncertain]
    y = np.where(np.isnan(y), blank_value, y)
    y = np.where(y == -1.0, uncertain_value, y)
    return DatasetTable(
        name="chexpert",
        paths=paths,
        labels=y,
        classes=names,
        task="multilabel",
        groups=np.asarray(groups),
        split=np.asarray(split),
        channels=1,
        missing=len(missing),
        split_source="official: train.csv -> train, valid.csv -> val",
    )
