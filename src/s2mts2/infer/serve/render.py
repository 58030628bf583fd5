"""Images for the page: PNG bytes of uint8 pixels, shrunk for display, and Grad-CAM overlays."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from s2mts2.infer.gradcam import overlay

DISPLAY_SIDE = 512  # longest side of the images the page shows (pixels)
PNG_LEVEL = 1  # zlib level: 20 ms for a 512 px overlay against 120 ms at Pillow's default 6


def display_pixels(pixels: np.ndarray, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """uint8 (H, W, C) -> at most ``max_side`` on the longest side, aspect kept (bilinear)."""
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    pil = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    out = np.asarray(pil.resize(size, Image.Resampling.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, 1|3) -> PNG file contents, compressed lightly (the page is local: a 512 px
    overlay encodes in a sixth of the default level's time for a sixth more bytes)."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    image.save(buf, "PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def overlay_png(pixels: np.ndarray, cam: np.ndarray) -> bytes:
    """PNG of the (h, w) CAM blended on uint8 (H, W, C) ``pixels`` (:func:`~..gradcam.overlay`)."""
    return png_bytes(overlay(pixels, cam))
