"""Batched forward passes over cache rows: class probabilities (validation, evaluate) and
embeddings (kNN monitor); no training loop."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import build_eval_transform
from s2mts2.losses.consistency import probabilities
from s2mts2.runtime.device import Precision
from s2mts2.runtime.distributed import all_gather_rows, shard


@torch.no_grad()
def forward_rows(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    rows: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    precision: Precision,
    batch_size: int = 256,
) -> torch.Tensor:
    """Apply ``fn(transform(uint8 batch))`` to ``images[rows]``: returns (len(rows), D) float32 CPU.

    ``images`` is the (N, C, H, W) uint8 cache; ``transform`` maps a uint8 batch on the device to
    normalised float input (the evaluation transform); ``fn`` runs in ``precision``.
    """
    outs = []
    for start in range(0, len(rows), batch_size):
        chunk = np.asarray(rows[start : start + batch_size])
        order = np.argsort(chunk, kind="stable")
        data = np.empty((len(chunk), *images.shape[1:]), dtype=np.uint8)
        data[order] = images[chunk[order]]
        x = transform(torch.from_numpy(data).to(device, non_blocking=True))
        with precision.autocast():
            outs.append(fn(precision.layout(x)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def predict(
    net: torch.nn.Module,
    data: PreparedData,
    idx: np.ndarray,
    size: int,
    device: torch.device,
    precision: Precision,
    task: str,
    shift: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """(len(idx), C) probabilities of table rows ``idx`` (network switched to eval mode, forward
    passes in ``precision``); ``shift`` maps each (B, C, H, W) uint8 batch of the cache before
    the evaluation transform (e.g. an ``s2mts2.eval.shift.ImageShift``).

    Under DDP every rank must call it: each forwards its shard of ``idx``, all get every row.
    """
    was_training = net.training
    net.eval()
    evaluation = build_eval_transform(data.table.channels, size)
    transform = evaluation if shift is None else lambda images: evaluation(shift(images))
    logits = all_gather_rows(
        forward_rows(net, data.images(), data.rows[shard(idx)], transform, device, precision)
    )
    net.train(was_training)
    return probabilities(logits, task).numpy()
