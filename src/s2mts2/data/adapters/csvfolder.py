"""A user's own image folder described by a CSV (paths relative to the folder + labels)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from s2mts2.data.adapters.common import (
    LOG,
    UNCERTAIN,
    CsvTable,
    cell_matrix,
    check_choice,
    existing,
    refuse_repeats,
    report_missing,
    require_images,
)
from s2mts2.data.splits import grouped_split, grouped_split_name
from s2mts2.data.table import SPLITS, DatasetTable
from s2mts2.errors import ConfigError, DataError

CELL = {"": np.nan, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0}
# what spreadsheets and pandas write for an empty cell: unknown, as a blank, never a class name
MISSING = frozenset({"nan", "na", "n/a", "<na>", "#n/a", "null", "none"})


def _blank_missing(cells: list[str]) -> list[str]:
    """``cells`` with the spellings of a missing value (``nan``, ``NA``, ...) made blank."""
    return ["" if c.casefold() in MISSING else c for c in cells]


RARE_CLASS = 3  # a class with fewer images is reported: often a typo in the CSV


def _names(value: list[str] | str, option: str) -> list[str]:
    """A list of names from a YAML list or a comma-separated string (``A,B`` or ``A``)."""
    names = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ConfigError(f"csv dataset: option {option} is empty")
    if len(set(names)) != len(names):
        raise ConfigError(f"csv dataset: option {option} repeats a name: {names}")
    return names


def _class_names(
    table: CsvTable, rows: np.ndarray, names: np.ndarray, expected: list[str] | None
) -> list[str]:
    """The classes of a class column: ``expected`` (every named row must use one of them), or the
    sorted names found; names that differ only in case are refused, rare ones reported."""
    lines = np.asarray(table.lines)[rows]
    if expected is not None:
        bad = np.flatnonzero((names != "") & ~np.isin(names, expected))
        if len(bad):
            raise DataError(
                f"{table.path}, line {lines[bad[0]]}: class {str(names[bad[0]])!r} is not one of "
                f"the classes option {expected} ({len(bad)} such row(s))"
            )
        return expected
    counts = Counter(names.tolist())
    found = sorted(set(counts) - {""})
    first_line = {n: int(lines[np.flatnonzero(names == n)[0]]) for n in found}
    by_fold: dict[str, list[str]] = {}
    for n in found:
        by_fold.setdefault(n.casefold(), []).append(n)
    clash = next((group for group in by_fold.values() if len(group) > 1), None)
    if clash:
        where = ", ".join(f"{n!r} (line {first_line[n]})" for n in clash)
        raise DataError(
            f"{table.path}: class names {where} differ only in case; fix the CSV, or give the "
            f"expected classes with --option classes=[...]"
        )
    rare = [n for n in found if counts[n] < RARE_CLASS]
    if rare:
        LOG.warning(
            "%s: class(es) with fewer than %d images: %s -- a typo? --option classes=[...] "
            "names the expected classes and refuses any other",
            table.path,
            RARE_CLASS,
            ", ".join(f"{n!r} ({counts[n]}, line {first_line[n]})" for n in rare),
        )
    return found


def _inside(root: str, table: CsvTable, paths: list[str]) -> list[str]:
    """Absolute normalised paths; DataError naming the row when one escapes ``root``, by its
    name or through a symbolic link (the check compares resolved paths)."""
    out = []
    real_root = os.path.realpath(root)
    for p, line in zip(paths, table.lines):
        if os.sep == "/":  # backslash separators: a CSV written on Windows
            p = p.replace("\\", "/")
        full = os.path.normpath(os.path.join(root, p))
        real = os.path.realpath(full)
        if not p or os.path.commonpath([real_root, real]) != real_root:
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
    label_columns: list[str] | str | None = None,
    class_column: str | None = None,
    classes: list[str] | str | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    channels: int = 3,
    task: str | None = None,
    uncertain: str | None = None,
    seed: int = 0,
) -> DatasetTable:
    """Read images listed in a CSV under ``root``.

    Labels come from either ``label_columns`` (one 0/1/blank column per class, blank = NaN =
    unknown; task ``multilabel``, or ``multiclass`` when every labelled row is one-hot) or one
    ``class_column`` (class names, sorted, one-hot; blank = unlabelled row of NaN; task
    ``multiclass``). Rows whose image is not on disk are counted in ``missing`` and left out.
    Lists may be YAML lists or comma-separated strings.

    Args:
        root: the image folder; image paths in the CSV are relative to it (absolute paths
            must lie inside it).
        csv: the CSV file, relative to ``root`` or absolute.
        group_column: patient ids (no patient crosses splits); rows without one, and all rows
            by default, are their own group.
        split_column: ``train``/``val``/``test`` per row; default: a grouped, class-stratified
            70/10/20 split by ``seed``.
        classes: with ``class_column``, the expected class names in order; a row naming
            another class is an error (default: the sorted names found; names that differ only
            in case are an error, classes with fewer than 3 images are reported).
        channels: 1 (grey-scale) or 3 (RGB).
        uncertain: what a ``-1`` label cell means (multi-label columns): ``ignore`` (NaN,
            masked in the loss), ``zeros`` or ``ones``; default: -1 is an error.
    """
    if (label_columns is None) == (class_column is None):
        raise ConfigError("csv dataset: give exactly one of label_columns or class_column")
    if classes is not None and class_column is None:
        raise ConfigError("csv dataset: option classes goes with class_column")
    if label_columns is not None:
        label_columns = _names(label_columns, "label_columns")
    check_choice("channels", channels, (1, 3))
    check_choice("task", task, (None, "multilabel", "multiclass"))
    check_choice("uncertain", uncertain, (None, *UNCERTAIN))
    if uncertain is not None and label_columns is None:
        raise ConfigError("csv dataset: option uncertain goes with label_columns")
    if class_column is not None and task == "multilabel":
        raise ConfigError(
            "csv dataset: class_column gives one class per image; use task multiclass"
        )
    root_s = os.path.abspath(Path(root).expanduser())
    table = CsvTable(Path(root_s) / csv)
    for c in [path_column, *(label_columns or []), class_column, group_column, split_column]:
        if c is not None:
            table.column(c)

    full = _inside(root_s, table, table.values(path_column))
    refuse_repeats(table, full, "image")
    on_disk = existing(full)
    rows = np.flatnonzero(on_disk)
    listed = table.values(path_column)
    absent = [f"line {table.lines[i]}: {listed[i]}" for i in np.flatnonzero(~on_disk)]
    report_missing("csv", absent, len(full), Path(root_s))
    require_images("csv", len(rows), Path(root_s))

    if label_columns is not None:
        classes = list(label_columns)
        cells = CELL
        if uncertain is not None:
            value = UNCERTAIN[uncertain]
            cells = CELL | {"-1": value, "-1.0": value}
        expected = "0, 1 or blank" + (", -1" if uncertain else " (-1: --option uncertain=...)")
        labels = cell_matrix(table, rows, classes, cells | dict.fromkeys(MISSING, np.nan), expected)
        if task == "multiclass":
            known = ~np.isnan(labels).any(axis=1)
            bad = np.flatnonzero(known & (labels.sum(axis=1) != 1))
            if len(bad):
                raise DataError(
                    f"{table.path}, line {table.lines[rows[bad[0]]]}: task multiclass needs "
                    f"exactly one 1 among {classes}"
                )
    else:
        names = np.asarray(_blank_missing(table.values(class_column)))[rows]
        classes = _class_names(
            table, rows, names, None if classes is None else _names(classes, "classes")
        )
        # dtype=str: an empty class list compared to the names is (N, 0), not a scalar
        labels = (names[:, None] == np.asarray(classes, dtype=str)[None, :]).astype(np.float32)
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
        if group_column is not None:
            _warn_groups_across_splits(table, group_column, groups, split)
        source = f"the CSV's {split_column} column"
    else:
        split = grouped_split(groups, labels, seed=seed)
        source = grouped_split_name(group_column or "image", seed)
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
        split_source=source,
    )


def _warn_groups_across_splits(
    table: CsvTable, group_column: str, groups: np.ndarray, split: np.ndarray
) -> None:
    """Warn when the CSV's own split puts one patient's images into several splits (a leak:
    the test split then holds patients the model was trained on)."""
    seen: dict[str, set[str]] = {}
    for group, part in zip(groups.tolist(), split.tolist()):
        seen.setdefault(group, set()).add(part)
    crossing = sorted(g for g, parts in seen.items() if len(parts) > 1)
    if crossing:
        LOG.warning(
            "%s: %d of %d %s values have images in more than one split (e.g. %s in %s): the "
            "split column lets patients cross splits; drop split_column for a grouped split",
            table.path,
            len(crossing),
            len(seen),
            group_column,
            crossing[0],
            "/".join(sorted(seen[crossing[0]])),
        )
