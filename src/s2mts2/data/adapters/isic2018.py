"""ISIC 2018 Task 3 / HAM10000 dermoscopy, 7 classes, SRC-MT split or a lesion-grouped split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2mts2.data.adapters.common import (
    LOG,
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
from s2mts2.errors import DataError

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
METADATA = ("HAM10000_metadata.csv", "HAM10000_metadata.csv.gz")
GROUND_TRUTH = (
    "ISIC2018_Task3_Training_GroundTruth.csv",
    "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
)
SPLIT_FILES = {"train": "training.csv", "val": "validation.csv", "test": "testing.csv"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _read_metadata(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """HAM10000 metadata -> (image id -> class index, image id -> lesion id)."""
    table = CsvTable(path)
    refuse_repeats(table, table.values("image_id"), "image")
    dx_col = {c.lower(): j for j, c in enumerate(CLASSES)}
    label, lesion = {}, {}
    for image, dx, les, line in zip(
        table.values("image_id"), table.values("dx"), table.values("lesion_id"), table.lines
    ):
        if dx.lower() not in dx_col:
            raise DataError(
                f"{path}, line {line}: unknown dx {dx!r} (expected {', '.join(dx_col)})"
            )
        label[image] = dx_col[dx.lower()]
        lesion[image] = les or image
    return label, lesion


def _read_onehot(path: Path) -> dict[str, tuple[int, int]]:
    """One-hot CSV (``image,MEL,NV,...``) -> image id -> (class index, file line)."""
    table = CsvTable(path)
    images = table.values("image")
    refuse_repeats(table, images, "image")
    cols = np.asarray([table.values(c) for c in CLASSES]).T
    out = {}
    for image, row, line in zip(images, cols, table.lines):
        try:
            v = np.asarray([float(x) for x in row])
        except ValueError:
            v = np.zeros(0)
        if v.shape != (len(CLASSES),) or not np.isin(v, (0.0, 1.0)).all() or v.sum() != 1:
            raise DataError(
                f"{path}, line {line}: expected one-hot 0/1 values over {CLASSES}, got {list(row)}"
            )
        out[image] = (int(v.argmax()), line)
    return out


def _split_dir(root: Path) -> Path | None:
    """Folder holding all three SRC-MT split CSVs: root/splits_srcmt or root, else None."""
    for d in (root / "splits_srcmt", root):
        if all((d / f).is_file() for f in SPLIT_FILES.values()):
            return d
    return None


def load_isic2018(root: str | Path, *, split: str = "auto", seed: int = 0) -> DatasetTable:
    """Read ISIC 2018 Task 3 (HAM10000) from ``root``.

    Labels: (N, 7) one-hot over MEL, NV, BCC, AKIEC, BKL, DF, VASC, from
    ``HAM10000_metadata.csv`` (``dx``; groups = ``lesion_id``), else the Task 3 ground-truth
    CSV, else the split CSVs themselves (groups = image id without metadata). Images:
    ``root/images``, ``root/ISIC2018_Task3_Training_Input`` or flat in ``root``.

    Args:
        split: ``srcmt`` uses the SRC-MT CSVs (``root/splits_srcmt/{training,validation,
            testing}.csv`` or those three in ``root``), ``lesion`` a lesion-grouped,
            class-stratified 70/10/20 split by ``seed``; ``auto`` = ``srcmt`` when the CSVs
            exist, else ``lesion``.
        seed: seed of the lesion split.
    """
    check_choice("split", split, ("srcmt", "lesion", "auto"))
    root = Path(root).expanduser().absolute()
    split_dir = _split_dir(root) if split != "lesion" else None
    if split == "srcmt" and split_dir is None:
        raise DataError(
            f"isic2018: split=srcmt needs {', '.join(SPLIT_FILES.values())} in "
            f"{root / 'splits_srcmt'} or {root}"
        )
    split_of: dict[str, str] = {}
    split_labels: dict[str, tuple[int, int, Path]] = {}
    if split_dir is not None:
        for name, file in SPLIT_FILES.items():
            for image, (c, line) in _read_onehot(split_dir / file).items():
                if image in split_of:
                    raise DataError(
                        f"{split_dir / file}, line {line}: image {image} is already in the "
                        f"{split_of[image]} split"
                    )
                split_of[image] = name
                split_labels[image] = (c, line, split_dir / file)

    meta = find_file(root, METADATA)
    truth = find_file(root, GROUND_TRUTH)
    if meta is not None:
        label, lesion = _read_metadata(meta)
    elif truth is not None:
        label = {k: c for k, (c, _) in _read_onehot(truth).items()}
        lesion = {k: k for k in label}
    elif split_labels:
        label = {k: c for k, (c, _, _) in split_labels.items()}
        lesion = {k: k for k in label}
    else:
        raise DataError(
            f"isic2018: no labels in {root}: expected {METADATA[0]} or {GROUND_TRUTH[0]} "
            f"or the SRC-MT split CSVs"
        )
    for image, (c, line, file) in split_labels.items():
        if image not in label:
            raise DataError(f"{file}, line {line}: image {image} is not in the label file")
        if label[image] != c:
            raise DataError(
                f"{file}, line {line}: image {image} is {CLASSES[c]} here but "
                f"{CLASSES[label[image]]} in the label file"
            )

    files = {
        Path(n).stem: p
        for n, p in index_files(
            [root / "images", root / "ISIC2018_Task3_Training_Input", root]
        ).items()
        if Path(n).suffix.lower() in IMAGE_SUFFIXES
    }
    images = list(label)
    if split_dir is not None:
        unsplit = sum(1 for k in images if k not in split_of)
        if unsplit:
            LOG.warning(
                "isic2018: %d labelled images are in no SRC-MT split file; left out", unsplit
            )
        images = [k for k in images if k in split_of]
    found = [k for k in images if k in files]
    report_missing("isic2018", [k for k in images if k not in files], len(images), root)
    require_images("isic2018", len(found), root)

    onehot = np.eye(len(CLASSES), dtype=np.float32)[[label[k] for k in found]]
    groups = np.asarray([lesion[k] for k in found])
    if split_dir is not None:
        split_col = np.asarray([split_of[k] for k in found])
        source = f"srcmt: SRC-MT's {', '.join(SPLIT_FILES.values())} in {split_dir}"
    else:
        split_col = grouped_split(groups, onehot, seed=seed)
        source = f"lesion: {grouped_split_name('lesion', seed)}"
    return DatasetTable(
        name="isic2018",
        paths=[files[k] for k in found],
        labels=onehot,
        classes=list(CLASSES),
        task="multiclass",
        groups=groups,
        split=split_col,
        channels=3,
        missing=len(images) - len(found),
        split_source=source,
    )
