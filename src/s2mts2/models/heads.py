"""Heads on pooled features and the backbone + head network used by both stages."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from s2mts2.errors import ConfigError


class ProjectionHead(nn.Module):
    """Stage-1 MLP (MoCo v2 / JCL): Linear -> ReLU -> Linear, L2-normalised: (B, in) -> (B, out).

    The released S²MTS² code applies an extra 1024->1024 layer twice before this MLP (a quirk);
    it is not reproduced here.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)


class ClassifierHead(nn.Module):
    """Stage-2 head as released: Linear(in, h) -> LeakyReLU(0.1) -> Linear(h, C, no bias).

    (B, in) -> (B, C) logits; ``h`` defaults to ``in_dim``.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Network(nn.Module):
    """Backbone + head: ``forward(x) = head(backbone(x))``, x (B, C, H, W)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, F)."""
        return self.backbone(x)


def load_backbone_state(net: Network, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load the ``backbone.*`` entries of a full network's state_dict into ``net.backbone``.

    Used to start stage 2 from a stage-1 network: the projection head is left out. A ``module.``
    prefix (a DDP-wrapped model's state_dict) is removed first. Loading is strict on the backbone.

    Returns:
        The ignored keys (everything outside ``backbone.``), sorted.

    Raises:
        ConfigError: the backbone entries are missing or do not fit ``net.backbone``.
    """
    prefix = "backbone."
    keys = {k.removeprefix("module."): v for k, v in state_dict.items()}
    backbone = {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}
    if not backbone:
        raise ConfigError("checkpoint has no 'backbone.*' entries: not a s2mts2 network state")
    try:
        net.backbone.load_state_dict(backbone, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"checkpoint backbone does not fit the configured model.backbone: {err}"
        ) from err
    return sorted(k for k in keys if not k.startswith(prefix))
