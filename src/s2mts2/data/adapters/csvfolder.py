"""A user's own image folder described by a CSV (paths relative to the folder + labels)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from s2mts2.data.adapters.common import (
    CsvTable,
    cell_matrix,
    check_choice,
    existing,
    report_missing,
    require_images,
)
from s2mts2.data.splits import grouped_split
from s2mts2.data.table import SPLITS, DatasetTable
from s2mts2.errors import ConfigError, DataError

CELL = {"": np.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0}


def _inside(root: str, table: CsvTable, paths: list[str]) -> list[str]:
    """Absolute normalised paths; DataError naming the row when one escapes ``root``."""
    out = []
    for p, line in zip(paths, table.lines):
        full = os.path.normpath(os.path.join(root, p))
        if not p or os.path.commonpath([root, full]) != root:
            raise DataError(
                f"{table.path}, line {line}: image path {p!r} is not inside the root folder {root}"
            )
        out.append(full)
    return out


def load_csv(
    root: str | Path,
    *,
    csv: str,
    path_column: str = "path",
    label_columns: list[str] | None = None,
    class_column: str | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    channels: int = 3,
    task: str | None = None,
    seed: int = 0,
) -> DatasetTable:
    """Read images listed in a CSV under ``root``.

    Labels come from either ``label_columns`` (one 0/1/blank column per class, blank = NaN =
    unknown; task ``multilabel``, or ``multiclass`` when every labelled row is one-hot) or one
    ``class_column`` (class names, sorted, one-hot; blank = unlabelled row of NaN; task
    ``multiclass``). Rows whose image is not on disk are counted in ``missing`` and left out.

    Args:
        root: the image folder; image paths in the CSV are relative to it (absolute paths
            must lie inside it).
        csv: the CSV file, relative to ``root`` or absolute.
        group_column: patient ids (no patient crosses splits); rows without one, and all rows
            by default, are their own group.
        split_column: ``train``/``val``/``test`` per row; default: a grouped, class-stratified
            70/10/20 split by ``seed``.
        channels: 1 (grey-scale) or 3 (RGB).
    """
    if (label_columns is None) == (class_column is None):
        raise ConfigError("csv dataset: give exactly one of label_columns or class_column")
    check_choice("channels", channels, (1, 3))
    check_choice("task", task, (None, "multilabel", "multiclass"))
    if class_column is not None and task == "multilabel":
        raise ConfigError(
            "csv dataset: class_column gives one class per image; use task multiclass"
        )
    if label_columns is not None and not label_columns:
        raise ConfigError("csv dataset: label_columns is empty")
    root_s = os.path.abspath(Path(root).expanduser())
    table = CsvTable(Path(root_s) / csv)
    for c in [path_column, *(label_columns or []), class_column, group_column, split_column]:
        if c is not None:
            table.column(c)

    full = _inside(root_s, table, table.values(path_column))
    rows = np.flatnonzero(existing(full))
    report_missing("csv", len(full) - len(rows), len(full), Path(root_s))
    require_images("csv", len(rows), Path(root_s))

    if label_columns is not None:
        classes = list(label_columns)
        labels = cell_matrix(table, rows, classes, CELL, "0, 1 or blank")
        if task == "multiclass":
            known = ~np.isnan(labels).any(axis=1)
            bad = np.flatnonzero(known & (labels.sum(axis=1) != 1))
            if len(bad):
                raise DataError(
                    f"{table.path}, line {table.lines[rows[bad[0]]]}: task multiclass needs "
                    f"exactly one 1 among {classes}"
                )
    else:
        names = np.asarray(table.values(class_column))[rows]
        classes = sorted(set(names) - {""})
        labels = (names[:, None] == np.asarray(classes)[None, :]).astype(np.float32)
        labels[names == ""] = np.nan

    groups = np.asarray(full)[rows]  # one group per image unless a group column says otherwise
    if group_column is not None:
        named = np.asarray(table.values(group_column))[rows]
        groups = np.where(named != "", named, groups)
    if split_column is not None:
        split = np.asarray(table.values(split_column))[rows]
        bad = np.flatnonzero(~np.isin(split, SPLITS))
        if len(bad):
            raise DataError(
                f"{table.path}, line {table.lines[rows[bad[0]]]}: split {str(split[bad[0]])!r}, "
                f"expected one of {list(SPLITS)}"
            )
    else:
        split = grouped_split(groups, labels, seed=seed)
    return DatasetTable(
        name="csv",
        paths=[full[i] for i in rows],
        labels=labels,
        classes=classes,
        task=task or ("multiclass" if class_column is not None else "multilabel"),
        groups=groups,
        split=split,
        channels=channels,
        missing=len(full) - len(rows),
    )
