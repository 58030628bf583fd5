"""The uint8 image cache: every image decoded and resized once, then memory-mapped for training.

A cache directory holds ``images.npy``, a uint8 array (N, C, H, W) with H = W = size, and
``manifest.json``, which records the settings, the source paths in store order, the images that
failed to decode (path -> reason), a hash of the inputs (paths, file sizes, modification times) and
settings, and the build's duration and throughput (input images per second). A build writes both
under temporary names (``files.atomic_path``, with the store's blocks reserved before decoding, so
a full disk is an error, not a crash); it removes the old manifest, renames the store, then renames
the manifest, so an interrupted build never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from s2mts2.data.imageio import ImageReadError, load_preprocessed
from s2mts2.errors import ConfigError, DataError
from s2mts2.files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGES_NAME = "images.npy"
_CHUNKS_PER_WORKER = 8
_MAX_CHUNK = 64

logger = logging.getLogger("s2mts2")


class ImageCache:
    """A read-only, memory-mapped uint8 image store (N, C, H, W) and the paths of its rows."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], images: np.ndarray) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.images = images
        self.paths: list[str] = manifest["paths"]
        self.failures: dict[str, str] = manifest["failures"]
        self.size: int = manifest["size"]
        self.channels: int = manifest["channels"]
        self._rows = {path: row for row, path in enumerate(self.paths)}

    @classmethod
    def open(cls, cache_dir: str | Path) -> ImageCache:
        """Open the cache in ``cache_dir``; ``DataError`` when there is none or it is damaged."""
        cache_dir = Path(cache_dir)
        manifest_path = cache_dir / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
            images = np.load(cache_dir / IMAGES_NAME, mmap_mode="r")
            version = manifest["format_version"]
            side = manifest["size"]
            expected = (manifest["n_images"], manifest["channels"], side, side)
            n_paths = len(manifest["paths"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"no valid image cache in {cache_dir} ({type(exc).__name__}: {exc}); "
                "build it with `s2mts2 prepare`"
            ) from exc
        if version != FORMAT_VERSION:
            raise DataError(
                f"image cache {cache_dir} has format version {version}, this s2mts2 reads "
                f"{FORMAT_VERSION}; rebuild it with `s2mts2 prepare`"
            )
        if images.dtype != np.uint8 or images.shape != expected or n_paths != expected[0]:
            raise DataError(
                f"image cache {cache_dir} is damaged: store is {images.dtype} {images.shape}, "
                f"manifest says uint8 {expected} with {n_paths} paths"
            )
        return cls(cache_dir, manifest, images)

    def __len__(self) -> int:
        return len(self.paths)

    def rows_for(self, paths: Iterable[str | Path]) -> np.ndarray:
        """Row index (int64, shape (len(paths),)) of each path; ``DataError`` for an unknown one."""
        rows = []
        for path in paths:
            row = self._rows.get(str(path))
            if row is None:
                reason = self.failures.get(str(path), "it was not among the cache's inputs")
                raise DataError(
                    f"image {path} is not in the image cache {self.cache_dir}: {reason}"
                )
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """Copy of the images at ``rows`` (B,) as uint8 (B, C, H, W), in the order of ``rows``.

        The store is read in ascending row order, which is sequential on disk.
        """
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return out

    def to_tensor(self, pin: bool = False) -> torch.Tensor:
        """The whole store loaded into memory as a uint8 tensor (N, C, H, W), for small caches.

        ``pin=True`` page-locks it for fast asynchronous copies to a CUDA device (needs CUDA).
        """
        import torch  # imported here so that decode workers, which import this module, stay light

        tensor = torch.from_numpy(np.array(self.images))
        return tensor.pin_memory() if pin else tensor


def build_cache(
    paths: Sequence[str | Path],
    cache_dir: str | Path,
    *,
    size: int,
    channels: int,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[ImageCache, dict[str, str]]:
    """Decode and resize every image once into a uint8 cache; returns it and the failures.

    ``paths`` are stored as given (``str(path)``), duplicates once. Images that fail to decode are
    logged (logger ``"s2mts2"``), listed in the returned dict (path -> reason) and left out; the
    store holds the others in input order. A valid cache built from the same files (same paths,
    sizes and modification times) with the same settings is reused without decoding. Decoding runs
    in ``workers`` processes (default: all cores) started fresh (forkserver or spawn), so a script
    that calls this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    Each worker imports this module (light: no torch) and, by Python's rule for fresh processes,
    the parent's main script when the parent was started as one (not for ``python -m`` or the
    ``s2mts2`` command): a script's module-level imports (torch: a second or more) are paid once
    per worker at start-up.
    """
    if size < 1:
        raise ConfigError(f"image size must be a positive number of pixels, got {size}")
    if channels not in (1, 3):
        raise ConfigError(f"image channels must be 1 (grey) or 3 (RGB), got {channels}")
    inputs = list(dict.fromkeys(str(p) for p in paths))
    if not inputs:
        raise DataError(f"no images given to build the image cache in {cache_dir}")
    cache_dir = Path(cache_dir)
    input_hash = _input_hash(inputs, size, channels)
    reused = _reusable(cache_dir, input_hash)
    if reused is not None:
        logger.info("reusing the image cache in %s (%d images)", cache_dir, len(reused))
        return reused, dict(reused.failures)

    cache_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(inputs)))
    start = time.perf_counter()
    with atomic_path(cache_dir / IMAGES_NAME) as tmp_images:
        n_ok, failures = _decode_into(tmp_images, inputs, size, channels, workers, progress)
        seconds = time.perf_counter() - start
        for path, reason in failures.items():
            logger.warning("image left out of the cache: %s: %s", path, reason)
        if failures:
            logger.warning("%d of %d images could not be decoded", len(failures), len(inputs))
        if n_ok == 0:
            first = next(iter(failures.items()))
            raise DataError(
                f"none of the {len(inputs)} images could be decoded (first: {first[0]}: {first[1]})"
            )
        (cache_dir / MANIFEST_NAME).unlink(missing_ok=True)

    manifest = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "channels": channels,
        "n_images": n_ok,
        "paths": [p for p in inputs if p not in failures],
        "failures": failures,
        "input_hash": input_hash,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "images_per_s": round(len(inputs) / seconds, 1),
        "workers": workers,
    }
    write_text_atomic(cache_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))
    logger.info(
        "built the image cache in %s: %d images in %.1f s (%.0f images/s, %d workers)",
        cache_dir,
        n_ok,
        seconds,
        manifest["images_per_s"],
        workers,
    )
    return ImageCache.open(cache_dir), failures


