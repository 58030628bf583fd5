"""torch.distributed helpers: rank, world size, rank-0 gating (single process: rank 0 of 1)."""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0
