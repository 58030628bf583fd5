"""Per-epoch metrics of a run: kept in the checkpoint, written to ``metrics.csv`` (and TensorBoard)."""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from typing import Any

from s2mts2.files import write_text_atomic


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
