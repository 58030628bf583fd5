"""How a training step runs its student and teacher: the machinery below the methods.

A method (:mod:`s2mts2.methods`) calls ``runner.student(x)`` and ``runner.teacher(x)`` and gets
float32 outputs; what happens in between is this module's: the precision's autocast and memory
layout, ``torch.compile``, CUDA-graph capture and replay (:mod:`s2mts2.runtime.graphs`),
MoCo's batch-shuffle BN across processes and split batch norm on one process
(:mod:`s2mts2.runtime.split_bn`) for the teacher's key views, and, after each update, the
averaging of floating buffers over the ranks (:mod:`s2mts2.runtime.distributed`). The default
runner (no option set) runs both networks eagerly: a step on one process behaves the same with
or without the options, up to floating-point rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from s2mts2.runtime.device import Precision, compiled
from s2mts2.runtime.distributed import average_buffers, shuffled_forward
from s2mts2.runtime.graphs import GraphedInference, graphed_training_forward
from s2mts2.runtime.split_bn import key_group_order, set_bn_groups, split_batchnorm


class StepRunner:
    """Runs ``student`` (trained; under DDP the DDP wrapper) and ``teacher`` (an EMA teacher: a
    module with ``.module``, the network, and ``.steps``, its update count) for one method.

    ``compile`` runs both through ``torch.compile`` (:func:`compiled`); ``cuda_graphs`` (one CUDA
    process, not with ``compile`` or ``shuffle_bn``) captures the student's forward/backward and
    the teacher's forward at :meth:`capture` and replays them after; every call must then bring
    inputs of the captured shape. ``shuffle_bn`` runs the teacher on a random cross-rank
    permutation of its batch, drawn from (``seed``, teacher update count), the same on every rank.
    ``bn_groups`` G ≥ 1 makes the BatchNorm of student and teacher split batch norm, in G groups
    (one process, G > 1: the teacher's batch of ``views`` key views per image is regrouped across
    them); 0 leaves the BatchNorm as it is.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Any,
        precision: Precision,
        *,
        compile: bool = False,
        cuda_graphs: bool = False,
        shuffle_bn: bool = False,
        seed: int = 0,
        bn_groups: int = 0,
        views: int = 1,
    ) -> None:
        if cuda_graphs and (compile or shuffle_bn):
            raise ValueError("cuda_graphs runs neither with compile nor with shuffle_bn")
        if bn_groups > 1 and shuffle_bn:
            raise ValueError("split batch norm (bn_groups > 1) is for one process, not shuffle_bn")
        self.networks = (student, teacher)
        self.precision = precision
        self.compile, self.cuda_graphs, self.shuffle_bn = compile, cuda_graphs, shuffle_bn
        self.seed, self.bn_groups, self.views = seed, bn_groups, views
        if bn_groups > 0:  # G = 1 splits nothing but leaves G settable (stage 1 always has it)
            for net in (student, teacher.module):
                set_bn_groups(split_batchnorm(net), bn_groups)
        self._key_order: tuple[torch.Tensor, torch.Tensor] | None = None  # order, its inverse
        self._student = compiled(student, compile)
        self._teacher = compiled(teacher, compile)
        self._captured: torch.Size | None = None  # the views' shape the graphs were made for

    def student(self, x: torch.Tensor) -> torch.Tensor:
        """The student's float32 output for the batch ``x`` (B, C, S, S), with gradient."""
        with self.precision.autocast():
            return self._student(self.precision.layout(x)).float()

    @torch.no_grad()
    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 output for ``x`` (N, C, S, S), without gradient; for a step with
        ``views`` > 1, ``x`` is the key views (M·B, ...), view-major, of B images."""
        x = self.precision.layout(x)
        with self.precision.autocast():
            if self.bn_groups > 1:
                order, inverse = self._regrouping(x)
                return self._run_teacher(x[order])[inverse].float()
            if not self.shuffle_bn:
                return self._run_teacher(x).float()
            if (
                self.precision.dtype is not None
            ):  # what autocast feeds the first conv: half the bytes
                x = x.to(self.precision.dtype)
            seed = self.seed * 1_000_003 + self.networks[1].steps
            return shuffled_forward(self._run_teacher, x, seed).float()

    def after_update(self) -> None:
        """After the optimiser and EMA updates: floating buffers of student and teacher averaged
        over the ranks (nothing on one process)."""
        average_buffers(*self.networks)

    def capture(self, shape: torch.Size) -> None:
        """The networks' CUDA graphs for views (1+M, B, C, S, S) of ``shape``, once (a no-op
        without ``cuda_graphs``). No other thread may use the GPU meanwhile."""
        if not self.cuda_graphs:
            return
        if self._captured is None:
            student, teacher = self.networks
            views = torch.zeros(shape, device=next(student.parameters()).device)
            query = self.precision.layout(views[0])
            keys_in = self.precision.layout(views[1:].flatten(0, 1))
            self._student = graphed_training_forward(student, query, self.precision)
            self._teacher = GraphedInference(teacher, keys_in, self.precision)
            self._captured = shape
        elif shape != self._captured:
            raise ValueError(
                f"cuda_graphs: views of shape {tuple(shape)}, but the graphs were captured for "
                f"{tuple(self._captured)} (every step must bring a full batch)"
            )

    def _run_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self._teacher(self.precision.layout(x))

    def _regrouping(self, keys_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key views' order for split batch norm and its inverse (made once, on the device)."""
        if self._key_order is None or len(self._key_order[0]) != len(keys_in):
            order = key_group_order(len(keys_in) // self.views, self.views, self.bn_groups)
            self._key_order = order.to(keys_in.device), torch.argsort(order).to(keys_in.device)
        return self._key_order
