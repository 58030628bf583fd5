"""The two label tasks of a dataset, shared by the data tables, the losses and the metrics."""

from __future__ import annotations

from typing import Literal

Task = Literal["multilabel", "multiclass"]
