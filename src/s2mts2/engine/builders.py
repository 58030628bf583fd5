"""The one place steps are built: networks, augmentation and the steps of both stages from a
config, for the training commands, the benchmark and the tests alike."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn

from s2mts2.config import AugmentOverrides, ModelConfig, PretrainConfig, RunConfig
from s2mts2.data.augment import BatchAugment, eval_transform, strong_augment, weak_augment
from s2mts2.errors import ConfigError
from s2mts2.methods.contrastive import ContrastiveStep
from s2mts2.methods.contrastive import build_optimizer as contrastive_optimizer
from s2mts2.methods.mean_teacher import MeanTeacherStep
from s2mts2.methods.mean_teacher import build_optimizer as mean_teacher_optimizer
from s2mts2.models.backbones import build_backbone
from s2mts2.models.ema import EmaTeacher
from s2mts2.models.heads import ClassifierHead, Network, ProjectionHead
from s2mts2.models.queue import NegativeQueue
from s2mts2.runtime.device import Precision
from s2mts2.runtime.distributed import sync_batchnorm, world_size, wrap_ddp
from s2mts2.runtime.graphs import uses_cuda_graphs
from s2mts2.runtime.runner import StepRunner
from s2mts2.runtime.split_bn import default_bn_groups


def pretrain_network(cfg: ModelConfig, channels: int) -> Network:
    """Backbone + projection head: (B, channels, H, W) -> (B, proj_dim), L2-normalised."""
    backbone, dim = build_backbone(
        cfg.backbone,
        in_channels=channels,
        init=cfg.init,
        weights=cfg.weights or None,
    )
    return Network(backbone, ProjectionHead(dim, cfg.proj_hidden or None, cfg.proj_dim))


def classifier_network(
    cfg: ModelConfig, channels: int, num_classes: int, init: str | None = None
) -> Network:
    """Backbone + classifier head: (B, channels, H, W) -> (B, num_classes) logits.

    ``init`` overrides ``cfg.init`` (``random`` when the backbone is loaded from stage 1 anyway).
    """
    backbone, dim = build_backbone(
        cfg.backbone,
        in_channels=channels,
        init=init or cfg.init,
        weights=cfg.weights or None,
    )
    return Network(backbone, ClassifierHead(dim, num_classes, cfg.head_hidden or None))


def build_augment(
    kind: str, channels: int, size: int, overrides: AugmentOverrides | None = None
) -> BatchAugment:
    """``strong`` (stage 1) or ``weak`` (stage 2) preset with the config's overrides applied."""
    presets = {"strong": strong_augment, "weak": weak_augment}
    config = presets[kind](channels, size)
    if overrides is not None:
        changes = {k: v for k, v in asdict(overrides).items() if v is not None}
        if "crop_scale_min" in changes:
            changes["crop_scale"] = (changes.pop("crop_scale_min"), config.crop_scale[1])
        config = replace(config, **changes)
    return BatchAugment(config)


def build_eval_transform(channels: int, size: int) -> BatchAugment:
    """The deterministic evaluation transform: resize to ``size`` and normalise."""
    return BatchAugment(eval_transform(channels, size))


def resolve_bn_groups(pc: PretrainConfig, batch: int, world: int) -> int:
    """The split-batch-norm groups G for a per-process ``batch`` (1: off).

    ``pretrain.bn_groups`` 0 (auto) splits on one process (:func:`default_bn_groups`) and not
    under torchrun, where batch-shuffle BN (``shuffle_bn``) or SyncBatchNorm protects instead.
    """
    if pc.bn_groups == 0:
        return default_bn_groups(batch) if world == 1 else 1
    if pc.bn_groups > 1 and world > 1:
        raise ConfigError(
            f"pretrain.bn_groups={pc.bn_groups}: split batch norm is for one process; with "
            f"{world} processes use pretrain.shuffle_bn (or model.sync_bn) and bn_groups 0 or 1"
        )
    if batch % pc.bn_groups:
        raise ConfigError(
            f"pretrain.bn_groups={pc.bn_groups} must divide the batch of {batch} images"
        )
    return pc.bn_groups


def contrastive_step(
    cfg: RunConfig,
    net: nn.Module,
    channels: int,
    device: torch.device,
    precision: Precision,
    *,
    queue_size: int,
    batch: int,
) -> ContrastiveStep:
    """The stage-1 step of ``cfg`` around ``net`` (:func:`pretrain_network`, moved to ``device``
    here): EMA teacher, queue of ``queue_size``, SGD, strong augmentation, and the runner of this
    process (DDP wrapper, compile, CUDA graphs, batch-shuffle or split BN for a per-process
    ``batch``). The undecorated network is ``step.teacher``'s student and the optimiser's."""
    pc, world = cfg.pretrain, world_size()
    net = precision.prepare(sync_batchnorm(net, cfg.model.sync_bn, device), device)
    teacher = EmaTeacher(net, ema=pc.ema, buffers=pc.ema_buffers)
    queue = NegativeQueue(queue_size, cfg.model.proj_dim).to(device)
    optimizer = contrastive_optimizer(net, pc, device)
    augment = build_augment("strong", channels, cfg.data.size, pc.augment)
    student = wrap_ddp(net, device)
    runner = StepRunner(
        student,
        teacher,
        precision,
        compile=cfg.compile,
        cuda_graphs=uses_cuda_graphs(cfg.cuda_graphs, cfg.compile, device, world),
        shuffle_bn=pc.shuffle_bn and not cfg.model.sync_bn and world > 1,
        seed=cfg.seed,
        bn_groups=resolve_bn_groups(pc, batch, world),
        views=pc.views,
    )
    return ContrastiveStep(
        student,
        teacher,
        queue,
        optimizer,
        augment,
        pc,
        precision,
        precision.scaler(),
        runner,
        exclude_own_keys=pc.exclude_own_keys,
    )


def mean_teacher_step(
    cfg: RunConfig,
    net: Network,
    channels: int,
    task: str,
    device: torch.device,
    precision: Precision,
    *,
    pos_weight: torch.Tensor | None = None,
) -> MeanTeacherStep:
    """The stage-2 step of ``cfg`` around ``net`` (:func:`classifier_network`, initialised;
    moved to ``device`` here): EMA teacher, optimiser, augmentation at stage 2's size, and the
    runner of this process (DDP wrapper, compile)."""
    fc = cfg.finetune
    net = precision.prepare(sync_batchnorm(net, cfg.model.sync_bn, device), device)
    # The supervised baseline never runs its teacher on training images, so the teacher cannot
    # keep BatchNorm statistics of its own: average the student's instead.
    semi = fc.method != "supervised"
    buffers = "ema" if not semi and fc.ema_buffers == "own" else fc.ema_buffers
    teacher = EmaTeacher(net, ema=fc.ema, buffers=buffers)
    optimizer = mean_teacher_optimizer(net, fc)
    size = cfg.finetune_size()
    augment = build_augment(fc.augment_preset, channels, size, fc.augment)
    student = wrap_ddp(net, device)
    return MeanTeacherStep(
        student,
        teacher,
        optimizer,
        augment,
        task,
        pos_weight,
        fc.independent_views,
        precision,
        precision.scaler(),
        StepRunner(student, teacher, precision, compile=cfg.compile),
    )
