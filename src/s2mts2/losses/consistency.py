"""Mean-teacher consistency: squared distance between student and teacher probabilities."""

from __future__ import annotations

import math
from typing import Literal

import torch

from s2mts2.task import Task


def probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """(N, C) logits -> probabilities: sigmoid (multilabel) or softmax over C (multiclass)."""
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    raise ValueError(f"task must be 'multilabel' or 'multiclass', got {task!r}")


def consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, task: Task
) -> torch.Tensor:
    """mean over all N·C entries of (σ(s) − σ(t))², σ per ``task``; float32 scalar at least.

    Args:
        student_logits: (N, C), receives the gradient.
        teacher_logits: (N, C), detached (no gradient reaches the teacher).
        task: ``multilabel`` (sigmoid) or ``multiclass`` (softmax).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"logits must both be (N, C), got {tuple(student_logits.shape)}, "
            f"{tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student = probabilities(student_logits.to(dtype), task)
    teacher = probabilities(teacher_logits.detach().to(dtype), task)
    return (student - teacher).square().mean()


def consistency_weight(
    epoch_progress: float,
    *,
    max_weight: float,
    ramp_epochs: float,
    kind: Literal["linear", "sigmoid"],
) -> float:
    """Ramp-up w(t) of the consistency weight; t = epochs done (fractional), E = ``ramp_epochs``.

    ``linear`` (released S²MTS² scripts): max·min(t/E, 1).
    ``sigmoid`` (classic Mean Teacher): max·exp(−5(1 − min(t/E, 1))²).
    E = 0 gives ``max_weight`` at once; t < 0 counts as 0.
    """
    progress = 1.0 if ramp_epochs <= 0 else min(max(epoch_progress, 0.0) / ramp_epochs, 1.0)
    if kind == "linear":
        return max_weight * progress
    if kind == "sigmoid":
        return max_weight * math.exp(-5.0 * (1.0 - progress) ** 2)
    raise ValueError(f"consistency ramp kind must be 'linear' or 'sigmoid', got {kind!r}")
