"""Split batch norm: one process emulates several devices' BatchNorm (stage 1's leak protection).

MoCo's finding: when a query and its positive key are normalised with statistics of the same
images, the network can match them by the batch statistics they share ("cheat" the pretext task)
instead of by their content. Several processes avoid it with batch-shuffle BN; one process splits
each batch into G groups normalised separately and regroups the key views so that a key is never
normalised with its query's companions.

Groups are strided: sample ``n`` of a batch (N, C, H, W) belongs to group ``n mod G``, so that a
contiguous NCHW batch is normalised by one native ``batch_norm`` call over its view
(N/G, G·C, H, W). The query batch (B images) is grouped so; :func:`key_group_order` reorders the
M·B key views before the teacher so that

    invariant: with s = B/G images per query group, the key views in any teacher group come from
    every query group alike: each (key view index m, query group g) contributes ⌈s/G⌉ or ⌊s/G⌋
    images. So a key shares its group with at most ⌈s/G⌉ of the s images its query was
    normalised with for each of the M view indices, the same share as any other image, and
    never with exactly its query's companions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training forward normalises ``groups`` strided groups separately.

    In training mode with ``groups`` G > 1, a batch (N, C, H, W) (N divisible by G) is normalised
    as if each group {n : n mod G = g} were run through this layer on its own: per-group mean and
    (biased) variance, the same affine parameters. The running statistics move towards the mean
    over groups of the group statistics (what averaging G devices' BatchNorm buffers gives), and
    ``num_batches_tracked`` counts one batch. Evaluation mode and G = 1 are plain BatchNorm2d;
    the ``state_dict`` is BatchNorm2d's.
    """

    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if g == 1 or not self.training:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % g:
            raise ValueError(f"split batch norm: batch of {n} does not split into {g} groups")
        factor = 0.0 if self.momentum is None else self.momentum
        running_mean = running_var = None
        if self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
            running_mean = self.running_mean.repeat(g)
            running_var = self.running_var.repeat(g)
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        grouped = x.reshape(n // g, g * c, *x.shape[2:])  # a view of a contiguous NCHW batch
        y = F.batch_norm(
            grouped,
            running_mean,
            running_var,
            None if self.weight is None else self.weight.repeat(g),
            None if self.bias is None else self.bias.repeat(g),
            True,
            factor,
            self.eps,
        ).reshape(x.shape)
        if running_mean is not None:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(g, c).mean(0))
                self.running_var.copy_(running_var.view(g, c).mean(0))
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def split_batchnorm(net: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of ``net`` a :class:`SplitBatchNorm2d` (in place; G = 1 until
    :func:`set_bn_groups`). Parameters, buffers and ``state_dict`` keys are unchanged."""
    for m in net.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SplitBatchNorm2d
    return net


def set_bn_groups(net: nn.Module, groups: int) -> None:
    """Normalise training batches in ``groups`` strided groups in every split batch norm."""
    if groups < 1:
        raise ValueError(f"batch-norm groups must be ≥ 1, got {groups}")
    for m in net.modules():
        if isinstance(m, SplitBatchNorm2d):
            m.groups = groups


def default_bn_groups(batch: int) -> int:
    """G for a per-process batch: the largest G ≤ 8 that divides it with ≥ 16 images a group
    (MoCo's single-GPU recipe: 8 groups); else the largest G ≤ 8 with ≥ 4 images a group (fewer
    make batch statistics degenerate: two values normalise to ±1 whatever they are); 1 when the
    batch cannot be split so."""
    for least in (16, 4):
        for g in range(8, 1, -1):
            if batch % g == 0 and batch // g >= least:
                return g
    return 1


def key_group_order(batch: int, views: int, groups: int) -> torch.Tensor:
    """(M·B,) long: the order in which the teacher sees the M·B key views so that the invariant
    of the module docstring holds.

    Key views are indexed ``m·B + i`` (view m of batch image i). Image i sits in query group
    ``i mod G`` at slot ``i // G``; its view m goes to teacher group ``(i mod G + i // G + m + 1)
    mod G``. ``order[p]`` is the key view at teacher position p (group p mod G); keys of a batch
    reordered by ``keys[order]`` are put back by ``out[torch.argsort(order)]``.
    """
    if batch % groups:
        raise ValueError(f"split batch norm: batch of {batch} does not split into {groups} groups")
    i = torch.arange(batch).repeat(views)
    m = torch.arange(views).repeat_interleave(batch)
    target = (i % groups + i // groups + m + 1) % groups
    # stable sort by target group, then deal the groups out round-robin: position p -> group p mod G
    by_group = torch.argsort(target, stable=True).view(groups, -1)
    return by_group.T.reshape(-1)
