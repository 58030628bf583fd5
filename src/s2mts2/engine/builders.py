"""Networks of both stages built from the model config."""

from __future__ import annotations

from dataclasses import asdict, replace

from s2mts2.config import AugmentOverrides, ModelConfig
from s2mts2.data.augment import BatchAugment, eval_transform, strong_augment, weak_augment
from s2mts2.models.backbones import build_backbone
from s2mts2.models.heads import ClassifierHead, Network, ProjectionHead


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
