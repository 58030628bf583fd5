"""Stage 1: self-supervised mean teacher with JCL (or MoCo's InfoNCE), one optimisation step.

Per step (docs/method.md): 1 query view + M key views of every image; student -> q (B, D);
teacher (EMA of the student, no gradient) -> keys (B, M, D); loss = jcl_loss(q, keys, queue, τ,
λ_t); SGD step; teacher EMA update; enqueue μ, the mean key (as is, or μ/|μ| with
``pretrain.queue_entries: normalised_mean``). A query's own image's earlier key in the queue is
not one of its negatives (``exclude_own_keys``).

How the two networks run (precision, torch.compile, CUDA graphs, batch-shuffle or split batch
norm, DDP) is the :class:`~s2mts2.runtime.runner.StepRunner`'s; the engine builds both
(:func:`s2mts2.engine.builders.contrastive_step`) and runs the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from s2mts2.config import PretrainConfig
from s2mts2.data.augment import BatchAugment, multi_view
from s2mts2.losses import jcl_loss
from s2mts2.models.ema import EmaTeacher
from s2mts2.models.queue import NegativeQueue
from s2mts2.runtime.device import Precision, optimizer_kernels
from s2mts2.runtime.runner import StepRunner


def lambda_at(cfg: PretrainConfig, epoch: int) -> float:
    """λ_t = λ_max·(epoch+1)/epochs for JCL; 0 for MoCo (InfoNCE with the mean key)."""
    if cfg.loss == "moco":
        return 0.0
    return cfg.lam_max * (epoch + 1) / cfg.epochs


def build_optimizer(
    net: nn.Module, pc: PretrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """SGD over the student's parameters (:func:`optimizer_kernels` for ``device``)."""
    return torch.optim.SGD(
        net.parameters(),
        lr=pc.lr,
        momentum=pc.momentum,
        weight_decay=pc.weight_decay,
        **optimizer_kernels(device),
    )


@dataclass
class ContrastiveStep:
    """One stage-1 step; ``views`` and ``train`` are separate so speed can be split.

    views(images_u8 (B, C, H, W)) -> (1+M, B, C, S, S) float; train(views, λ) -> loss (0-d tensor,
    this rank's, not synchronised to the host). Under DDP ``student`` is the DDP wrapper and B the
    per-rank batch. ``scaler`` scales the loss (a pass-through unless fp16); ``runner`` runs the
    networks (default: eagerly in ``precision``).
    """

    student: nn.Module
    teacher: EmaTeacher
    queue: NegativeQueue
    optimizer: torch.optim.Optimizer
    augment: BatchAugment
    cfg: PretrainConfig
    precision: Precision
    scaler: torch.amp.GradScaler
    runner: StepRunner | None = None
    exclude_own_keys: bool = True

    def __post_init__(self) -> None:
        if self.runner is None:
            self.runner = StepRunner(
                self.student, self.teacher, self.precision, bn_groups=1, views=self.cfg.views
            )

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return multi_view(images, 1 + self.cfg.views, self.augment, generator)

    def train(
        self, views: torch.Tensor, lam: float, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step on ``views`` (1+M, B, C, S, S) of the images ``ids`` (B,) (table rows, on the
        device; None: unknown images, whose queue entries are no query's own)."""
        m, b = self.cfg.views, views.shape[1]
        if ids is None:
            ids = torch.full((b,), -1, dtype=torch.long, device=self.queue.ids.device)
        self.runner.capture(views.shape)  # CUDA graphs, at the first step (else a no-op)
        q = self.runner.student(views[0])  # (B, D)
        k = self.runner.teacher(views[1:].flatten(0, 1))  # (M·B, D), no gradient
        keys = k.view(m, b, -1).transpose(0, 1)  # (B, M, D)
        loss = jcl_loss(
            q,
            keys,
            self.queue.negatives(),
            temperature=self.cfg.temperature,
            lam=lam,
            exclude=self.queue.own_entries(ids) if self.exclude_own_keys else None,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.teacher.update(self.student)
        self.runner.after_update()
        mu = keys.mean(dim=1)  # (B, D)
        self.queue.enqueue(F.normalize(mu, dim=1) if self.cfg.queue_entries != "mean" else mu, ids)
        return loss.detach()
