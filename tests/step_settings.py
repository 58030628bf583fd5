"""Small stage-1/stage-2 step settings for the step tests (``engine.bench``'s builders)."""

import numpy as np

from s2mts2.engine.bench import BenchData, BenchSettings

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
