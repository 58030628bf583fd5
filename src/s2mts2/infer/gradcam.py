"""Grad-CAM (Selvaraju et al., 2017) on a backbone stage's feature map, and labelled overlays.

For a class score y_c (the logit, before sigmoid/softmax) and the feature map A (B, F, h, w) of
the target layer (one of :func:`~s2mts2.models.backbones.cam_layers`):

    α_k = mean_{i,j} ∂y_c / ∂A_k[i, j]            (B, F)
    CAM = ReLU(Σ_k α_k · A_k)                      (B, h, w)

A forward hook records A; one ``autograd.grad`` per requested class gives the gradients. The
network must be in eval mode (BatchNorm then keeps the samples of a batch independent).
The map covers the whole squashed input, so it is stretched back to the original image's
height and width for the overlay.

The default layer is the deepest whose map is at least ``MIN_CAM_SIDE`` (7) pixels on a side at
the model's input size: the last stage's map is 1x1 for a ResNet-18 at 32 px, and its overlay one
flat tint. Where even the shallowest stage is coarser, that one is used and callers warn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from s2mts2.errors import ConfigError
from s2mts2.files import write_atomic
from s2mts2.models.backbones import cam_layers
from s2mts2.models.heads import Network

MIN_CAM_SIDE = 7  # the default layer's map is at least this many pixels on a side
AUTO = "auto"
LABEL_FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
MIN_LABELLED_SIDE = 256  # smaller images are enlarged for a legible label


@dataclass(frozen=True)
class CamLayer:
    """The Grad-CAM target: the layer's ``name`` and ``module``; ``sides`` {layer name: side of
    its square map} of every candidate layer at the model's input ``size``."""

    name: str
    module: nn.Module
    sides: dict[str, int]
    size: int

    @property
    def side(self) -> int:
        return self.sides[self.name]

    def describe(self) -> str:
        return f"{self.name} ({self.side}x{self.side} map at {self.size} px)"

    def warning(self) -> str | None:
        """Why the map is too coarse (below ``MIN_CAM_SIDE`` on a side) and which layers are
        finer; None when it is not."""
        if self.side >= MIN_CAM_SIDE:
            return None
        finer = [f"{name} ({side}x{side})" for name, side in self.sides.items() if side > self.side]
        hint = (
            f"--cam-layer {', '.join(finer)} gives a finer map"
            if finer
            else "a model trained at a larger image size gives a finer map"
        )
        look = "one flat tint" if self.side == 1 else f"a blur of {self.side}x{self.side} cells"
        return (
            f"Grad-CAM at {self.describe()}: coarser than {MIN_CAM_SIDE}x{MIN_CAM_SIDE}, every "
            f"overlay is {look}; {hint}"
        )


def map_sides(net: Network, channels: int, size: int) -> dict[str, int]:
    """Side of each :func:`cam_layers` map for a (1, channels, size, size) input (one forward
    pass without gradients; ``net`` in eval mode)."""
    layers = cam_layers(net.backbone)
    sides: dict[str, int] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: sides.__setitem__(name, min(out.shape[-2:]))
        )
        for name, module in layers.items()
    ]
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net.backbone(torch.zeros(1, channels, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return sides


def select_cam_layer(net: Network, channels: int, size: int, choice: str | None = None) -> CamLayer:
    """The Grad-CAM layer for inputs of (channels, size, size): ``choice`` (a name of
    :func:`cam_layers`), or for None / ``"auto"`` the deepest whose map is at least
    ``MIN_CAM_SIDE`` on a side (the shallowest when none is). A ConfigError names the choices."""
    layers = cam_layers(net.backbone)
    if choice not in (None, AUTO) and choice not in layers:
        raise ConfigError(
            f"--cam-layer: {choice!r} is not a layer of this network; choose {AUTO} or one of "
            f"{', '.join(layers)} (shallow to deep)"
        )
    sides = map_sides(net, channels, size)
    if choice in (None, AUTO):
        fine = [name for name in layers if sides[name] >= MIN_CAM_SIDE]
        choice = fine[-1] if fine else next(iter(layers))
    return CamLayer(choice, layers[choice], sides, size)


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
    ``layer`` defaults to :func:`select_cam_layer`'s choice for x's size.
    """
    if layer is None:
        layer = select_cam_layer(net, x.shape[1], min(x.shape[-2:])).module
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


def labelled_overlay(image: np.ndarray, cam: np.ndarray, label: str) -> np.ndarray:
    """:func:`overlay` with ``label`` written in a white band above it: uint8 (H', W', 3).

    An image under ``MIN_LABELLED_SIDE`` pixels on its longest side is first enlarged by a whole
    factor (nearest neighbour: its pixels stay visible), so that the label is legible; the
    font shrinks until the label fits the width.
    """
    factor = -(-MIN_LABELLED_SIDE // max(image.shape[:2]))
    big = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image
    picture = Image.fromarray(overlay(big, cam))
    width = picture.width
    size = max(10, width // 20)
    font = ImageFont.truetype(str(LABEL_FONT), size)
    while size > 8 and font.getlength(label) > width - size:
        size -= 1
        font = ImageFont.truetype(str(LABEL_FONT), size)
    band = int(size * 1.6)
    canvas = Image.new("RGB", (width, picture.height + band), "white")
    canvas.paste(picture, (0, band))
    ImageDraw.Draw(canvas).text((size // 2, band // 2), label, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def save_overlay(path: str | Path, image: np.ndarray, cam: np.ndarray, label: str) -> None:
    """Write :func:`labelled_overlay` of ``image`` (H, W, C), ``cam`` (h, w) and ``label`` as
    a PNG."""
    pixels = labelled_overlay(image, cam, label)
    write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