def _decode_into(
    npy_path: Path, inputs: list[str], size: int, channels: int, workers: int, progress: bool
) -> tuple[int, dict[str, str]]:
    """Write the decoded images, in input order, into a new .npy store; (count, failures)."""
    store = np.lib.format.open_memmap(
        npy_path, mode="w+", dtype=np.uint8, shape=(len(inputs), channels, size, size)
    )
    if hasattr(os, "posix_fallocate"):
        # reserve the blocks now: writing a page of a sparse memory map on a full disk kills the
        # process with SIGBUS, whereas this raises an OSError (ENOSPC) naming the file
        with open(npy_path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, store.offset + store.nbytes)
    n_ok = 0
    failures: dict[str, str] = {}
    with tqdm(total=len(inputs), unit="img", desc="decoding", disable=not progress) as bar:
        for n_paths, decoded, chunk_failures in _decode_all(inputs, size, channels, workers):
            store[n_ok : n_ok + len(decoded)] = decoded
            n_ok += len(decoded)
            failures.update(chunk_failures)
            bar.update(n_paths)
    store.flush()
    offset = store.offset
    del store
    if n_ok:
        _shrink_rows(npy_path, offset, (n_ok, channels, size, size))
    return n_ok, failures


def _decode_chunk(task: tuple[list[str], int, int]) -> tuple[int, np.ndarray, dict[str, str]]:
    """Decode one chunk (in a worker): (number of paths, uint8 (k, C, S, S) decoded, failures)."""
    paths, size, channels = task
    decoded = []
    failures = {}
    for path in paths:
        try:
            decoded.append(load_preprocessed(path, size, channels).transpose(2, 0, 1))
        except ImageReadError as exc:
            failures[path] = exc.reason
    stacked = np.stack(decoded) if decoded else np.empty((0, channels, size, size), np.uint8)
    return len(paths), stacked, failures


def _decode_all(
    inputs: list[str], size: int, channels: int, workers: int
) -> Iterator[tuple[int, np.ndarray, dict[str, str]]]:
    """Decoded chunks in input order, from ``workers`` processes (in-process when 1)."""
    chunk = max(1, min(_MAX_CHUNK, math.ceil(len(inputs) / (workers * _CHUNKS_PER_WORKER))))
    tasks = [(inputs[i : i + chunk], size, channels) for i in range(0, len(inputs), chunk)]
    if workers == 1:
        yield from map(_decode_chunk, tasks)
        return
    # A forked child of a process running torch threads or CUDA can deadlock: start fresh ones.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with context.Pool(workers, initializer=_ignore_interrupts) as pool:
        yield from pool.imap(_decode_chunk, tasks)


def _ignore_interrupts() -> None:
    """In a decode worker: leave Ctrl-C to the main process, which stops the pool.

    A terminal sends SIGINT to the whole process group; a worker killed by it while holding the
    pool's result pipe would leave the pool's shutdown waiting forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _input_hash(inputs: list[str], size: int, channels: int) -> str:
    """SHA-256 over the settings and each input's path, byte size and mtime (missing: -1)."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, size, channels]).encode())
    for path in inputs:
        try:
            stat = os.stat(path)
            signature = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = (-1, -1)
        digest.update(json.dumps([path, *signature]).encode())
    return digest.hexdigest()


def _reusable(cache_dir: Path, input_hash: str) -> ImageCache | None:
    """The cache in ``cache_dir`` when it is valid and was built from these inputs, else None."""
    if not (cache_dir / MANIFEST_NAME).is_file():
        return None
    try:
        cache = ImageCache.open(cache_dir)
    except DataError as exc:
        logger.warning("rebuilding the image cache: %s", exc)
        return None
    if cache.manifest["input_hash"] != input_hash:
        logger.info("image files or settings changed: rebuilding the image cache in %s", cache_dir)
        return None
    return cache


def _shrink_rows(npy_path: Path, offset: int, shape: tuple[int, ...]) -> None:
    """Rewrite the .npy header for fewer rows (in place) and cut the unused rows off the file.

    numpy pads its headers so that the first dimension can change without moving the data.
    """
    with open(npy_path, "r+b") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        if f.tell() != offset:
            raise RuntimeError(f"numpy .npy header size changed while shrinking {npy_path}")
        f.truncate(offset + math.prod(shape))
        f.flush()
        os.fsync(f.fileno())
