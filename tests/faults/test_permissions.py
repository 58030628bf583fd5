"""Folders the user may not write to, as a user other than root (root ignores permissions):
every command stops before its work with one line naming the folder (exit 1)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from infer.conftest import png_bytes, write_checkpoint

from .conftest import run_process


@dataclass
class Folders:
    """``locked``: readable by everyone, writable by root only, with an earlier result;
    ``work``: writable by everyone (the other user's working folder)."""

    locked: Path
    work: Path


@pytest.fixture
def folders() -> Iterator[Folders]:
    """Folders in the system's temporary folder, which the other user can reach (pytest's
    tmp_path lies in a folder only root may enter)."""
    base = Path(tempfile.mkdtemp(prefix="s2mts2-faults-"))
    try:
        base.chmod(0o755)
        made = Folders(base / "locked", base / "work")
        made.locked.mkdir(mode=0o755)
        made.work.mkdir()
        made.work.chmod(0o777)
        (made.locked / "pred.csv").write_text("earlier results\n")
        write_checkpoint(made.locked / "best.pt", "multiclass", 1, ("a", "b", "c")).chmod(0o644)
        yield made
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "synthetic", "--out", "{locked}/p"],
        ["pretrain", "--config", "tiny", "--out", "{locked}/run"],
        ["finetune", "--config", "tiny", "--out", "{locked}/run"],
        ["evaluate", "{ckpt}"],  # eval-test/ next to the checkpoint
        ["compare", "{ckpt}", "{ckpt}", "--out", "{locked}/compare"],
        ["predict", "{ckpt}", "{ckpt}", "--out", "{locked}/pred.csv"],
        ["predict", "{ckpt}", "{ckpt}", "--out", "{work}/p.csv", "--cam", "{locked}/cams"],
        ["export", "{ckpt}", "--onnx", "{locked}/model.onnx"],
        ["demo", "--out", "{locked}/demo"],
    ],
    ids=lambda argv: "-".join(a for a in argv[:5] if not a.startswith("{"))[:40],
)
def test_an_unwritable_folder_stops_every_command_at_once(as_nobody, folders, argv):
    ckpt = folders.locked / "best.pt"
    args = [a.format(locked=folders.locked, ckpt=ckpt, work=folders.work) for a in argv]
    result = run_process(args, user=as_nobody, cwd=folders.work)
    result.failed_cleanly(1, f"{folders.locked}", "Permission denied")
    assert (folders.locked / "pred.csv").read_text() == "earlier results\n"


def test_inputs_in_a_locked_folder_are_read(as_nobody, folders):
    """Only outputs need write permission: a locked folder of inputs predicts."""
    (folders.locked / "scan.png").write_bytes(png_bytes())
    (folders.locked / "scan.png").chmod(0o644)
    argv = ["predict", folders.locked / "best.pt", folders.locked, "--out", "p.csv"]
    result = run_process(argv, user=as_nobody, cwd=folders.work)
    assert result.code == 0, result.err
    assert (folders.work / "p.csv").read_text().count("\n") == 2
