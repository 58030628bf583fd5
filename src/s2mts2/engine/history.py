"""Per-epoch metrics of a run: kept in the checkpoint, written to ``metrics.csv`` (and, when
asked for, TensorBoard), and the whole run's remaining time."""

from __future__ import annotations

import csv
import importlib.util
import io
import time
from pathlib import Path
from typing import Any

from s2mts2.errors import ConfigError
from s2mts2.files import write_text_atomic

TENSORBOARD_DIR = "tensorboard"


def check_tensorboard(enabled: bool) -> None:
    """``tensorboard: true`` needs the tensorboard package: without it, stop before training with
    a message that says how to install it."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard: true (--tensorboard) needs the tensorboard package, which is not "
            "installed: pip install -e '.[tb]' (or pip install tensorboard), or leave it off"
        )


class History:
    """Rows of per-epoch metrics. ``add`` rewrites ``metrics.csv`` atomically and, with
    ``tensorboard``, writes each numeric value as a scalar to ``OUT/tensorboard``."""

    def __init__(
        self, out_dir: Path, rows: list[dict[str, Any]] | None = None, tensorboard: bool = False
    ) -> None:
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._tb = None
        if tensorboard:
            check_tensorboard(True)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / TENSORBOARD_DIR))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=columns)
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())
        if self._tb is not None:
            step = int(row.get("epoch", len(self.rows)))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()


class RunClock:
    """The time left of a run: its remaining epochs at the mean pace of those this process
    trained (validation and monitoring included)."""

    def __init__(self, first_epoch: int, epochs: int) -> None:
        self.first, self.epochs = first_epoch, epochs
        self.start = time.perf_counter()

    def left(self, done: int) -> str:
        """``12m30s left`` after ``done`` of the run's epochs; ``run complete`` after the last."""
        if done >= self.epochs:
            return "run complete"
        per_epoch = (time.perf_counter() - self.start) / max(1, done - self.first)
        return f"{_duration(per_epoch * (self.epochs - done))} left"


def _duration(seconds: float) -> str:
    """``45s``, ``12m30s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
