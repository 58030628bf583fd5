"""Batched augmentation on the training device: uint8 (B, C, H, W) -> normalised float32.

Per-sample random parameters for the whole batch are drawn in one go (``sample_params``) and
applied with a fixed number of tensor operations (``apply``); nothing loops over the batch in
Python, so the same code runs on CPU and CUDA and a batch costs a handful of kernel launches.

Pipeline (the released strong augmentation, in its order):

1. geometry, one sampling grid (``affine_grid``'s, built by broadcasting) + ``grid_sample``
   per batch with a per-sample (2, 3) matrix covering RandomResizedCrop, resize to
   ``out_size``, rotation (RandomAffine degrees) and flips. Bilinear, ``align_corners=False``
   (identity parameters hit pixel centres exactly). An input larger than ``out_size`` (a cache
   above the training resolution) is first blurred per sample and axis where its crop shrinks
   (:func:`_antialias`), so a downscaled crop does not alias, as the antialiased resize of
   PIL / ``interpolate(antialias=True)``; an input of ``out_size`` is sampled as it is (a crop
   there never shrinks). Points outside the image use ``padding_mode`` (default
   ``reflection``: no black corners after rotation, unlike the zero fill of the released
   code). The crop aspect ratio is relative to the input's aspect ratio (the same as
   torchvision for square caches); a crop that does not fit after 10 tries falls back to the
   whole image.
2. colour jitter in a fixed order (brightness, contrast, saturation, hue) with torchvision's
   formulas (contrast and saturation blend with the ITU-R 601 grey, hue shifts in HSV); grey
   images (C = 1) ignore saturation and hue. The released code used hue 0.4 (a shift of up to
   +-144 degrees, which turns skin lesions blue or green); the default here is 0.1.
3. Gaussian blur with per-sample sigma in output pixels (the released code blurs with PIL at the
   training resolution), separable kernel of radius ``ceil(3 * sigma_max)``, reflect padding,
   grouped convolutions over the blurred samples only (CPU) or over all with a delta kernel
   where the blur is off (GPU, where selecting samples would wait for the device).
4. normalisation ``(x - mean) / std``.
5. random erasing of a per-sample box with 0 (the mean colour after normalisation), as
   torchvision's ``RandomErasing(value=0)``.

All randomness comes from ``generator`` (a ``torch.Generator`` on the images' device). Constants
enter as Python numbers, so a call makes no host-to-device copy that would wait for a GPU.

Example:
    >>> import torch
    >>> augment = BatchAugment(strong_augment(channels=1, out_size=32))
    >>> images = torch.randint(0, 256, (4, 1, 40, 40), dtype=torch.uint8)
    >>> generator = torch.Generator().manual_seed(0)
    >>> augment(images, generator).shape
    torch.Size([4, 1, 32, 32])
    >>> multi_view(images, 3, augment, generator).shape
    torch.Size([3, 4, 1, 32, 32])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from s2mts2.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.449,)  # channel average of the ImageNet statistics
GREY_STD = (0.226,)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
PADDING_MODES = ("zeros", "border", "reflection")
BOX_TRIES = 10


def _unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"augment.{name} = {value}: expected a probability in [0, 1]")
    return float(value)


def _range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ConfigError(
            f"augment.{name} = {value}: expected [min, max] with {low} <= min <= max <= {high}"
        )
    return float(value[0]), float(value[1])


def _non_negative(name: str, value: float, high: float = math.inf) -> float:
    if not 0.0 <= value <= high:
        raise ConfigError(f"augment.{name} = {value}: expected a number in [0, {high}]")
    return float(value)


@dataclass
class AugmentConfig:
    """Parameters of the batched augmentation; the defaults are the released strong augmentation.

    Ranges are ``(min, max)``. ``crop_scale``: crop area as a fraction of the image;
    ``crop_ratio`` and ``erase_ratio``: width/height relative to the image's aspect ratio
    (sampled log-uniformly); ``erase_scale``: erased area as a fraction of the output.
    ``brightness``, ``contrast``, ``saturation``: factors uniform in ``[max(0, 1 - v), 1 + v]``;
    ``hue``: shift uniform in ``[-hue, hue]`` turns (at most 0.5). ``rotate_deg``: angle uniform in
    ``[-rotate_deg, rotate_deg]`` (counter-clockwise). ``blur_sigma`` is in output pixels.
    ``mean``/``std``: per-channel normalisation; None = ImageNet statistics for 3 channels and
    their channel average (0.449 / 0.226) for grey images.
    """

    out_size: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate_deg: float = 10.0
    rotate_p: float = 0.5
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    padding_mode: str = "reflection"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.out_size is not None and self.out_size < 1:
            raise ConfigError(f"augment.out_size = {self.out_size}: expected a positive size")
        self.crop_scale = _range("crop_scale", self.crop_scale, 1e-6, 1.0)
        self.crop_ratio = _range("crop_ratio", self.crop_ratio, 1e-6, math.inf)
        self.erase_scale = _range("erase_scale", self.erase_scale, 0.0, 1.0)
        self.erase_ratio = _range("erase_ratio", self.erase_ratio, 1e-6, math.inf)
        self.blur_sigma = _range("blur_sigma", self.blur_sigma, 1e-6, math.inf)
        for name in ("rotate_p", "hflip_p", "vflip_p", "jitter_p", "blur_p", "erase_p"):
            setattr(self, name, _unit(name, getattr(self, name)))
        for name in ("rotate_deg", "brightness", "contrast", "saturation"):
            setattr(self, name, _non_negative(name, getattr(self, name)))
        self.hue = _non_negative("hue", self.hue, 0.5)
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"augment.padding_mode = {self.padding_mode!r}: expected one of {PADDING_MODES}"
            )
        if (self.mean is None) != (self.std is None):
            raise ConfigError("augment.mean and augment.std: give both or neither")
        if self.mean is not None and self.std is not None:
            self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ConfigError(
                    f"augment.mean {self.mean} / augment.std {self.std}: "
                    "expected one value per channel (1 or 3 channels) in each"
                )
            if min(self.std) <= 0:
                raise ConfigError(f"augment.std = {self.std}: expected positive values")

    def stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalisation (mean, std) for images with ``channels`` channels."""
        if self.mean is None or self.std is None:
            if channels not in (1, 3):
                raise DataError(f"augment: images have {channels} channels, expected 1 or 3")
            return (GREY_MEAN, GREY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        if len(self.mean) != channels:
            raise ConfigError(
                f"augment.mean has {len(self.mean)} values but the images have {channels} channels"
            )
        return self.mean, self.std


def strong_augment(channels: int, out_size: int | None = None) -> AugmentConfig:
    """The released stage-1 strong augmentation (crop 0.2-1, rotation, jitter, blur, erasing)."""
    config = AugmentConfig(out_size=out_size)
    mean, std = config.stats(channels)
    return replace(config, mean=mean, std=std)


def weak_augment(channels: int, out_size: int | None = None) -> AugmentConfig:
    """Fine-tuning augmentation: RandomResizedCrop (scale 0.7-1) and horizontal flip only.

    Stronger variants are a ``dataclasses.replace`` away (e.g. ``rotate_p``, ``jitter_p``).
    """
    off = dict(rotate_p=0.0, jitter_p=0.0, blur_p=0.0, erase_p=0.0)
    return replace(strong_augment(channels, out_size), crop_scale=(0.7, 1.0), **off)


def eval_transform(channels: int, out_size: int | None = None) -> AugmentConfig:
    """Evaluation: the whole image resized to ``out_size`` and normalised, nothing random."""
    return replace(
        weak_augment(channels, out_size), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0
    )


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch (B samples); all tensors live on the images' device.

    Attributes:
        crop: (B, 4) float: crop centre x, centre y, width, height as fractions of the input.
        angle: (B,) float: rotation in degrees, counter-clockwise; 0 where not rotated.
        hflip: (B,) bool. vflip: (B,) bool.
        jitter: (B,) bool, or None when no sample of the batch is jittered.
        jitter_factors: (B, 4) float: brightness, contrast, saturation factors and hue shift.
        blur: (B,) bool, or None when no sample is blurred. blur_sigma: (B,) float, output pixels.
        erase: (B,) bool, or None when no sample is erased.
        erase_box: (B, 4) float: centre x, centre y, width, height as fractions of the output.
    """

    crop: Tensor
    angle: Tensor
    hflip: Tensor
    vflip: Tensor
    jitter: Tensor | None
    jitter_factors: Tensor
    blur: Tensor | None
    blur_sigma: Tensor
    erase: Tensor | None
    erase_box: Tensor


def identity_params(batch: int, device: torch.device | str = "cpu") -> AugmentParams:
    """Parameters under which ``apply`` only resizes to ``out_size`` and normalises."""
    crop = torch.tensor([0.5, 0.5, 1.0, 1.0], device=device).repeat(batch, 1)
    no = torch.zeros(batch, dtype=torch.bool, device=device)
    return AugmentParams(
        crop=crop,
        angle=torch.zeros(batch, device=device),
        hflip=no,
        vflip=no.clone(),
        jitter=None,
        jitter_factors=torch.tensor([1.0, 1.0, 1.0, 0.0], device=device).repeat(batch, 1),
        blur=None,
        blur_sigma=torch.ones(batch, device=device),
        erase=None,
        erase_box=crop.clone(),
    )


def _uniform(
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    device: torch.device | str,
    gen: torch.Generator | None,
) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=gen, device=device)


def _sample_boxes(
    batch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str,
    gen: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Boxes inside the unit square with area in ``scale`` and log-uniform relative aspect ratio.

    Draws ``BOX_TRIES`` candidates per sample and keeps the first that fits, as torchvision.
    Returns (B, 4) boxes (centre x, centre y, width, height) and (B,) bool ``found``; where no
    candidate fits the box is the whole square.
    """
    area = _uniform((batch, BOX_TRIES), scale, device, gen)
    aspect = torch.exp(
        _uniform((batch, BOX_TRIES), (math.log(ratio[0]), math.log(ratio[1])), device, gen)
    )
    width, height = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (width <= 1.0) & (height <= 1.0)
    first = fits.int().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    width = torch.where(found, width.gather(1, first).squeeze(1), 1.0)
    height = torch.where(found, height.gather(1, first).squeeze(1), 1.0)
    centre = torch.rand((batch, 2), generator=gen, device=device)
    centre_x = width / 2 + centre[:, 0] * (1.0 - width)
    centre_y = height / 2 + centre[:, 1] * (1.0 - height)
    return torch.stack([centre_x, centre_y, width, height], dim=1), found


def _affine_theta(params: AugmentParams, out_hw: tuple[int, int]) -> Tensor:
    """(B, 2, 3) map from output to input normalised coordinates: flip, rotate, crop."""
    out_h, out_w = out_hw
    radians = torch.deg2rad(params.angle)
    cos, sin = torch.cos(radians), torch.sin(radians)
    flip_x = 1.0 - 2.0 * params.hflip.to(cos.dtype)
    flip_y = 1.0 - 2.0 * params.vflip.to(cos.dtype)
    # Rotation acts in output pixels; in normalised coordinates it is rescaled by the aspect.
    centre_x, centre_y, width, height = params.crop.unbind(1)
    row_x = torch.stack(
        [width * cos * flip_x, -width * sin * (out_h / out_w) * flip_y, 2.0 * centre_x - 1.0], 1
    )
    row_y = torch.stack(
        [height * sin * (out_w / out_h) * flip_x, height * cos * flip_y, 2.0 * centre_y - 1.0], 1
    )
    return torch.stack([row_x, row_y], dim=1)


def _pixel_centres(size: int, like: Tensor) -> Tensor:
    """(size,) normalised pixel-centre coordinates, as ``affine_grid(align_corners=False)``."""
    if size <= 1:
        return like.new_zeros(size)
    steps = torch.linspace(-1.0, 1.0, size, device=like.device, dtype=like.dtype)
    return steps * (size - 1) / size


def _sampling_grid(theta: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """(B, 2, 3) maps -> (B, H, W, 2) grid: ``F.affine_grid(theta, ..., align_corners=False)``.

    Each coordinate is a per-column term plus a per-row term, so the grid costs one
    broadcast add per coordinate instead of a (B, H·W, 3) batched matrix product (equal up
    to float rounding).
    """
    height, width = out_hw
    xs = _pixel_centres(width, theta).view(1, 1, -1)
    ys = _pixel_centres(height, theta).view(1, -1, 1)
    grid = theta.new_empty(len(theta), height, width, 2)
    for axis in range(2):
        scale_x, scale_y, shift = theta[:, axis].view(-1, 3, 1, 1).unbind(1)
        torch.add(scale_x * xs, scale_y * ys + shift, out=grid[..., axis])
    return grid


def _grey(x: Tensor) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W) luma (C = 3) or the image itself (C = 1)."""
    if x.shape[1] == 1:
        return x
    red, green, blue = x.split(1, dim=1)
    return (
        (red * GREY_WEIGHTS[0]).add_(green, alpha=GREY_WEIGHTS[1]).add_(blue, alpha=GREY_WEIGHTS[2])
    )


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor·x + (1 − factor)·other, clamped to [0, 1], in place on ``x``."""
    return x.mul_(factor).add_((1.0 - factor) * other).clamp_(0.0, 1.0)


def _grey_mean(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, 1, 1): mean luma of each image (the mean of :func:`_grey`)."""
    if x.shape[1] == 1:
        return x.mean(dim=(1, 2, 3), keepdim=True)
    means = x.mean(dim=(2, 3))
    luma = sum(means[:, c] * weight for c, weight in enumerate(GREY_WEIGHTS))
    return luma.view(-1, 1, 1, 1)


# HSV -> RGB without the sector remainder: channel c = value - chroma + chroma * curve_c(h),
# curve_c(h) = clamp(slope * |h - centre| + offset, 0, 1) for the hue h in sixths of a turn.
_HUE_CURVES = ((3.0, 1.0, -1.0), (2.0, -1.0, 2.0), (4.0, -1.0, 2.0))  # red, green, blue


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1], (B,) shift in turns -> RGB with the HSV hue rotated.

    Branches are selected by multiplying with 0/1 masks (exact, and several times faster on a
    CPU than ``torch.where`` on boolean masks).
    """
    red, green, blue = x.unbind(1)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    is_red = value == red
    red_max = is_red.to(x.dtype)
    green_max = ((value == green) & ~is_red).to(x.dtype)
    blue_max = 1.0 - red_max - green_max
    # Hue in sixths of a turn: (g - b) / chroma, 2 + (b - r) / chroma or 4 + (r - g) / chroma.
    hue = (green - blue).mul_(red_max)
    hue.addcmul_(blue - red, green_max).addcmul_(red - green, blue_max)
    # Where chroma is 0 so is the numerator; a chroma below the floor changes no output above it.
    hue.div_(chroma.clamp(min=1e-12)).add_(green_max, alpha=2.0).add_(blue_max, alpha=4.0)
    hue = torch.remainder(hue.add_(6.0 * shift.view(-1, 1, 1)), 6.0)
    low = value - chroma
    out = torch.empty_like(x)
    for c, (centre, slope, offset) in enumerate(_HUE_CURVES):
        curve = (hue - centre).abs_().mul_(slope).add_(offset).clamp_(0.0, 1.0)
        torch.addcmul(low, chroma, curve, out=out[:, c])
    return out


def _colour_jitter(x: Tensor, factors: Tensor, on: Tensor) -> Tensor:
    """Sampled 0..255 values (B, C, H, W), (B, 4) factors, (B,) bool -> [0, 1], jittered.

    Brightness (which also scales to [0, 1]), contrast, saturation and hue in this order.
    Samples with ``on`` False get the identity factors (x·1 and 1·x + 0·m are exactly x) and
    keep their hue by a final selection. Works in place on ``x``.
    """
    keep = on.view(-1, 1, 1, 1)
    brightness, contrast, saturation, hue = factors.view(-1, 4, 1, 1, 1).unbind(1)
    x = x.mul_(torch.where(keep, brightness, 1.0) / 255.0).clamp_(0.0, 1.0)
    x = _blend_(x, _grey_mean(x), torch.where(keep, contrast, 1.0))
    if x.shape[1] == 3:
        x = _blend_(x, _grey(x), torch.where(keep, saturation, 1.0))
        on_f = keep.to(x.dtype)
        x = _shift_hue(x, hue.view(-1)).mul_(on_f).addcmul_(x, 1.0 - on_f)  # exact selection
    return x


def _gaussian_kernels(sigma: Tensor, on: Tensor, radius: int) -> Tensor:
    """(B,) sigma, (B,) bool -> (B, 2·radius + 1) normalised Gaussians (a delta where off)."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.unsqueeze(1)) ** 2)
    return torch.where(
        on.unsqueeze(1), kernel / kernel.sum(1, keepdim=True), (offsets == 0).to(sigma.dtype)
    )


def _convolve_separable(x: Tensor, kernels_x: Tensor, kernels_y: Tensor, radius: int) -> Tensor:
    """(B, C, H, W), (B, k) row and (B, k) column kernels -> rows then columns convolved per
    sample, reflect padding."""
    batch, channels, height, width = x.shape
    groups = batch * channels
    weight_x = kernels_x.repeat_interleave(channels, dim=0)  # (B*C, k)
    weight_y = kernels_y.repeat_interleave(channels, dim=0)
    y = F.pad(x.reshape(1, groups, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, weight_x.view(groups, 1, 1, -1), groups=groups)
    y = F.conv2d(y, weight_y.view(groups, 1, -1, 1), groups=groups)
    return y.view(batch, channels, height, width)


def _gaussian_blur(x: Tensor, sigma_x: Tensor, sigma_y: Tensor, on: Tensor, radius: int) -> Tensor:
    """(B, C, H, W), (B,) sigma along x and along y, (B,) bool -> separable Gaussian blur,
    reflect padding.

    On the CPU only the blurred samples are convolved (the others are left as they are, in
    place in ``x``); on a GPU that selection would wait for the device, so every sample is
    convolved there, with a delta kernel where the blur is off.
    """
    kernels_x = _gaussian_kernels(sigma_x.to(x.dtype), on, radius)
    kernels_y = _gaussian_kernels(sigma_y.to(x.dtype), on, radius)
    if x.device.type != "cpu":
        return _convolve_separable(x, kernels_x, kernels_y, radius)
    index = on.nonzero().squeeze(1)
    if len(index):
        x[index] = _convolve_separable(x[index], kernels_x[index], kernels_y[index], radius)
    return x


def _antialias(x: Tensor, crop: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """(B, C, H, W) float input, (B, 4) crops (:class:`AugmentParams`) -> the input blurred so
    that bilinear sampling of each crop at ``out_hw`` does not alias.

    A crop spans ``f = crop width · W / out_w`` input pixels per output pixel along x (and
    likewise along y; a rotation, applied in output pixels, leaves both unchanged). Where
    ``f > 1`` the crop shrinks, and the axis is blurred with a Gaussian of variance
    ``(f² − 1) / 6``: with the bilinear sampling's own (triangle, variance 1/6) filter that makes
    the variance ``f² / 6`` of the triangle filter of half-width ``f`` that an antialiased
    bilinear resize (PIL, ``interpolate(antialias=True)``) applies. Where ``f ≤ 1`` nothing is
    blurred: an enlarged crop is sampled as without antialiasing (as those resizes do). The
    radius, ``3σ`` of the whole image's factor (the largest a crop has), needs no device sync.
    """
    height, width = x.shape[-2:]
    out_h, out_w = out_hw

    def sigma(extent: Tensor, scale: float) -> Tensor:
        # σ = 1e-6 gives exactly a delta (exp underflows to 0 off the centre; 0 would give 0/0)
        return ((extent * scale).square() - 1.0).clamp(min=0.0).div(6.0).sqrt().clamp(min=1e-6)

    sigma_x, sigma_y = sigma(crop[:, 2], width / out_w), sigma(crop[:, 3], height / out_h)
    largest = max(width / out_w, height / out_h)
    radius = min(math.ceil(3.0 * math.sqrt((largest**2 - 1.0) / 6.0)), min(height, width) - 1)
    on = (crop[:, 2] * (width / out_w) > 1.0) | (crop[:, 3] * (height / out_h) > 1.0)
    return _gaussian_blur(x, sigma_x, sigma_y, on, radius)


def _box_keep(boxes: Tensor, out_hw: tuple[int, int], on: Tensor) -> Tensor:
    """(B, 4) boxes in output fractions, (B,) bool -> (B, 1, H, W) float: 0 at pixel centres
    inside the box of each sample where ``on``, 1 elsewhere."""
    height, width = out_hw
    ys = (torch.arange(height, device=boxes.device) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device) + 0.5) / width
    inside_x = ((xs - boxes[:, 0:1]).abs() < boxes[:, 2:3] / 2) & on.unsqueeze(1)
    inside_y = (ys - boxes[:, 1:2]).abs() < boxes[:, 3:4] / 2
    inside = inside_y.to(boxes.dtype).unsqueeze(2) * inside_x.to(boxes.dtype).unsqueeze(1)
    return (1.0 - inside).unsqueeze(1)


class BatchAugment:
    """Augments a uint8 batch (B, C, H, W) on its device into float32 (B, C, S, S), normalised.

    ``S`` is ``config.out_size`` (or the input size when None). Call it with a generator for
    reproducible output, or use ``sample_params`` + ``apply`` to control the parameters.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, H, W) uint8 -> (B, C, S, S) float32 with fresh random parameters per sample."""
        return self.apply(images, self.sample_params(len(images), images.device, generator))

    def sample_params(
        self,
        batch: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw per-sample parameters for ``batch`` images (generator on ``device``)."""
        cfg, gen = self.config, generator

        def coin(p: float) -> Tensor:
            return torch.rand(batch, generator=gen, device=device) < p

        def around_one(v: float) -> tuple[float, float]:
            return max(0.0, 1.0 - v), 1.0 + v

        crop, _ = _sample_boxes(batch, cfg.crop_scale, cfg.crop_ratio, device, gen)
        rotate = coin(cfg.rotate_p)
        angle = _uniform((batch,), (-cfg.rotate_deg, cfg.rotate_deg), device, gen)
        hflip, vflip = coin(cfg.hflip_p), coin(cfg.vflip_p)
        jitter = coin(cfg.jitter_p)
        factors = torch.stack(
            [
                _uniform((batch,), around_one(cfg.brightness), device, gen),
                _uniform((batch,), around_one(cfg.contrast), device, gen),
                _uniform((batch,), around_one(cfg.saturation), device, gen),
                _uniform((batch,), (-cfg.hue, cfg.hue), device, gen),
            ],
            dim=1,
        )
        blur = coin(cfg.blur_p)
        sigma = _uniform((batch,), cfg.blur_sigma, device, gen)
        erase = coin(cfg.erase_p)
        erase_box, found = _sample_boxes(batch, cfg.erase_scale, cfg.erase_ratio, device, gen)
        return AugmentParams(
            crop=crop,
            angle=torch.where(rotate, angle, 0.0),
            hflip=hflip,
            vflip=vflip,
            jitter=jitter if cfg.jitter_p > 0 else None,
            jitter_factors=factors,
            blur=blur if cfg.blur_p > 0 else None,
            blur_sigma=sigma,
            erase=erase & found if cfg.erase_p > 0 else None,
            erase_box=erase_box,
        )

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """(B, C, H, W) uint8 + parameters -> (B, C, S, S) float32, augmented and normalised."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"augment: expected uint8 images (B, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        _, channels, height, width = images.shape
        mean, std = self.config.stats(channels)
        size = self.config.out_size
        out_hw = (height, width) if size is None else (size, size)
        grid = _sampling_grid(_affine_theta(params, out_hw), out_hw)
        x = images.float()
        if height > out_hw[0] or width > out_hw[1]:
            x = _antialias(x, params.crop, out_hw)
        # Bilinear sampling is linear: sample the 0..255 values and scale them afterwards,
        # together with the brightness factor when there is jitter.
        x = F.grid_sample(
            x,
            grid,
            mode="bilinear",
            padding_mode=self.config.padding_mode,
            align_corners=False,
        )
        if params.jitter is None:
            x = x.div_(255.0)
        else:
            x = _colour_jitter(x, params.jitter_factors, params.jitter)
        if params.blur is not None:
            radius = min(math.ceil(3.0 * self.config.blur_sigma[1]), min(out_hw) - 1)
            x = _gaussian_blur(x, params.blur_sigma, params.blur_sigma, params.blur, radius)
        for c, (m, s) in enumerate(zip(mean, std)):
            x[:, c].sub_(m).div_(s)
        if params.erase is not None:  # erased pixels become 0 (a multiplication: fast on CPU)
            x = x.mul_(_box_keep(params.erase_box, out_hw, params.erase))
        return x


def multi_view(
    images: Tensor,
    n_views: int,
    augment: BatchAugment,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, C, H, W) uint8 -> (n_views, B, C, S, S): independent views in one batched call."""
    views = augment(images.repeat(n_views, 1, 1, 1), generator)
    return views.view(n_views, len(images), *views.shape[1:])
