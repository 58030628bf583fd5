"""Schedules of both stages: the learning rate (warm-up, cosine decay, per-group scales) and the
augmentation RNG of each epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up then cosine decay to 0 over ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's LR to ``lr`` times its ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def epoch_generator(
    device: torch.device, seed: int, epoch: int, stream: int = 0, rank: int = 0
) -> torch.Generator:
    """Augmentation RNG of one epoch and DDP rank: a pure function of (seed, epoch, stream, rank),
    so resume is exact and every rank augments its slice of the global batch differently."""
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + epoch * 7919 + stream * 104_729 + rank * 15_485_863) % 2**63
    )


@dataclass
class Schedule:
    """The steps of a run and their learning rate (linear warm-up, cosine decay)."""

    epochs: int
    steps_per_epoch: int
    lr: float
    warmup_epochs: int = 0
    images_per_step: int = 1  # global batch, for the progress bar's images per second

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        warmup = self.steps_per_epoch * self.warmup_epochs
        return cosine_lr(self.lr, step, self.total_steps, warmup)
