"""Files written atomically, checked for writing up front, and PyTorch files read safely.

Atomic writes: whoever reads the file, or a crash in the middle, sees the old content or the new,
never a part. Every file a user keeps goes through :func:`atomic_path` (or the helpers built on
it): checkpoints, the image cache, labelled lists, tables, ``metrics.csv``, run information,
evaluation and bench results, reports, plots, predictions, Grad-CAM overlays and exports. A
failed write (a full disk, a missing permission) leaves the earlier file as it was and raises an
``OSError`` naming the file; temporary files of writers that were killed are removed by the next
write of the same file. PyTorch files (checkpoints, ImageNet weights) are read with
``weights_only=True``: a file that would execute code is refused, and every failure names the
file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from s2mts2.errors import DataError, S2MTS2Error

if TYPE_CHECKING:
    import torch

_TEMP_SUFFIX = ".tmp"


def ordinary_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _owner() -> str:
    """``HOST-PID`` of this process, written into its temporary file names."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` (``.NAME.HOST-PID.*.tmp``) left by writers on this
    host that no longer run (killed mid-write); returns them. Live writers' files stay."""
    prefix, host = f".{path.name}.", socket.gethostname()
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{_TEMP_SUFFIX}"):
        owner = tmp.name[len(prefix) : -len(_TEMP_SUFFIX)].rpartition(".")[0]
        tmp_host, _, pid = owner.rpartition("-")
        if tmp_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _os_error(exc: BaseException, path: Path) -> OSError | None:
    """The ``OSError`` behind ``exc`` (itself, or the one a library raised it from, such as
    ``torch.save``'s RuntimeError on a full disk), naming ``path`` where it named ``path``'s
    temporary file or nothing; None when there is none."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    named = None if seen.filename is None else str(seen.filename)
    if named is not None and not named.startswith(str(path.parent / f".{path.name}.")):
        return seen
    if seen.errno is None:
        return OSError(f"{path}: {seen}")
    return OSError(seen.errno, seen.strerror or os.strerror(seen.errno), str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary file beside ``path`` for a writer that takes a path (savefig, PIL,
    an exporter); when the block ends without an error the file is fsync'ed, renamed over
    ``path`` and the folder fsync'ed, so that the rename itself survives a power cut.

    On any error the temporary file is removed, ``path`` keeps its earlier content, and an
    ``OSError`` behind the error is raised naming ``path``. The file gets the permissions of an
    ordinary new file, not the owner-only mode of a temporary file, so a shared run folder stays
    readable. Writers that pick a format by the file name must be told the format.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{_owner()}.", suffix=_TEMP_SUFFIX, dir=path.parent
        )
        os.close(fd)
        tmp = Path(name)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, ordinary_file_mode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        os_error = _os_error(e, path)
        if os_error is None or os_error is e or isinstance(e, KeyboardInterrupt):
            raise
        raise os_error from e
    if hasattr(os, "O_DIRECTORY"):  # POSIX
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically (:func:`atomic_path`) with ``write(f)`` on a binary file
    (``torch.save``, ``np.save``, ``savefig(f, format=...)``, ``image.save(f, format=...)``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """``write_atomic`` for bytes."""
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text (written as is: no newline translation)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def check_writable(path: str | Path, *, folder: bool) -> None:
    """Fail now, not after hours of work, when ``path`` cannot be written: a folder (``folder``)
    or a file. Nothing is created: the nearest existing folder on the way must take a new file.
    A path of the wrong kind is an S2MTS2Error; a folder where no file can be created
    (permissions, a read-only or full file system) raises the ``OSError`` naming it."""
    path = Path(path).absolute()
    if folder and path.exists() and not path.is_dir():
        raise S2MTS2Error(f"{path} is a file, not a folder: give a folder")
    if not folder and path.is_dir():
        raise S2MTS2Error(f"{path} is a folder: give a file name")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise S2MTS2Error(f"{existing} is a file, so {path} cannot be written")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(existing)) from e
    if shutil.disk_usage(existing).free == 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(existing))


def describe_os_error(e: OSError) -> str:
    """One line for a file system error: what failed, on which path."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"


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
