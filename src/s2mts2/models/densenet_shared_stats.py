"""DenseNet training forward that computes each feature map's batch-norm statistics once.

Inside a dense block, layer l batch-normalises the concatenation of the block input and the l
earlier layers' outputs, and the block's successor (a transition's ``norm`` or ``norm5``)
normalises all of them. In training mode a BatchNorm normalises each channel with its mean and
variance over (N, H, W), which do not depend on which layer reads the channel. torchvision
recomputes them in every layer: O(L²) reductions per block of L layers, 58 % of
DenseNet-121's statistics work, and statistics are the largest single item of a CUDA step (see
``benchmarks/README.md``). Here each chunk (the block input, every layer's output) gets its
statistics once and every consumer normalises with them.

Exact, not an approximation: the shared statistics stay in the autograd graph, so each consumer's
gradient reaches them and autograd sums the contributions, as it does for torchvision's
per-layer statistics. Forward, gradients and running statistics equal torchvision's training-mode
BatchNorm up to floating-point rounding (tested in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models.densenet as tvd
from torch import nn


class _BatchStats(torch.autograd.Function):
    """x (N, C, H, W) -> per-channel batch mean and biased variance, each (C,), float32 or float64."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        # BatchNorm's own statistics kernel (8-18x torch.var_mean on a CPU). CUDA returns float32
        # statistics for 16-bit input; on a CPU float32 running buffers make them float32, and
        # momentum 0 leaves those buffers as they are.
        buffers = None, None
        if not x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
            zeros = torch.zeros(x.shape[1])
            buffers = zeros, torch.ones_like(zeros)
        mean, var = torch.batch_norm_update_stats(x, *buffers, 0.0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        # d mean / dx = 1 / count;  d var / dx = 2 (x - mean) / count
        return channel_affine(x, grad_var * (2.0 / count), grad_mean / count, center=mean)


def channel_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """(x - center) * scale + shift per channel: x (N, C, H, W), the others (C,) (None: 0) ->
    x's dtype and layout.

    One fused kernel with the arithmetic in float32, where ``x * scale`` would promote 16-bit x
    to float32: on CUDA SyncBatchNorm's elementwise kernel (no weight, ``scale`` as the inverse
    standard deviation), elsewhere BatchNorm's inference kernel with variance 1 and eps 0.
    """
    zeros = torch.zeros_like(scale)
    shift = zeros if shift is None else shift
    center = zeros if center is None else center
    if x.is_cuda:
        return torch.batch_norm_elemt(x, None, shift, center, scale, 0.0)
    ones = torch.ones_like(scale)
    # the ATen op: torch 2.11's F.batch_norm refuses eps = 0 even in inference mode
    return torch.batch_norm(
        x, scale, shift, center, ones, False, 0.0, 0.0, torch.backends.cudnn.enabled
    )


class _NormaliseWithStats(torch.autograd.Function):
    """Training-mode BatchNorm of x (N, C, H, W) whose batch statistics (C,) are inputs.

    Forward is BatchNorm's inference kernel. Backward: the weight and bias gradients from its
    inference backward, the input gradient g * weight * invstd as one per-channel multiply, and
    the gradient of the statistics, which training mode adds: d y / d mean = -weight * invstd and
    d y / d var = -weight * invstd³ (x - mean) / 2.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps: float):  # type: ignore[override]
        ctx.save_for_backward(x, mean, var, weight)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, training=False, momentum=0.0, eps=eps)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x, mean, var, weight = ctx.saved_tensors
        invstd = torch.rsqrt(var + ctx.eps)
        # grad_weight = Σ g (x - mean) invstd and grad_bias = Σ g, summed over (N, H, W); CUDA's
        # kernel reads the statistics from the saved mean/invstd arguments (the CPU's from the
        # running ones in inference mode), so both are given
        _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, mean, var, mean, invstd, False, ctx.eps, [False, True, True]
        )
        weight_invstd = weight * invstd
        # g * weight * invstd in g's layout (CUDA's inference backward returns NCHW for
        # channels-last input, which would make every later gradient operation mix layouts)
        grad_x = channel_affine(grad_y, weight_invstd)
        grad_mean = -grad_bias * weight_invstd
        grad_var = grad_weight * weight_invstd * invstd * -0.5
        return grad_x, grad_mean, grad_var, grad_weight, grad_bias, None


class _Chunks:
    """The feature maps of an open dense block with their batch statistics.

    ``maps``: [(N, C_i, H, W)]; ``mean``/``var``: (ΣC_i,), the maps' statistics concatenated as
    the maps are (one concatenation per new map, so their gradients add up in O(L) steps);
    ``readers``: the BatchNorms that normalised the concatenation, with the statistics they used.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.maps = [x]
        self.mean, self.var = _BatchStats.apply(x)
        self.readers: list[tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]] = []

    def add(self, x: torch.Tensor) -> None:
        mean, var = _BatchStats.apply(x)
        self.maps.append(x)
        self.mean, self.var = torch.cat((self.mean, mean)), torch.cat((self.var, var))

    def normalised(self, bn: nn.BatchNorm2d) -> torch.Tensor:
        """``bn``(concatenation of all maps) in training mode: (N, ΣC_i, H, W)."""
        self.readers.append((bn, self.mean, self.var))
        x = torch.cat(self.maps, 1)
        return _NormaliseWithStats.apply(x, self.mean, self.var, bn.weight, bn.bias, bn.eps)

    def update_running_stats(self) -> None:
        """What each reader would have done: running averages with the unbiased variance.

        (``no_grad`` as a block, not a decorator: torch.compile cannot trace a decorated method.)
        """
        count = self.maps[0].numel() // self.maps[0].shape[1]
        norms = [bn for bn, _, _ in self.readers]
        momenta = [float(bn.momentum) for bn in norms]  # type: ignore[arg-type]
        with torch.no_grad():
            means = [mean.detach() for _, mean, _ in self.readers]
            unbiased = torch._foreach_mul(
                [var.detach() for _, _, var in self.readers], count / (count - 1)
            )
            torch._foreach_lerp_([bn.running_mean for bn in norms], means, momenta)
            torch._foreach_lerp_([bn.running_var for bn in norms], unbiased, momenta)
            torch._foreach_add_([bn.num_batches_tracked for bn in norms], 1)


