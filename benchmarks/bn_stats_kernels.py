"""Batch-norm kernels on DenseNet-121's own activation shapes: what shared statistics can save.

For one forward of a batch, DenseNet-121's "readers" (every layer's ``norm1``, the transitions'
``norm``, ``norm5``) normalise the concatenation of a block's maps; its "chunks" are those maps
(a block's input and each layer's output). torchvision runs training-mode BatchNorm on every
reader; ``model.shared_bn_stats`` computes statistics on every chunk and applies BatchNorm's
inference kernel on every reader. Times (mean of ``--repeats`` calls after one warm-up call),
summed over the shapes, in ms per forward of the batch:

- ``train_readers``: training-mode ``F.batch_norm`` on the readers (torchvision: statistics +
  normalisation);
- ``apply_readers``: inference-mode ``F.batch_norm`` on the readers (the shortcut's normalisation);
- ``cat_readers``: ``torch.cat`` of each reader's maps (torchvision, and the shortcut with
  autograd); ``apply_buffer_views``: inference-mode ``F.batch_norm`` on a channel slice of the
  block's buffer (the shortcut without autograd: no concatenation);
- ``<method>_chunks`` / ``<method>_readers``: per-channel mean and variance by ``method`` on the
  chunks (the shortcut) or on the readers: ``shortcut`` (what ``model.shared_bn_stats`` runs:
  ``torch.batch_norm_update_stats``, float32 statistics), ``batch_norm_stats`` (CUDA:
  SyncBatchNorm's mean and inverse standard deviation), ``var_mean_fp32`` (``torch.var_mean`` of
  the float32 input), ``sums_fp32`` (float32 sum and sum of squares without a float32 copy).

    python benchmarks/bn_stats_kernels.py --device cuda --batch-size 128 \\
        --json benchmarks/results/cuda/bn-stats-kernels.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from s2mts2.engine.bench import device_name, save_result, time_steps
from s2mts2.engine.runtime import resolve_device
from s2mts2.models.densenet_shared_stats import _BatchStats

DIMS = (0, 2, 3)


def densenet121_shapes(size: int) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int]]]:
    """DenseNet-121's readers as (channels, side, block input channels, block output channels) and
    chunks as (channels, side), for ``size`` px inputs."""
    readers, chunks = [], []
    channels, side, growth = 64, size // 4, 32
    for block, layers in enumerate((6, 12, 24, 16)):
        first, width = channels, channels + layers * growth
        chunks.append((channels, side))
        for _ in range(layers):
            readers.append((channels, side, first, width))
            chunks.append((growth, side))
            channels += growth
        readers.append((channels, side, first, width))  # the transition's norm, or norm5
        if block < 3:
            channels, side = channels // 2, side // 2
    return readers, chunks


def _channels_last(n: int, c: int, side: int, dtype: torch.dtype, device: torch.device):
    x = torch.randn(n, c, side, side, device=device).to(dtype)
    return x.contiguous(memory_format=torch.channels_last)


def _var_mean_fp32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.var_mean(x.float(), dim=DIMS, correction=0)


def _sums_fp32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = x.numel() // x.shape[1]
    mean = torch.sum(x, dim=DIMS, dtype=torch.float32) / count
    square = torch.linalg.vector_norm(x, dim=DIMS, dtype=torch.float32).square() / count
    return mean, square - mean.square()


def _methods(device: torch.device) -> dict[str, Callable[[torch.Tensor], object]]:
    methods: dict[str, Callable[[torch.Tensor], object]] = {"shortcut": _BatchStats.apply}
    if device.type == "cuda":
        methods["batch_norm_stats"] = lambda x: torch.batch_norm_stats(x, 0.0)
    methods.update(var_mean_fp32=_var_mean_fp32, sums_fp32=_sums_fp32)
    return methods


def measure(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    readers, chunks = densenet121_shapes(args.size)
    methods = _methods(device)
    totals: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        totals[name] = totals.get(name, 0.0) + 1e3 * seconds

    b = args.batch_size
    for channels, side in chunks:
        x = _channels_last(b, channels, side, dtype, device)
        for name, method in methods.items():
            add(f"{name}_chunks", time_steps(partial(method, x), 1, args.repeats, device))
    for channels, side, first, width in readers:
        x = _channels_last(b, channels, side, dtype, device)
        ones, zeros = torch.ones(channels, device=device), torch.zeros(channels, device=device)
        for name, method in methods.items():
            add(f"{name}_readers", time_steps(partial(method, x), 1, args.repeats, device))
        train = partial(F.batch_norm, x, zeros.clone(), ones.clone(), ones, zeros, True)
        apply = partial(F.batch_norm, x, zeros, ones, ones, zeros, False)
        add("train_readers", time_steps(train, 1, args.repeats, device))
        add("apply_readers", time_steps(apply, 1, args.repeats, device))
        # without autograd: concatenate the maps, or view the block's buffer
        maps = [x[:, :first].contiguous(memory_format=torch.channels_last)]
        maps += [
            x[:, c : c + 32].contiguous(memory_format=torch.channels_last)
            for c in range(first, channels, 32)
        ]
        add("cat_readers", time_steps(partial(torch.cat, maps, 1), 1, args.repeats, device))
        view = _channels_last(b, width, side, dtype, device)[:, :channels]
        apply_view = partial(F.batch_norm, view, zeros, ones, ones, zeros, False)
        add("apply_buffer_views", time_steps(apply_view, 1, args.repeats, device))
    elements = {
        "readers": b * sum(c * s * s for c, s, _, _ in readers),
        "chunks": b * sum(c * s * s for c, s in chunks),
    }
    return {
        "ms_per_forward": totals,
        "elements": elements,
        "shapes": {"readers": len(readers), "chunks": len(chunks)},
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "settings": {**vars(args), "json": str(args.json)},
        "command": " ".join(["python", *sys.argv]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per shape (mean)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    result = measure(args)
    for name, ms in sorted(result["ms_per_forward"].items()):
        print(f"{name:32s} {ms:9.2f} ms")
    print(f"wrote {save_result(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
