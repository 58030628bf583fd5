"""Batches of uint8 images from the cache, in a seeded order, prefetched on a background thread.

The order is a pure function of (seed, step): the stream is the concatenation of seeded random
permutations of the rows (one per pass), and step ``s`` takes the next ``batch_size`` entries.
So a resumed run that starts at global step ``s`` sees exactly the batches it would have seen,
a set smaller than the batch still fills every batch, and under ``torch.distributed`` rank ``r``
of ``W`` takes slice ``r`` of the global batch of ``batch_size * W`` entries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    """images: (B, C, H, W) uint8 on the device; rows: (B,) int64 stream (table) rows, CPU;
    ids: the same rows as a (B,) int64 tensor on the device (copied without a host sync)."""

    images: torch.Tensor
    rows: np.ndarray
    ids: torch.Tensor


class IndexStream:
    """Seeded infinite sequence of row indices, cut into batches per global step."""

    def __init__(
        self, rows: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(rows) == 0:
            raise ValueError("IndexStream needs at least one row")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def _pass(self, k: int) -> np.ndarray:
        if k not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            self._perm_cache[k] = self.rows[torch.randperm(len(self.rows), generator=g).numpy()]
        return self._perm_cache[k]

    def batch_rows(self, step: int) -> np.ndarray:
        """(batch_size,) rows of this rank at global ``step``."""
        n = len(self.rows)
        global_b = self.batch_size * self.world_size
        start = step * global_b + self.rank * self.batch_size
        stop = start + self.batch_size
        parts = []
        pos = start
        while pos < stop:
            k, off = divmod(pos, n)
            take = min(stop - pos, n - off)
            parts.append(self._pass(k)[off : off + take])
            pos += take
        return np.concatenate(parts)

    def passes_to_steps(self, passes: float = 1.0) -> int:
        """Steps that cover ``passes`` times the rows with the global batch (at least 1)."""
        return max(1, int(passes * len(self.rows)) // (self.batch_size * self.world_size))


class BatchLoader:
    """Fetch the batches of an :class:`IndexStream` from a uint8 store, one thread ahead.

    ``images`` is the cache array (N, C, H, W) uint8 (memmap or in memory); ``cache_rows`` maps
    the stream's rows (table rows) to rows of ``images`` (None: the same). Batches for steps
    ``[start, stop)`` are read (rows sorted for sequential I/O) straight into page-locked
    memory when the device is CUDA, and copied with ``non_blocking``.
    """

    def __init__(
        self,
        images: np.ndarray,
        stream: IndexStream,
        device: torch.device,
        cache_rows: np.ndarray | None = None,
        prefetch: int = 3,
    ) -> None:
        self.images = images
        self.stream = stream
        self.cache_rows = cache_rows
        self.device = device
        self.prefetch = prefetch
        self.pin = device.type == "cuda"

    def fetch(self, rows: np.ndarray) -> torch.Tensor:
        """(B, C, H, W) uint8 CPU tensor of the given stream rows, in the given order."""
        if self.cache_rows is not None:
            rows = self.cache_rows[rows]
        order = np.argsort(rows, kind="stable")
        out = torch.empty(
            (len(rows), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin
        )
        out.numpy()[order] = self.images[rows[order]]
        return out

    def steps(self, start: int, stop: int) -> Iterator[Batch]:
        """Yield the batches of global steps ``start .. stop-1`` on the device."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop_flag = threading.Event()

        def produce() -> None:
            try:
                for s in range(start, stop):
                    if stop_flag.is_set():
                        return
                    rows = self.stream.batch_rows(s)
                    ids = torch.from_numpy(rows)
                    q.put((self.fetch(rows), rows, ids.pin_memory() if self.pin else ids))
                q.put(None)
            except BaseException as e:  # surfaced in the consumer
                q.put(e)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, rows, ids = item
                yield Batch(
                    images.to(self.device, non_blocking=True),
                    rows,
                    ids.to(self.device, non_blocking=True),
                )
        finally:
            stop_flag.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
