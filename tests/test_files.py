"""Atomic writes: the temporary file is fsync'ed before the rename, the folder after it, and
every file a run must not lose half of goes through them."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from s2mts2.data.cache import MANIFEST_NAME, build_cache
from s2mts2.data.splits import save_labelled
from s2mts2.data.table import DatasetTable
from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.engine.history import History
from s2mts2.files import write_atomic, write_text_atomic

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="names fsync'ed descriptors through /proc/self/fd"
)


@pytest.fixture
def events(monkeypatch) -> list[tuple[str, ...]]:
    """[("fsync", path) | ("replace", src, dst), ...] in call order, for the whole test."""
    seen: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        seen.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def assert_written_atomically(events: list[tuple[str, ...]], path: Path) -> None:
    """``path`` came from a rename of a sibling temporary file fsync'ed before it, and the folder
    was fsync'ed after it."""
    path = path.resolve()
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(path)]
    assert renames, f"{path.name} was not renamed into place"
    i = renames[-1]
    tmp = Path(events[i][1])
    assert tmp != path and tmp.parent == path.parent
    assert ("fsync", str(tmp)) in events[:i], f"{tmp.name} not fsync'ed before the rename"
    assert ("fsync", str(path.parent)) in events[i + 1 :], "folder not fsync'ed after the rename"


def test_write_atomic_orders_fsync_rename_fsync(tmp_path, events):
    write_text_atomic(tmp_path / "a.txt", "x\r\nü")
    assert (tmp_path / "a.txt").read_bytes() == "x\r\nü".encode()  # no newline translation
    assert_written_atomically(events, tmp_path / "a.txt")
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, events):
    write_text_atomic(tmp_path / "a.txt", "old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def _table() -> DatasetTable:
    return DatasetTable(
        name="t",
        paths=[f"/img/{i}.png" for i in range(4)],
        labels=np.eye(2, dtype=np.float32)[[0, 1, 0, 1]],
        classes=["a", "b"],
        task="multiclass",
        channels=1,
        groups=np.array(["p0", "p1", "p2", "p3"]),
        split=np.array(["train"] * 4),
    )


def _image(folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "0.png")
    return [str(folder / "0.png")]


WRITERS = {
    "checkpoint": (lambda d: save_checkpoint({"w": torch.ones(2)}, d / "last.pt"), "last.pt"),
    "cache manifest": (
        lambda d: build_cache(_image(d / "img"), d, size=8, channels=1, workers=1, progress=False),
        MANIFEST_NAME,
    ),
    "labelled list": (lambda d: save_labelled(d / "l.txt", _table(), np.array([2, 0])), "l.txt"),
    "table.csv": (lambda d: _table().save(d), "table.csv"),
    "table.json": (lambda d: _table().save(d), "table.json"),
    "metrics.csv": (lambda d: History(d).add({"epoch": 0, "loss": 1.0}), "metrics.csv"),
}


@pytest.mark.parametrize("name", WRITERS)
def test_files_a_run_relies_on_are_written_atomically(tmp_path, events, name):
    write, file_name = WRITERS[name]
    write(tmp_path)
    assert_written_atomically(events, tmp_path / file_name)
