"""Stage 2: semi-supervised mean teacher (and its supervised baseline), one optimisation step.

Per step: a labelled batch (x, y) and, for ``mean-teacher``/``s2mts2``, an unlabelled batch u:

    L = ℓ_sup(y, f_θ(x)) + w(t) · mean ‖σ(f_θ(u)) − σ(f_θ'(u'))‖²

with u' = u (same view) or an independent view, θ' the EMA teacher (momentum ``ema`` per step),
w(t) ramped by the engine. ``s2mts2`` is this step started from a stage-1 backbone; ``supervised`` is it
without u. How the networks run (precision, torch.compile, DDP) is the
:class:`~s2mts2.runtime.runner.StepRunner`'s; the engine builds both
(:func:`s2mts2.engine.builders.mean_teacher_step`) and runs the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from s2mts2.config import FinetuneConfig
from s2mts2.data.augment import BatchAugment
from s2mts2.losses import consistency_loss, supervised_loss
from s2mts2.models.ema import EmaTeacher
from s2mts2.models.heads import Network
from s2mts2.runtime.device import Precision, optimizer_kernels
from s2mts2.runtime.runner import StepRunner


def build_optimizer(net: Network, fc: FinetuneConfig) -> torch.optim.Optimizer:
    """Two groups: backbone (LR × ``backbone_lr_scale``) and head."""
    groups = [
        {"params": list(net.backbone.parameters()), "lr_scale": fc.backbone_lr_scale},
        {"params": list(net.head.parameters()), "lr_scale": 1.0},
    ]
    kernels = optimizer_kernels(next(net.parameters()).device)
    if fc.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=fc.lr, momentum=fc.momentum, weight_decay=fc.weight_decay, **kernels
        )
    return torch.optim.Adam(groups, lr=fc.lr, weight_decay=fc.weight_decay, **kernels)


@dataclass
class MeanTeacherStep:
    """One stage-2 step. ``views`` makes the float inputs, ``train`` optimises.

    views(labelled u8 (B, C, H, W), unlabelled u8 (U, C, H, W) | None) -> (x, u_student, u_teacher);
    train(x, y (B, C), u_student, u_teacher, w) -> (loss, supervised, consistency) 0-d tensors.
    Under DDP ``student`` is the DDP wrapper and B, U are this rank's batches. ``scaler`` scales
    the loss (a pass-through unless fp16); ``runner`` runs the networks (default: eagerly in
    ``precision``).
    """

    student: nn.Module
    teacher: EmaTeacher
    optimizer: torch.optim.Optimizer
    augment: BatchAugment
    task: str
    pos_weight: torch.Tensor | None
    independent_views: bool
    precision: Precision
    scaler: torch.amp.GradScaler
    runner: StepRunner | None = None

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = StepRunner(self.student, self.teacher, self.precision)

    def views(
        self, labelled: torch.Tensor, unlabelled: torch.Tensor | None, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = self.augment(labelled, gen)
        if unlabelled is None:
            return x, None, None
        u = self.augment(unlabelled, gen)
        return x, u, self.augment(unlabelled, gen) if self.independent_views else u

    def train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        u_student: torch.Tensor | None,
        u_teacher: torch.Tensor | None,
        weight: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = x if u_student is None else torch.cat([x, u_student])
        logits = self.runner.student(inputs)  # (B [+ U], C)
        teacher_logits = None if u_teacher is None else self.runner.teacher(u_teacher)  # (U, C)
        sup = supervised_loss(logits[: len(x)], y, self.task, self.pos_weight)
        if teacher_logits is None:
            cons = torch.zeros((), device=logits.device)
        else:
            cons = consistency_loss(logits[len(x) :], teacher_logits, self.task)
        loss = sup + weight * cons
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.teacher.update(self.student)
        self.runner.after_update()
        return loss.detach(), sup.detach(), cons.detach()
