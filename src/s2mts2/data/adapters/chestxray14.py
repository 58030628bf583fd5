"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` + official ``train_val_list.txt``/``test_list.txt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2mts2.data.adapters.common import (
    CsvTable,
    check_choice,
    find_file,
    index_files,
    refuse_repeats,
    report_missing,
    require_images,
)
from s2mts2.data.splits import grouped_split, grouped_split_name
from s2mts2.data.table import DatasetTable
from s2mts2.errors import ConfigError, DataError

FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
CLASSES = [*FINDINGS, "No Finding"]
CSV_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)


def _image_dirs(root: Path) -> list[Path]:
    """root, root/images and the official archive folders root/images_001/images ... (sorted)."""
    parts = sorted(p / "images" for p in root.glob("images_[0-9][0-9][0-9]"))
    return [root, root / "images", *parts]


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def load_chestxray14(
    root: str | Path,
    *,
    view: str | None = None,
    split: str = "official",
    val_fraction: float = 0.0,
    seed: int = 0,
) -> DatasetTable:
    """Read ChestX-ray14 from ``root``.

    Labels: (N, 15) multi-hot over the 14 findings + ``No Finding``; the mean AUC is taken over
    the 14 findings (``eval_classes``). Split: ``train_val_list.txt`` -> train,
    ``test_list.txt`` -> test. Groups: ``Patient ID``. Images may lie flat in ``root``, in
    ``root/images`` or in the archive folders ``root/images_001/images`` ... ; listed images
    that are not there are counted in ``missing`` and left out.

    Args:
        root: dataset folder with ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``
            (or ``.csv.gz``) and the two split lists.
        view: keep only ``PA`` or ``AP`` images (``View Position``); None keeps both.
        split: ``official`` (the paper protocol: train_val / test lists) or ``grouped`` (a
            patient-grouped, class-stratified 70/10/20 split of the images present, e.g. for a
            partial download such as a 1,000-image sample).
        val_fraction: with ``official``, hold out this fraction of train_val patients as a
            validation split (model selection); 0 = none, as in the paper.
        seed: seed of the grouped split / validation hold-out.
    """
    view = view.upper() if isinstance(view, str) else view  # pa = PA
    check_choice("view", view, (None, "PA", "AP"))
    check_choice("split", split, ("official", "grouped"))
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"chestxray14: option val_fraction={val_fraction} must be in [0, 1)")
    root = Path(root).expanduser().absolute()
    csv_path = find_file(root, CSV_NAMES)
    if csv_path is None:
        raise DataError(f"chestxray14: none of {list(CSV_NAMES)} found in {root}")
    lists = {s: root / f"{s}_list.txt" for s in ("train_val", "test")}
    for p in lists.values():
        if not p.is_file():
            raise DataError(f"chestxray14: official split list {p.name} not found in {root}")
    test_names = _read_list(lists["test"])
    train_names = _read_list(lists["train_val"])

    table = CsvTable(csv_path)
    names = table.values("Image Index")
    refuse_repeats(table, names, "image")
    findings = table.values("Finding Labels")
    patients = table.values("Patient ID")
    keep = np.ones(len(names), dtype=bool)
    if view is not None:
        keep &= np.asarray(table.values("View Position")) == view
    files = index_files(_image_dirs(root))
    found = keep & np.fromiter((n in files for n in names), dtype=bool, count=len(names))
    rows = np.flatnonzero(found)
    absent = [names[i] for i in np.flatnonzero(keep & ~found)]
    report_missing("chestxray14", absent, int(keep.sum()), root)
    require_images("chestxray14", len(rows), root)

    col = {c: j for j, c in enumerate(CLASSES)}
    labels = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    assigned = np.empty(len(rows), dtype=object)
    for k, i in enumerate(rows):
        for label in findings[i].split("|"):
            j = col.get(label.strip())
            if j is None:
                raise DataError(
                    f"{csv_path}, line {table.lines[i]}: unknown finding {label!r} "
                    f"(expected {' | '.join(CLASSES)})"
                )
            labels[k, j] = 1.0
        if names[i] in test_names:
            assigned[k] = "test"
        elif names[i] in train_names:
            assigned[k] = "train"
        else:
            raise DataError(
                f"{csv_path}, line {table.lines[i]}: image {names[i]} is in neither "
                f"{lists['train_val'].name} nor {lists['test'].name}"
            )
    groups = np.asarray([patients[i] for i in rows])
    source = "official: train_val_list.txt / test_list.txt"
    if split == "grouped":
        assigned = grouped_split(groups, labels, (0.7, 0.1, 0.2), seed=seed)
        source = f"grouped: {grouped_split_name('patient', seed)}"
    elif val_fraction > 0:
        source += f", val: {val_fraction:g} of the train_val patients (seed {seed})"
        train = np.flatnonzero(assigned == "train")
        held = grouped_split(
            groups[train], labels[train], (1 - val_fraction, val_fraction, 0.0), seed=seed
        )
        assigned[train] = np.where(held == "val", "val", "train")
    return DatasetTable(
        name="chestxray14",
        paths=[files[names[i]] for i in rows],
        labels=labels,
        classes=list(CLASSES),
        task="multilabel",
        groups=groups,
        split=assigned,
        channels=1,
        eval_classes=list(FINDINGS),
        missing=int(keep.sum() - len(rows)),
        split_source=source,
    )
