"""Fixed photometric changes of uint8 images: a deterministic stand-in for images of another source.

Dermoscopy from another clinic differs in colour, contrast and exposure. ``DERMOSCOPY_SHIFTS``
are three fixed changes of the uint8 images, each applied alone, before the evaluation transform
(so at the cache resolution), with the result rounded to the nearest integer and clipped to
0..255:

- ``colour-cast``: channel gains (R, G, B) = (1.10, 0.95, 0.80), a warm illuminant;
- ``low-contrast``: x ↦ m + 0.6 (x − m), m the mean of the image over its pixels and channels;
- ``gamma``: x ↦ 255 (x / 255)^1.5, darker mid-tones (0 and 255 stay).

An :class:`ImageShift` with no change returns its input bytes unchanged, so its predictions are
those of the unshifted images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2mts2.errors import DataError


@dataclass(frozen=True)
class ImageShift:
    """One photometric change, applied in the order gains, contrast, gamma."""

    name: str
    gains: tuple[float, ...] | None = None  # one multiplier per channel; None = no cast
    contrast: float = 1.0  # factor of the deviation from the image's mean; 1 = unchanged
    gamma: float = 1.0  # exponent on intensities scaled to [0, 1]; 1 = unchanged

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 -> (B, C, H, W) uint8 on the same device."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(
                f"shift {self.name}: expected (B, C, H, W) uint8 images, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if self.gains is None and self.contrast == 1.0 and self.gamma == 1.0:
            return images
        x = images.float()
        if self.gains is not None:
            if len(self.gains) != x.shape[1]:
                raise DataError(
                    f"shift {self.name}: {len(self.gains)} channel gains for images with "
                    f"{x.shape[1]} channel(s)"
                )
            x = x * torch.tensor(self.gains, device=x.device).view(1, -1, 1, 1)
        if self.contrast != 1.0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + self.contrast * (x - mean)
        if self.gamma != 1.0:
            x = 255.0 * (x.clamp(0.0, 255.0) / 255.0) ** self.gamma
        return x.round().clamp(0.0, 255.0).to(torch.uint8)


DERMOSCOPY_SHIFTS = (
    ImageShift("colour-cast", gains=(1.10, 0.95, 0.80)),
    ImageShift("low-contrast", contrast=0.6),
    ImageShift("gamma", gamma=1.5),
)
