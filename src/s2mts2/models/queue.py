"""FIFO queue of negative keys for the contrastive loss, identical on every DDP rank.

Each entry remembers which training image it came from, so that a query never meets its own
image's earlier key as a negative (:meth:`NegativeQueue.own_entries`): with K close to the number
of training images N, most queries would otherwise be pushed away from themselves.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from s2mts2.runtime.distributed import all_gather_cat


class NegativeQueue(nn.Module):
    """K negative keys of dimension D, overwritten oldest-first.

    Buffers (saved in ``state_dict()``, moved by ``.to()``): ``queue`` (K, D), initialised with
    random L2-normalised vectors from the global torch RNG; ``ids`` (K,) long, the training image
    (table row) of each entry, −1 for the initial random entries; and ``ptr`` (long scalar), the
    row the next key goes to.

    Example:
        >>> queue = NegativeQueue(size=10, dim=4)
        >>> queue.enqueue(F.normalize(torch.randn(4, 4), dim=1), torch.arange(4))
        >>> int(queue.ptr), queue.negatives().shape
        (4, torch.Size([10, 4]))
        >>> queue.own_entries(torch.tensor([2, 7])).sum(dim=1).tolist()
        [1, 0]
    """

    queue: torch.Tensor
    ids: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_pre_hook(_entries_of_unknown_images)

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def negatives(self) -> torch.Tensor:
        """The (K, D) queue itself, not a copy.

        ``enqueue`` writes into it in place, so call it after ``backward()`` of a loss that used
        these negatives (otherwise autograd reports an in-place modification), or clone them.
        """
        return self.queue

    def own_entries(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, K) bool: entry j holds a key of query i's own image (``ids`` (N,) table rows)."""
        return ids.to(self.ids.device)[:, None] == self.ids[None, :]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Append (B, D) keys of the images ``ids`` (B,), wrapping around the end; under DDP all
        ranks' keys and ids, in rank order.

        Every rank passes its slice of the global batch (the same B everywhere); the (world·B, D)
        gathered keys are the global batch's keys in single-process order, so every rank writes
        the same rows. Equivalent to writing the keys one by one at ``ptr``: when more than K
        arrive only the last K remain. ``ptr`` becomes (ptr + world·B) mod K.
        """
        keys = all_gather_cat(keys.detach()).to(self.queue.dtype)
        ids = all_gather_cat(ids.to(self.ids.device, torch.long))
        if keys.ndim != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys must be (B, {self.queue.shape[1]}), got {tuple(keys.shape)}")
        if ids.shape != keys.shape[:1]:
            raise ValueError(f"ids must be ({keys.shape[0]},), got {tuple(ids.shape)}")
        size, count = self.size, keys.shape[0]
        kept = keys[-size:]
        # row indices computed on the device: no host synchronisation inside the training step
        offsets = torch.arange(count - kept.shape[0], count, device=self.ptr.device)
        rows = (self.ptr + offsets) % size
        self.queue.index_copy_(0, rows.to(self.queue.device), kept)
        self.ids.index_copy_(0, rows.to(self.ids.device), ids[-size:])
        self.ptr.add_(count).remainder_(size)


def _entries_of_unknown_images(
    module: nn.Module, state: dict, prefix: str, *args: object, **kwargs: object
) -> None:
    """A state saved before entries remembered their image loads with every image unknown."""
    if prefix + "queue" in state and prefix + "ids" not in state:
        state[prefix + "ids"] = torch.full(
            (state[prefix + "queue"].shape[0],), -1, dtype=torch.long
        )
