"""Batched forward passes over cache rows (evaluation, kNN monitor)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from s2mts2.engine.runtime import Precision


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
