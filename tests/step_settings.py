"""Small stage-1/stage-2 step settings for the step tests (the step builders of ``engine.builders``)."""

import dataclasses

import numpy as np

from s2mts2.bench import BenchData, BenchSettings
from s2mts2.runtime.runner import StepRunner

SETTINGS = BenchSettings(device="cpu", model="resnet18", size=32, batch_size=8, queue_size=64)
# what mean_teacher_step reads of the data: 1 channel, 3 multi-label classes, no images
DATA = BenchData(
    paths=[],
    images=np.zeros((0, 1, 32, 32), np.uint8),
    rows=np.zeros(0, np.int64),
    train=np.zeros(0, np.int64),
    labels=np.zeros((1, 3), np.float32),
    task="multilabel",
    channels=1,
)


def with_runner(step, **options):
    """``step`` (a dataclass step) with a new :class:`StepRunner` of ``options`` (its keywords;
    a stage-1 step's ``views`` and split batch norm, G = 1 unless given, as the builder sets)."""
    cfg = getattr(step, "cfg", None)
    if cfg is not None:
        options = {"views": cfg.views, "bn_groups": 1, **options}
    runner = StepRunner(step.student, step.teacher, step.precision, **options)
    return dataclasses.replace(step, runner=runner)
