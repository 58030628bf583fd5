"""CUDA graphs for the stage-1 step's networks (config ``cuda_graphs``).

A DenseNet-121 stage-1 step launches about 3,000 GPU kernels (student forward and backward on the
query batch, teacher forward on the M key batches). On an H200 those kernels keep the GPU busy for
70 ms (fp16) to 89 ms (bf16), but issuing them from Python through the dispatcher and autograd
took the host up to 100 ms, so the host set the pace (benchmarks/README.md, "CUDA graphs and the
fused optimiser"). Captured once, before the first step, the same kernels are replayed with one
launch per network pass.

What a replay reads and writes stays where the capture found it: parameters (updated in place by
the optimiser and the EMA), BatchNorm buffers (updated by the replayed kernels), and a static
input that every call copies its batch into. Capture runs warm-up passes; the BatchNorm buffers
they touch are put back, so a captured run takes the same steps as an eager one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from s2mts2.runtime.device import Precision


def uses_cuda_graphs(enabled: bool, compile: bool, device: torch.device, world: int) -> bool:
    """The ``cuda_graphs`` setting takes effect on one CUDA process without ``compile``."""
    return enabled and device.type == "cuda" and world == 1 and not compile


@contextlib.contextmanager
def buffers_kept(*modules: nn.Module) -> Iterator[None]:
    """Put every buffer of ``modules`` (BatchNorm statistics, batch counts) back on exit, in
    place: warm-up passes before a capture would otherwise count as training steps."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def graphed_training_forward(
    module: nn.Module, sample: torch.Tensor, precision: Precision
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s training forward and its backward, each replayed from a CUDA graph, for
    batches shaped, typed and laid out like ``sample`` (B, C, H, W).

    Returns ``module`` itself with its forward replaced (``torch.cuda.make_graphed_callables``):
    in training mode calls replay the graphs and gradients reach the parameters' ``.grad`` as
    usual; in eval mode the module runs eagerly. Captured under ``precision``'s autocast.
    """
    with buffers_kept(module), precision.autocast(cache=False):
        return torch.cuda.make_graphed_callables(module, (sample,), allow_unused_input=True)


class GraphedInference:
    """A gradient-free forward of ``module`` replayed from a CUDA graph.

    ``sample`` (N, C, H, W) fixes the shape, dtype and memory layout of the batches a call
    accepts. The returned tensor is the graph's static output: it holds this call's result
    until the next call overwrites it.
    """

    def __init__(self, module: nn.Module, sample: torch.Tensor, precision: Precision) -> None:
        self.input = sample.detach().clone()
        side = torch.cuda.Stream(sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with buffers_kept(module), torch.no_grad(), precision.autocast(cache=False):
            with torch.cuda.stream(side):  # warm-up: lazy initialisation, cuDNN plans
                for _ in range(2):
                    module(self.input)
            torch.cuda.current_stream(sample.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = module(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output
