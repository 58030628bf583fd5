"""FIFO queue of negative keys for the contrastive loss, identical on every DDP rank."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from s2mts2.engine.distributed import all_gather_cat


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
        """Append (B, D) keys, wrapping around the end; under DDP all ranks' keys, in rank order.

        Every rank passes its slice of the global batch (the same B everywhere); the (world·B, D)
        gathered keys are the global batch's keys in single-process order, so every rank writes
        the same rows. Equivalent to writing the keys one by one at ``ptr``: when more than K
        arrive only the last K remain. ``ptr`` becomes (ptr + world·B) mod K.
        """
        keys = all_gather_cat(keys.detach()).to(self.queue.dtype)
        if keys.ndim != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys must be (B, {self.queue.shape[1]}), got {tuple(keys.shape)}")
        size, count = self.size, keys.shape[0]
        kept = keys[-size:]
        # row indices computed on the device: no host synchronisation inside the training step
        offsets = torch.arange(count - kept.shape[0], count, device=self.ptr.device)
        rows = (self.ptr + offsets) % size
        self.queue.index_copy_(0, rows.to(self.queue.device), kept)
        self.ptr.add_(count).remainder_(size)
