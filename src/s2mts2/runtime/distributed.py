"""torch.distributed for the training loops: process group from torchrun, collectives, sharding.

A plain ``python -m s2mts2`` / ``s2mts2`` run is rank 0 of 1: every helper here is then the
identity (or a no-op) and nothing is initialised. Under ``torchrun`` (environment variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) the stage entry points
run inside :func:`distributed_session`, which

- binds the process to ``cuda:LOCAL_RANK`` when the configured device is CUDA (``auto`` or
  ``cuda``) and initialises the default group with NCCL there, with Gloo on CPU;
- leaves INFO logging to rank 0 (other ranks log errors only);
- destroys the group at the end. A group that already exists (created by the caller) is used
  as it is and left alone.

Conventions shared by both stages:

- a configured ``batch_size`` is the *global* batch; each rank takes ``batch_size / world``
  (:func:`per_rank_batch`) and, through :class:`s2mts2.data.loader.IndexStream`, slice ``rank``
  of the global batch of every step, so concatenating per-rank tensors in rank order
  (:func:`all_gather_cat`) rebuilds the global batch in its single-process order;
- floating-point buffers (BatchNorm running statistics) of the student and the teacher are
  averaged over ranks after every step (:func:`average_buffers`), so both networks are
  identical on every rank and the checkpoint (written by rank 0) holds nothing rank-specific.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from s2mts2.errors import ConfigError
from s2mts2.runtime.device import resolve_device

log = logging.getLogger("s2mts2")

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or a compatible launcher) set this process's rank variables."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def process_device(name: str) -> torch.device:
    """The configured device; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.

    An explicit ``cuda:N`` is refused when several processes share the node (each process
    needs its own GPU).
    """
    device = resolve_device(name)
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    local = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.index is not None and device.index != local and local_world > 1:
        raise ConfigError(
            f"device: {name!r} with {local_world} processes per node; use 'auto' or 'cuda' "
            "under torchrun (process LOCAL_RANK takes cuda:LOCAL_RANK)"
        )
    if local >= torch.cuda.device_count():
        raise ConfigError(
            f"device: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are "
            "visible; --nproc_per_node must not exceed the GPUs of the node"
        )
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[torch.device]:
    """Yield the process's device inside a process group when launched by torchrun.

    Initialises the default group (NCCL on CUDA, Gloo on CPU) from torchrun's environment unless
    one exists, quiets non-zero ranks' logging, and destroys the group it created on exit.
    """
    device = process_device(device_name)
    created = False
    if launched_by_torchrun() and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        created = True
    level = log.level
    if not is_main():
        log.setLevel(logging.ERROR)
    if created:
        log.info(
            "distributed: %d processes (%s), global batches split over ranks",
            world_size(),
            dist.get_backend(),
        )
    try:
        yield device
    finally:
        log.setLevel(level)
        if created:
            dist.destroy_process_group()


def per_rank_batch(global_batch: int, option: str) -> int:
    """``global_batch / world``; the config option ``option`` must divide evenly."""
    w = world_size()
    if global_batch < 1 or global_batch % w:
        raise ConfigError(
            f"{option} = {global_batch} is the global batch (all processes together): it must "
            f"be a positive multiple of the number of processes, {w}"
        )
    return global_batch // w


def shard(rows: np.ndarray) -> np.ndarray:
    """This rank's contiguous part of ``rows`` (``np.array_split`` order; all rows at world 1)."""
    return np.array_split(np.asarray(rows), world_size())[rank()] if world_size() > 1 else rows


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (files it creates exist for them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on every rank (same shape everywhere) -> (world·n, ...) in rank order; x at world 1."""
    if world_size() == 1:
        return x
    x = x.contiguous()  # dense row-major: the layout every rank's part is received in
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(n_r, D) per rank, n_r free -> (Σ n_r, D) in rank order, on x's device.

    Inverse of :func:`shard` for per-row results. A rank without rows may pass an empty tensor
    of any shape (``torch.empty(0)``).
    """
    if world_size() == 1:
        return x
    dev = _comm_device()
    width = x.shape[1] if x.ndim == 2 else 0
    sizes = all_gather_cat(torch.tensor([[x.shape[0], width]], device=dev)).tolist()
    longest = max(n for n, _ in sizes)
    width = max(d for _, d in sizes)
    padded = torch.zeros(longest, width, dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x.reshape(x.shape[0], width)
    gathered = all_gather_cat(padded).view(world_size(), longest, width)
    return torch.cat([gathered[r, :n] for r, (n, _) in enumerate(sizes)]).to(x.device)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``x`` over ranks (a new tensor; x itself at world 1)."""
    if world_size() == 1:
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out.div_(world_size())


@torch.no_grad()
def average_buffers(*modules: nn.Module) -> None:
    """Replace every floating-point buffer of ``modules`` by its mean over ranks (one all-reduce).

    Integer buffers (``num_batches_tracked``) are the same on every rank and are left alone.
    """
    if world_size() == 1:
        return
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat.div_(world_size())
    for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(part.view_as(b))


def shuffled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int
) -> torch.Tensor:
    """Batch-shuffle BN (MoCo): run ``fn`` on a cross-rank permutation of the global batch.

    ``x`` (n, ...) is this rank's slice of the global batch (n equal on all ranks). The global
    batch (world·n, ...) is gathered and permuted by ``randperm(world·n)`` drawn from ``seed``
    (the same on every rank, so no communication is needed for it); rank r runs ``fn`` on the
    permuted positions r·n .. (r+1)·n, the outputs are gathered and un-permuted. Returns fn's
    outputs (n, ...) for the rows of ``x`` in ``x``'s order, so a network without batch
    statistics gives exactly ``fn(x)`` (what is returned at world 1), while BatchNorm in ``fn``
    sees a random subset of the global batch instead of the rank's own slice.
    """
    w = world_size()
    if w == 1:
        return fn(x)
    n, r = x.shape[0], rank()
    perm = torch.randperm(w * n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    out = all_gather_cat(fn(all_gather_cat(x)[perm[r * n : (r + 1) * n]]))
    return out[torch.argsort(perm)[r * n : (r + 1) * n]]


def sync_batchnorm(net: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``model.sync_bn``: BatchNorm -> SyncBatchNorm (same state_dict keys) on CUDA.

    SyncBatchNorm has no CPU kernel: on CPU the option is refused with several processes and
    has no effect with one.
    """
    if not enabled:
        return net
    if device.type != "cuda":
        if world_size() > 1:
            raise ConfigError("model.sync_bn = true needs CUDA devices (no CPU SyncBatchNorm)")
        return net
    return nn.SyncBatchNorm.convert_sync_batchnorm(net)


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel(net) with several processes, else ``net``.

    Buffers are not broadcast from rank 0 on every forward; the loops average them instead
    (:func:`average_buffers`).
    """
    if world_size() == 1:
        return net
    ddp = nn.parallel.DistributedDataParallel
    no_sync = (  # keyword renamed in recent torch (``broadcast_buffers`` is deprecated there)
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **{no_sync: False},
    )


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper, else ``net`` itself."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
