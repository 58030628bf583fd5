"""FIFO queue of negative keys for the contrastive loss, identical on every DDP rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


def _gather_from_ranks(keys: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, D) keys of all ranks in rank order -> (world·B, D); identity without DDP.

    Every rank must pass the same B (use drop_last batches).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


class NegativeQueue(nn.Module):
    """K negative keys of dimension D, overwritten oldest-first.

    Buffers (saved in ``state_dict()``, moved by ``.to()``): ``queue`` (K, D), initialised with
    random L2-normalised vectors from the global torch RNG, and ``ptr`` (long scalar), the row
    the next key goes to.

    Example:
        >>> queue = NegativeQueue(size=10, dim=4)
        >>> queue.enqueue(F.normalize(torch.randn(4, 4), dim=1))
        >>> int(queue.ptr), queue.negatives().shape
        (4, torch.Size([10, 4]))
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def negatives(self) -> torch.Tensor:
        """The (K, D) queue itself, not a copy.

        ``enqueue`` writes into it in place, so call it after ``backward()`` of a loss that used
        these negatives (otherwise autograd reports an in-place modification), or clone them.
        """
        return self.queue

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Append (B, D) keys (gathered from all DDP ranks first), wrapping around the end.

        Equivalent to writing the keys one by one at ``ptr``: when B > K only the last K remain.
        ``ptr`` becomes (ptr + B) mod K.
        """
        keys = _gather_from_ranks(keys.detach()).to(self.queue.dtype)
        if keys.ndim != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys must be (B, {self.queue.shape[1]}), got {tuple(keys.shape)}")
        size, count = self.size, keys.shape[0]
        kept = keys[-size:]
        start = (int(self.ptr) + count - kept.shape[0]) % size
        first = min(kept.shape[0], size - start)
        self.queue[start : start + first] = kept[:first]
        self.queue[: kept.shape[0] - first] = kept[first:]
        self.ptr.fill_((start + kept.shape[0]) % size)
