"""Faults made for real: a small tmpfs (a full disk), a user without write permission, damaged
files. Each fixture skips where this system cannot make its fault (not root, no ``mount``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from s2mts2.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
NOBODY = 65534  # the uid/gid the permission tests run as


@dataclass
class Outcome:
    """Exit code and standard error of one ``s2mts2`` command."""

    code: int
    err: str

    def failed_cleanly(self, code: int, *fragments: str) -> None:
        """Exit ``code``, no traceback, the last line ``s2mts2 ...: error: ...`` holding every
        fragment."""
        assert "Traceback" not in self.err, self.err
        last = self.err.strip().splitlines()[-1]
        assert self.code == code, self.err
        assert last.startswith("s2mts2 ") and ": error: " in last, self.err
        for fragment in fragments:
            assert fragment in last, last


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """run(*args): ``s2mts2 args`` in this process -> Outcome."""

    def run_main(*args: str | Path) -> Outcome:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return Outcome(code, capsys.readouterr().err)

    return run_main


def run_process(args: Sequence[str | Path], *, user: int | None = None, cwd: Path) -> Outcome:
    """``python -m s2mts2 args`` in a new process (as ``user`` when given) -> Outcome."""
    command = [sys.executable, "-m", "s2mts2", *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(SRC), "HOME": str(cwd), "MPLCONFIGDIR": str(cwd)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return Outcome(done.returncode, done.stderr)


@pytest.fixture(scope="session")
def as_nobody() -> int:
    """The uid of a user without write permission to root's folders; skips unless this runs as
    root with ``setpriv`` and that user can start this Python."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    probe = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        + [sys.executable, "-c", "import torch"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run {sys.executable}")
    return NOBODY


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted in tmp_path (a disk that fills up); skipped where mount fails."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` up to ``leave`` free bytes (whole pages)."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    assert shutil.disk_usage(disk).free <= max(leave, 0) + 4096


def temporaries(folder: Path) -> list[Path]:
    """Temporary files an atomic write would leave behind under ``folder``."""
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
