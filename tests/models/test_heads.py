"""Heads and the backbone + head network; stage 2 loads only the stage-1 backbone."""

import pytest
import torch
from torch import nn

from s2mts2.errors import ConfigError
from s2mts2.models.heads import ClassifierHead, Network, ProjectionHead, load_backbone_state


def _backbone() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_projection_head_shapes_and_norm():
    head = ProjectionHead(16, 32)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(5))
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 128)]
    assert ProjectionHead(16, out_dim=8)(torch.randn(2, 16)).shape == (2, 8)
    x = torch.randn(3, 16)
    first, last = linears
    expected = nn.functional.normalize(last(torch.relu(first(x))), dim=1)  # linear-ReLU-linear
    assert torch.allclose(head(x), expected, atol=1e-6)


def test_classifier_head_shape_and_no_last_bias():
    head = ClassifierHead(16, 7)
    assert head(torch.randn(3, 16)).shape == (3, 7)
    first, last = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert (first.in_features, first.out_features) == (16, 16) and first.bias is not None
    assert last.bias is None and last.out_features == 7
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in head.modules())
    assert ClassifierHead(16, 3, hidden_dim=4).mlp[0].out_features == 4


def test_network_forward_and_features():
    net = Network(_backbone(), ClassifierHead(8, 3))
    x = torch.randn(2, 1, 12, 12)
    assert net.features(x).shape == (2, 8)
    assert torch.equal(net(x), net.head(net.features(x)))


def test_load_backbone_state_loads_backbone_only():
    torch.manual_seed(0)
    stage1 = Network(_backbone(), ProjectionHead(8, 8))
    stage1.backbone[1].running_mean.fill_(0.5)
    stage2 = Network(_backbone(), ClassifierHead(8, 3))
    head_before = {k: v.clone() for k, v in stage2.head.state_dict().items()}
    state = {f"module.{k}": v for k, v in stage1.state_dict().items()}  # as saved under DDP
    ignored = load_backbone_state(stage2, state)
    assert ignored == sorted(k for k in stage1.state_dict() if k.startswith("head."))
    for key, value in stage1.backbone.state_dict().items():
        assert torch.equal(stage2.backbone.state_dict()[key], value)
    for key, value in stage2.head.state_dict().items():
        assert torch.equal(value, head_before[key])


def test_load_backbone_state_errors():
    net = Network(_backbone(), ClassifierHead(8, 3))
    with pytest.raises(ConfigError, match="backbone"):
        load_backbone_state(net, {"head.mlp.0.weight": torch.zeros(1)})
    other = Network(nn.Sequential(nn.Conv2d(1, 4, 3)), ProjectionHead(4))
    with pytest.raises(ConfigError, match="model.backbone"):
        load_backbone_state(net, other.state_dict())
    partial = dict(Network(_backbone(), ProjectionHead(8, 8)).state_dict())
    del partial["backbone.1.running_var"]  # one backbone entry missing: refused, not half-loaded
    with pytest.raises(ConfigError, match="model.backbone"):
        load_backbone_state(net, partial)
