"""Device, precision, threads, torch.compile and optimiser kernels: how the networks run."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s2mts2.errors import ConfigError

log = logging.getLogger("s2mts2")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device: {name!r} is not a device (auto | cpu | cuda | cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine")
    return device


def setup_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    """The numeric format of a network's forward passes on one device type.

    ``dtype`` is the autocast dtype (``torch.bfloat16`` or ``torch.float16``), None for plain
    fp32. Mixed precision also keeps the networks and their 4-D inputs channels-last (NHWC, what
    tensor-core and oneDNN convolutions want); fp32 stays NCHW. fp16 needs loss scaling
    (:meth:`scaler`); for bf16 and fp32 the scaler is a disabled pass-through.
    """

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    @property
    def channels_last(self) -> bool:
        return self.dtype is not None

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` on the device; a no-op context for fp32. ``cache=False`` casts
        the weights at every use (what a CUDA graph capture needs)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, C, H, W) batch in the memory format the networks are kept in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """Move ``model`` to ``device``, channels-last under mixed precision."""
        model = model.to(device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def scaler(self) -> torch.amp.GradScaler:
        """Dynamic loss scaling, enabled for fp16 only; saved in checkpoints like a module."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


def describe_device(device: torch.device) -> str:
    """The device and its hardware: ``cpu (AMD EPYC 7B13)``, ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({_cpu_name()})"
    return str(device)


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def resolve_precision(name: str, device: torch.device, hint: bool = False) -> Precision:
    """``precision`` config value -> :class:`Precision` for ``device``.

    ``auto``: on CUDA bf16 where the GPU computes it natively (Ampere and newer), else fp16 with
    loss scaling (V100, T4); fp32 on a CPU (with ``hint``, a CPU with native bf16 gets a hint to
    opt in, at most once per process: the training stages ask for it when a run starts).
    Explicit ``bf16`` on a GPU without native bf16 is an error; ``fp16`` on a CPU works but is
    slow (a warning says so).
    """
    if name not in PRECISIONS:
        raise ConfigError(f"precision: {name!r} is not one of {list(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            if hint and device.type == "cpu" and _cpu_bf16():
                _hint_cpu_bf16()
            return Precision(device.type)
        name = "bf16" if _cuda_bf16(device) else "fp16"
    elif name == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"precision: 'bf16' needs a GPU that computes bf16 natively (compute capability ≥ 8.0);"
            f" {torch.cuda.get_device_name(device)} has {major}.{minor}: use fp16 or fp32"
        )
    elif name == "fp16" and device.type == "cpu":
        log.warning("precision fp16 on a CPU is slow; use bf16 (fast on CPUs with AMX) or fp32")
    return Precision(device.type, _DTYPES[name])


@functools.cache
def _hint_cpu_bf16() -> None:
    log.info(
        "this CPU computes bf16 natively: --set precision=bf16 may train faster "
        "(1.6x at 64 px, 2.3x at 224 px on a Xeon with AMX; benchmarks/README.md)"
    )


def _cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def optimizer_kernels(device: torch.device) -> dict[str, bool]:
    """How the optimisers run on ``device``: ``fused`` on CUDA (one kernel per parameter chunk;
    fp16's loss scaling then skips an overflowed step on the device instead of asking the host),
    ``foreach`` elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def compiled(module: torch.nn.Module, enabled: bool) -> Callable[..., Any]:
    """``module`` compiled by ``torch.compile`` (TorchInductor, static shapes) when ``enabled``.

    The compiled callable shares the module's parameters and buffers: optimiser, EMA updates,
    checkpoints and evaluation keep using ``module`` itself (no ``_orig_mod.`` keys). Each
    distinct input shape compiles once, at its first call; a training step has one per network.
    """
    return torch.compile(module, dynamic=False) if enabled else module


def check_compile(enabled: bool) -> None:
    """``compile: true`` needs a C compiler (TorchInductor builds its CPU kernels and Triton its
    GPU launcher with it): without one, stop before training with a message that says so."""
    if not enabled:
        return
    log.info("compile: the first training steps compile the networks (a minute or more)")
    names = [os.environ.get("CXX", ""), os.environ.get("CC", ""), "g++", "c++", "clang++", "cc"]
    if not any(name and shutil.which(name) for name in names):
        raise ConfigError(
            "compile: true needs a C/C++ compiler on PATH (TorchInductor compiles its kernels "
            "with one); none of g++, c++, clang++, cc was found: install one (e.g. gcc) or "
            "--set compile=false"
        )
