"""What inference needs besides a stage-2 network's weights: class names, task and preprocessing.

Read from a checkpoint's ``meta`` or from an exported model's card (``s2mts2 export``); checked
field by field, so a damaged or edited file fails with a message that names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from s2mts2.data.augment import BatchAugment
from s2mts2.engine.builders import build_eval_transform
from s2mts2.errors import DataError


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs besides the weights: class names, task and preprocessing.

    ``task``: ``multilabel`` (sigmoid per class) or ``multiclass`` (softmax). The network input is
    float32 (B, channels, size, size): the image squashed to ``size`` (bilinear), scaled to [0, 1],
    then ``(x - mean) / std`` per channel.
    """

    classes: list[str]
    task: str
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str | Path) -> ModelInfo:
        """Read the fields from a checkpoint's ``meta`` or a model card; ``source`` names it."""
        missing = [
            name
            for name in ("classes", "task", "channels", "size", "mean", "std")
            if name not in values
        ]
        if missing:
            raise DataError(f"{source}: no {', '.join(missing)} entry: not an s2mts2 model")
        classes, channels, size = values["classes"], values["channels"], values["size"]
        mean, std = values["mean"], values["std"]
        problems = []
        if not (
            isinstance(classes, (list, tuple))
            and classes
            and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)
        ):
            problems.append(f"classes {classes!r} (a list of distinct names)")
        if values["task"] not in ("multilabel", "multiclass"):
            problems.append(f"task {values['task']!r} (multilabel or multiclass)")
        if channels not in (1, 3) or isinstance(channels, bool):
            problems.append(f"channels {channels!r} (1 or 3)")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
            problems.append(f"size {size!r} (pixels, a positive whole number)")
        for name, stats in (("mean", mean), ("std", std)):
            if not (
                isinstance(stats, (list, tuple))
                and (channels not in (1, 3) or len(stats) == channels)
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
                and (name == "mean" or all(v > 0 for v in stats))
            ):
                above = ", above 0" if name == "std" else ""
                problems.append(f"{name} {stats!r} (one finite number per channel{above})")
        if problems:
            raise DataError(f"{source}: damaged or edited: {'; '.join(problems)}")
        return cls(
            classes=list(classes),
            task=str(values["task"]),
            channels=int(channels),
            size=size,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def transform(self) -> BatchAugment:
        """uint8 (B, channels, size, size) -> normalised float32 (B, channels, size, size)."""
        config = build_eval_transform(self.channels, self.size).config
        return BatchAugment(replace(config, mean=self.mean, std=self.std))
