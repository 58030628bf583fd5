"""Atomic file writes: whoever reads the file, or a crash in the middle, sees the old content or
the new, never a part. Checkpoints, the image cache's manifest, labelled lists, tables,
``metrics.csv``, run information, evaluation and bench results, reports and JSON predictions
are all written this way."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def ordinary_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` with ``write(f)``: to a temporary file in the same folder, fsync'ed, renamed
    over ``path``, then the folder fsync'ed so that the rename itself survives a power cut.

    The file gets the permissions of an ordinary new file, not the owner-only mode of the
    temporary file, so a shared run folder stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.chmod(tmp, ordinary_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text (written as is: no newline translation)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
