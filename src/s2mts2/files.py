"""Files written atomically and PyTorch files read safely.

Atomic writes: whoever reads the file, or a crash in the middle, sees the old content or the new,
never a part. Checkpoints, the image cache's manifest, labelled lists, tables, ``metrics.csv``,
run information, evaluation and bench results, reports and JSON predictions are all written this
way. PyTorch files (checkpoints, ImageNet weights) are read with ``weights_only=True``: a file
that would execute code is refused, and every failure names the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from s2mts2.errors import DataError

if TYPE_CHECKING:
    import torch


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


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a DataError naming ``path`` when it fails."""
    import torch  # here: the image cache's decode workers import this module and stay light

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # no torch zip, no pickle
            raise DataError(
                f"{path}: not a PyTorch checkpoint (an image, a text file, ...?)"
            ) from e
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line), lines[-1])
        raise DataError(
            f"{path}: refused to load: the file contains objects other than tensors and plain "
            f"values (it could execute code when unpickled). Only load checkpoints you trust "
            f"from s2mts2. Detail: {detail}"
        ) from e
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as e:
        raise DataError(f"{path}: not a readable PyTorch checkpoint: {e!r}") from e
