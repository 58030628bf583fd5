"""Training-mode batch norm of DenseNet-121, per kernel backend: PyTorch's own kernels against
cuDNN's (``torch.cudnn_batch_norm``), in bf16 and fp16, channels-last.

Three quarters of a DenseNet-121 stage-1 step on an H100/H200 is memory-bound batch-norm,
concatenation and element-wise work, and fp16 trains 1-4 % faster than bf16 there (README,
"CUDA"). PyTorch sends fp16 batch norm to cuDNN but never bf16; this times both backends on every
batch-norm layer's input shape of the network (one "pass" = all 121 layers once), forward alone
and forward + backward, checks that cuDNN gives PyTorch's outputs, gradients and running
statistics, and records the kernels each backend launches.

    python benchmarks/batchnorm_kernels.py --device cuda --json bn-kernels-cuda.json

Writes JSON: ms per pass for each (dtype, batch, backend, forward | forward+backward), the
largest differences between the backends, the kernel names, the device and the command.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from s2mts2.bench import device_name, save_result, time_steps
from s2mts2.config import ModelConfig
from s2mts2.engine.builders import pretrain_network

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def layer_shapes(model: str, channels: int, size: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of the input of every BatchNorm2d of the stage-1 network, in forward order."""
    net = pretrain_network(ModelConfig(backbone=model), channels).eval()
    shapes: list[tuple[int, int, int]] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: shapes.append(tuple(inp[0].shape[1:])))
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        net(torch.zeros(1, channels, size, size))
    for h in hooks:
        h.remove()
    return shapes


def native(x, w, b, rm, rv):
    return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)


def cudnn(x, w, b, rm, rv):
    return torch.cudnn_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)[0]


BACKENDS = {"native": native, "cudnn": cudnn}


class Layers:
    """Inputs (N, C, H, W) channels-last, fp32 affine parameters and running statistics."""

    def __init__(self, shapes, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        self.x = [
            (torch.randn(batch, c, h, w, generator=gen, device=device) * 2 + 1)
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
            .requires_grad_()
            for c, h, w in shapes
        ]
        self.g = [
            torch.randn(x.shape, generator=gen, device=device)
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
            for x in self.x
        ]
        self.params = [
            (
                torch.rand(c, generator=gen, device=device).requires_grad_(),
                torch.randn(c, generator=gen, device=device).requires_grad_(),
                torch.zeros(c, device=device),
                torch.ones(c, device=device),
            )
            for c, _, _ in shapes
        ]

    def forward(self, fn) -> list[torch.Tensor]:
        with torch.no_grad():
            return [fn(x, *p) for x, p in zip(self.x, self.params)]

    def forward_backward(self, fn) -> None:
        for x, g, p in zip(self.x, self.g, self.params):
            torch.autograd.backward(fn(x, *p), g, inputs=[x, p[0], p[1]])


def compare(shape, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Largest |cuDNN − native| over output, gradients and running statistics of one layer,
    relative to the largest magnitude of the native value (raises what cuDNN raises)."""
    results = {}
    for name, fn in BACKENDS.items():
        layers = Layers([shape], batch, dtype, device)
        x, g, (w, b, rm, rv) = layers.x[0], layers.g[0], layers.params[0]
        out = fn(x, w, b, rm, rv)
        out.backward(g)
        results[name] = {
            "output": out.float(),
            "grad_input": x.grad.float(),
            "grad_weight": w.grad,
            "grad_bias": b.grad,
            "running_mean": rm,
            "running_var": rv,
        }
    return {
        k: ((results["cudnn"][k] - v).abs().max() / v.abs().max().clamp_min(1e-12)).item()
        for k, v in results["native"].items()
    }


def kernels(layers: Layers, fn) -> list[str]:
    """Names of the GPU kernels one forward + backward of the first layer launches."""
    x, g, p = layers.x[0], layers.g[0], layers.params[0]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.autograd.backward(fn(x, *p), g, inputs=[x])
        torch.cuda.synchronize()
    return sorted({e.name[:90] for e in prof.events() if e.device_type.name == "CUDA"})


def measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    shapes = layer_shapes(args.model, args.channels, args.size)
    times: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    names: dict[str, dict] = {}
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        try:
            errors[dname] = compare(shapes[len(shapes) // 2], args.batch_sizes[0], dtype, device)
            backends = BACKENDS
        except RuntimeError as e:  # e.g. a cuDNN that refuses this dtype
            errors[dname] = {"cudnn_error": str(e)[:500]}
            backends = {"native": native}
        for batch in args.batch_sizes:
            layers = Layers(shapes, batch, dtype, device)
            key = f"{dname}, batch {batch}"
            times[key] = {}
            for bname, fn in backends.items():
                fwd, both = partial(layers.forward, fn), partial(layers.forward_backward, fn)
                t_fwd = [
                    time_steps(fwd, 2 if r == 0 else 0, args.steps, device)
                    for r in range(args.rounds)
                ]
                t_both = [
                    time_steps(both, 2 if r == 0 else 0, args.steps, device)
                    for r in range(args.rounds)
                ]
                times[key][bname] = {
                    "forward_ms": 1e3 * min(t_fwd),
                    "forward_backward_ms": 1e3 * min(t_both),
                }
                if device.type == "cuda":
                    names.setdefault(dname, {})[bname] = kernels(layers, fn)
            print(key, {b: {k: round(v, 2) for k, v in t.items()} for b, t in times[key].items()})
            del layers
    return {
        "ms_per_pass": times,
        "relative_difference_cudnn_vs_native": errors,
        "kernels": names,
        "layers": len(shapes),
        "settings": {**vars(args), "json": str(args.json)},
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cudnn_version": torch.backends.cudnn.version(),
        "command": " ".join(["python", *sys.argv]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=list(DTYPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    result = measure(args)
    print("cuDNN vs native, relative:", result["relative_difference_cudnn_vs_native"])
    print(f"wrote {save_result(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
