"""Helpers shared by the adapters: CSV reading, image indexing, option checks, missing reports."""

from __future__ import annotations

import csv
import gzip
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from s2mts2.errors import ConfigError, DataError

LOG = logging.getLogger("s2mts2")
# what an uncertain (-1) label becomes: NaN (masked in the loss), 0 or 1
UNCERTAIN = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}


def check_choice(option: str, value: object, choices: Sequence[object]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices`` (``None``: the option unset)."""
    if value not in choices:
        named = [c for c in choices if c is not None]
        raise ConfigError(f"option {option} must be one of {named}, got {value!r}")


def find_file(root: Path, names: Iterable[str]) -> Path | None:
    """The first of ``root/name`` that exists, or None."""
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


class CsvTable:
    """A CSV file (plain or ``.gz``) read into memory, with the file line of every row.

    Attributes:
        path: the file.
        header: column names.
        rows: data rows (lists of str).
        lines: 1-based file line where each row starts (the header is line 1).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
                first = f.readline()
                f.seek(0)
                # a spreadsheet saved with ';' or tab separators: read it as such
                delimiter = next((d for d in ",;\t" if d in first), ",")
                reader = csv.reader(f, delimiter=delimiter)
                self.header = [h.strip() for h in next(reader, [])]
                self.rows: list[list[str]] = []
                self.lines: list[int] = []
                start = reader.line_num + 1
                for row in reader:
                    if row:
                        self.rows.append(row)
                        self.lines.append(start)
                    start = reader.line_num + 1
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e
        except (OSError, csv.Error) as e:
            raise DataError(f"{path}: cannot read CSV ({e})") from e
        if not self.header:
            raise DataError(f"{path}: empty CSV file")

    def column(self, name: str) -> int:
        """Index of column ``name``; DataError naming the column, the file and the columns found."""
        if name not in self.header:
            found = ", ".join(h for h in self.header if h)
            raise DataError(f"{self.path}: column {name!r} not found; columns are: {found}")
        return self.header.index(name)

    def values(self, name: str) -> list[str]:
        """(rows,) stripped cell values of column ``name`` ("" where a row is short)."""
        j = self.column(name)
        return [r[j].strip() if j < len(r) else "" for r in self.rows]


def refuse_repeats(table: CsvTable, keys: Sequence[str], what: str) -> None:
    """DataError naming both lines when a key (an image) is listed twice in ``table``: it could
    count twice, land in two splits, or take the label of whichever line comes last."""
    first: dict[str, int] = {}
    for key, line in zip(keys, table.lines):
        if key in first:
            raise DataError(
                f"{table.path}, line {line}: {what} {key} is listed again (first on line "
                f"{first[key]}); list each once"
            )
        first[key] = line


def cell_matrix(
    table: CsvTable, rows: np.ndarray, columns: list[str], values: dict[str, float], expected: str
) -> np.ndarray:
    """(len(rows), len(columns)) float32 of the cells mapped through ``values`` (a cell that is
    not a key is looked up in lower case too); DataError naming the line, the column and the cell
    for anything else (``expected`` describes the values)."""
    out = np.empty((len(rows), len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        col = table.values(c)
        for k, i in enumerate(rows):
            v = values.get(col[i], values.get(col[i].casefold()))
            if v is None:
                raise DataError(
                    f"{table.path}, line {table.lines[i]}: column {c!r} has {col[i]!r}, "
                    f"expected {expected}"
                )
            out[k, j] = v
    return out


def index_files(dirs: Iterable[Path]) -> dict[str, str]:
    """Map file name -> absolute path of the regular files directly in ``dirs`` (first dir wins).

    One ``os.scandir`` per folder; folders that do not exist are skipped.
    """
    found: dict[str, str] = {}
    for d in dirs:
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name not in found and e.is_file():
                        found[e.name] = os.path.abspath(e.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def existing(paths: Sequence[str]) -> np.ndarray:
    """(N,) bool: which of the absolute ``paths`` are files.

    One ``os.scandir`` per folder that exists; a folder whose parent listing lacks it is known
    to be absent without a system call (fast for large, mostly missing trees).
    """
    cache: dict[str, tuple[set[str], set[str]] | None] = {}

    def listing(d: str) -> tuple[set[str], set[str]] | None:
        """(file names, folder names) in ``d``, or None when ``d`` is not a folder."""
        if d in cache:
            return cache[d]
        up, name = os.path.split(d)
        parent = listing(up) if up and up != d else None
        if parent is not None and name not in parent[1]:
            cache[d] = None
            return None
        try:
            with os.scandir(d) as it:
                entries = list(it)
            files = {e.name for e in entries if e.is_file()}
            cache[d] = (files, {e.name for e in entries if e.is_dir()})
        except OSError:
            cache[d] = None
        return cache[d]

    out = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        parent, name = os.path.split(p)
        found = listing(parent)
        out[i] = found is not None and name in found[0]
    return out


def report_missing(dataset: str, missing: Sequence[str], total: int, where: Path) -> None:
    """One warning line on the ``s2mts2`` logger when listed images are not on disk, naming the
    first few (``missing``: the listed names or paths)."""
    if missing:
        shown = ", ".join(str(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
        LOG.warning(
            "%s: %d of %d listed images not found under %s; left out (%s)",
            dataset,
            len(missing),
            total,
            where,
            shown,
        )


def require_images(dataset: str, n_found: int, where: Path) -> None:
    """DataError when not a single listed image was found."""
    if n_found == 0:
        raise DataError(f"{dataset}: none of the listed images was found under {where}")
