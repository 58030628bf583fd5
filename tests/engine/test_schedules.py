"""The schedules against their formulas: JCL's λ ramp, the cosine LR with warm-up, and the
backbone's LR scale in stage 2."""

import math

import pytest
import torch

from s2mts2.config import FinetuneConfig, ModelConfig, PretrainConfig
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.schedule import cosine_lr, set_lr
from s2mts2.methods.contrastive import lambda_at
from s2mts2.methods.mean_teacher import build_optimizer


def test_lambda_ramps_linearly_to_lam_max_per_epoch():
    """docs/method.md: λ_t = λ_max·(epoch+1)/epochs; MoCo has no λ."""
    cfg = PretrainConfig(epochs=4, lam_max=2.0)
    assert [lambda_at(cfg, e) for e in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    cfg.loss = "moco"
    assert lambda_at(cfg, 3) == 0.0


def test_cosine_lr_with_linear_warmup():
    base, total, warmup = 0.1, 110, 10
    warm = [cosine_lr(base, s, total, warmup) for s in range(warmup)]
    assert warm == pytest.approx([base * (s + 1) / warmup for s in range(warmup)])
    for s in (10, 35, 60, 85, 109):
        t = (s - warmup) / (total - warmup)
        assert cosine_lr(base, s, total, warmup) == pytest.approx(
            base * (1 + math.cos(math.pi * t)) / 2
        )
    assert cosine_lr(base, 60, total, warmup) == pytest.approx(base / 2)
    assert cosine_lr(base, 500, total, warmup) == pytest.approx(0.0, abs=1e-12)  # stays at 0
    assert cosine_lr(base, 0, total) == pytest.approx(base)  # no warm-up: starts at base


def test_the_backbone_trains_at_its_lr_scale():
    net = classifier_network(ModelConfig(backbone="resnet18_small"), 1, 3)
    for optimizer in ("adam", "sgd"):
        opt = build_optimizer(net, FinetuneConfig(optimizer=optimizer, backbone_lr_scale=0.25))
        set_lr(opt, 0.02)
        backbone, head = opt.param_groups
        assert backbone["lr"] == pytest.approx(0.005) and head["lr"] == pytest.approx(0.02)
        assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
        assert {id(p) for p in head["params"]} == {id(p) for p in net.head.parameters()}
        assert isinstance(opt, torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)
