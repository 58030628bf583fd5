"""Grad-CAM (Selvaraju et al., 2017) on the last spatial feature map, and heatmap overlays.

For a class score y_c (the logit, before sigmoid/softmax) and the feature map A (B, F, h, w) of
the target layer (``feature_layer(backbone)``: DenseNet ``features`` after norm5, ResNet
``layer4``):

    α_k = mean_{i,j} ∂y_c / ∂A_k[i, j]            (B, F)
    CAM = ReLU(Σ_k α_k · A_k)                      (B, h, w)

A forward hook records A; one ``autograd.grad`` per requested class gives the gradients. The
network must be in eval mode (BatchNorm then keeps the samples of a batch independent).
The map covers the whole squashed input, so it is stretched back to the original image's
height and width for the overlay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from s2mts2.files import write_atomic
from s2mts2.models.backbones import feature_layer
from s2mts2.models.heads import Network


def cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(B, F, h, w) feature map and ∂y/∂A -> (B, h, w) CAM = ReLU(Σ_k mean_ij(∂y/∂A_k) · A_k)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


@dataclass
class CamResult:
    """``logits`` (B, K); ``targets`` (B, T) class indices; ``maps`` (B, T, h, w) CAMs (≥ 0)."""

    logits: torch.Tensor
    targets: torch.Tensor
    maps: torch.Tensor


def grad_cam(
    net: Network,
    x: torch.Tensor,
    select: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module | None = None,
) -> CamResult:
    """Grad-CAM of ``net`` on the normalised input x (B, C, H, W).

    ``select`` maps the (B, K) logits to the (B, T) classes to explain (e.g. the top class).
    ``layer`` defaults to the backbone's last spatial feature map.
    """
    layer = feature_layer(net.backbone) if layer is None else layer
    recorded: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: recorded.append(out))
    try:
        with torch.enable_grad():
            logits = net(x.detach().requires_grad_(True)).float()
    finally:
        handle.remove()
    (activations,) = recorded
    targets = select(logits.detach())
    maps = []
    for t in range(targets.shape[1]):
        score = logits.gather(1, targets[:, t : t + 1]).sum()
        (grads,) = torch.autograd.grad(score, activations, retain_graph=t + 1 < targets.shape[1])
        maps.append(cam_from_gradients(activations.detach().float(), grads.float()))
    return CamResult(logits.detach(), targets, torch.stack(maps, dim=1))


def resize_cam(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) CAM -> (height, width) float32 in [0, 1]: bilinear, divided by its maximum.

    A CAM that is zero everywhere (no positive evidence) stays zero.
    """
    t = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    up = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    peak = float(up.max())
    return (up / peak if peak > 0 else up).clamp_(0.0, 1.0).numpy()


def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet"
) -> np.ndarray:
    """uint8 (H, W, 1|3) image + (h, w) CAM -> uint8 (H, W, 3): the coloured heatmap blended on."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    heat = resize_cam(cam, rgb.shape[0], rgb.shape[1])
    colours = matplotlib.colormaps[colormap](heat)[..., :3]
    blended = (1.0 - alpha) * (rgb.astype(np.float32) / 255.0) + alpha * colours
    return np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, cam: np.ndarray) -> None:
    """Write :func:`overlay` of ``image`` (H, W, C) and ``cam`` (h, w) as a PNG of size W x H."""
    write_atomic(path, lambda f: Image.fromarray(overlay(image, cam)).save(f, format="PNG"))
