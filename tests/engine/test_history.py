"""Per-epoch history: metrics.csv holds every row with the union of their columns."""

import csv
import sys
import types

import pytest

import s2mts2.engine.history as history_mod
from s2mts2.engine.history import History, RunClock, check_tensorboard
from s2mts2.errors import ConfigError


def test_metrics_csv_keeps_every_row_and_column_and_copies_the_resumed_rows(tmp_path):
    resumed = [{"epoch": 0, "knn": 0.5}]  # rows restored from a checkpoint
    history = History(tmp_path, resumed)
    history.add({"epoch": 1, "loss": 2.0})
    assert resumed == [{"epoch": 0, "knn": 0.5}]  # the checkpoint's list is left as it was
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "0", "knn": "0.5", "loss": ""},
        {"epoch": "1", "knn": "", "loss": "2.0"},
    ]
    assert history.rows == [{"epoch": 0, "knn": 0.5}, {"epoch": 1, "loss": 2.0}]


def test_tensorboard_is_written_only_when_asked_for_and_installed(tmp_path, monkeypatch):
    """Absent package: a clear error when asked for, nothing otherwise; present: the scalars."""
    monkeypatch.setattr(history_mod.importlib.util, "find_spec", lambda name: None)
    History(tmp_path, tensorboard=False).add({"epoch": 1, "loss": 2.0})
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ConfigError, match=r"tensorboard: true .*pip install -e '\.\[tb\]'"):
        History(tmp_path, tensorboard=True)
    check_tensorboard(False)  # not asked for: no check

    written = []

    class Writer:  # torch.utils.tensorboard.SummaryWriter's part History uses
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            written.append("flush")

    monkeypatch.setattr(history_mod.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer)
    )
    History(tmp_path, tensorboard=True).add({"epoch": 3, "loss": 0.5, "note": "x"})
    assert written == [("dir", str(tmp_path / "tensorboard")), ("loss", 0.5, 3), "flush"]


def test_the_run_clock_projects_the_remaining_epochs(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(history_mod.time, "perf_counter", lambda: now[0])
    clock = RunClock(first_epoch=2, epochs=10)  # resumed after 2 epochs
    now[0] += 90  # one epoch in 90 s: 7 left
    assert clock.left(3) == "10m30s left"
    now[0] += 90 * 6
    assert clock.left(9) == "1m30s left"
    assert clock.left(10) == "run complete"
    assert RunClock(0, 200).left(1).endswith("left")
    assert history_mod._duration(45) == "45s" and history_mod._duration(7500) == "2h05m"
