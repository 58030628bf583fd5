"""Per-epoch metrics of a run: kept in the checkpoint, written to ``metrics.csv`` (and TensorBoard)."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any


class History:
    """Rows of per-epoch metrics. ``add`` rewrites ``metrics.csv`` atomically."""

    def __init__(self, out_dir: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)
        if self._tb is not None:
            step = int(row.get("epoch", len(self.rows)))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