def _dense_layer(layer: tvd._DenseLayer, chunks: _Chunks) -> torch.Tensor:
    """One torchvision ``_DenseLayer`` reading the open block: -> its new map (N, k, H, W)."""
    h = layer.conv1(layer.relu1(chunks.normalised(layer.norm1)))
    new = layer.conv2(layer.relu2(layer.norm2(h)))
    if layer.drop_rate > 0:
        new = F.dropout(new, p=layer.drop_rate, training=layer.training)
    return new


def uses_shared_stats(features: nn.Sequential, x: torch.Tensor) -> bool:
    """Whether ``forward_shared_stats`` reproduces ``features(x)``: every BatchNorm in training
    mode, a plain BatchNorm2d with running statistics and a momentum (not SyncBatchNorm, not a
    cumulative average), every dense block followed by a transition or a BatchNorm (torchvision's
    layout), and more than one image (torchvision's own check on 1x1 maps stays in charge)."""
    norms = [m for m in features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    children = list(features.children())
    successors = [b for a, b in zip(children, children[1:]) if isinstance(a, tvd._DenseBlock)]
    return (
        all(
            type(m) is nn.BatchNorm2d
            and m.training
            and m.affine
            and m.track_running_stats
            and m.momentum is not None
            for m in norms
        )
        and all(isinstance(m, tvd._Transition | nn.BatchNorm2d) for m in successors)
        and x.shape[0] > 1
    )


def forward_shared_stats(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """torchvision DenseNet ``features`` in training mode: (N, C, H, W) -> (N, F, H/32, W/32).

    Same modules, parameters and result as ``features(x)``; each dense block's chunk statistics
    are computed once. Forward hooks on the BatchNorms inside blocks do not run (Grad-CAM and
    export use evaluation mode, which takes torchvision's forward).
    """
    chunks: _Chunks | None = None
    for module in features.children():
        if isinstance(module, tvd._DenseBlock):
            chunks = _Chunks(x)
            for layer in module.values():
                chunks.add(_dense_layer(layer, chunks))  # type: ignore[arg-type]
        elif chunks is not None:  # a transition or norm5 reads the whole block
            norm = module.norm if isinstance(module, tvd._Transition) else module
            x = chunks.normalised(norm)  # type: ignore[arg-type]
            if isinstance(module, tvd._Transition):
                x = module.pool(module.conv(module.relu(x)))
            chunks.update_running_stats()
            chunks = None
        else:
            x = module(x)
    if chunks is not None:  # a block without successor
        chunks.update_running_stats()
        x = torch.cat(chunks.maps, 1)
    return x
