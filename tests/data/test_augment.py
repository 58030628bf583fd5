"""Batched augmentation: geometry, colour, blur and erasing against independent computations."""

import dataclasses
import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from s2mts2.data import augment as augment_module
from s2mts2.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    AugmentParams,
    BatchAugment,
    eval_transform,
    identity_params,
    multi_view,
    strong_augment,
    weak_augment,
)
from s2mts2.errors import ConfigError, DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RAW3 = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # no normalisation: compare in [0, 1]
RAW1 = {"mean": (0.0,), "std": (1.0,)}


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=gen, dtype=torch.uint8)


def unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def params_to(params: AugmentParams, device: str) -> AugmentParams:
    moved = {
        f.name: None if getattr(params, f.name) is None else getattr(params, f.name).to(device)
        for f in dataclasses.fields(params)
    }
    return AugmentParams(**moved)


# ----------------------------------------------------------------------------- identity / presets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 1, 12, 20)])
def test_identity_params_return_normalised_input(device, shape):
    images = random_images(*shape).to(device)
    channels = shape[1]
    out = BatchAugment(AugmentConfig()).apply(images, identity_params(shape[0], device))
    if channels == 3:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    else:
        mean, std = torch.tensor([0.449]), torch.tensor([0.226])
    expected = (unit(images).cpu() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    assert out.dtype == torch.float32 and out.device.type == device
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=0)


def test_eval_transform_is_deterministic_whole_image():
    images = random_images(4, 3, 16, 16)
    augment = BatchAugment(eval_transform(3))
    params = augment.sample_params(4)
    assert params.jitter is None and params.blur is None and params.erase is None
    assert not params.hflip.any() and (params.angle == 0).all()
    expected = BatchAugment(AugmentConfig()).apply(images, identity_params(4))
    torch.testing.assert_close(augment(images), expected, atol=1e-5, rtol=0)
    resized = BatchAugment(eval_transform(3, out_size=8))(images)
    assert resized.shape == (4, 3, 8, 8)


def test_presets():
    strong, weak = strong_augment(1, 32), weak_augment(3, 24)
    assert strong.mean == (0.449,) and strong.out_size == 32 and strong.erase_p == 0.5
    assert weak.mean == IMAGENET_MEAN and weak.crop_scale == (0.7, 1.0) and weak.hflip_p == 0.5
    params = BatchAugment(weak).sample_params(50, generator=torch.Generator().manual_seed(0))
    assert params.jitter is None and params.blur is None and params.erase is None
    assert (params.angle == 0).all()
    area = params.crop[:, 2] * params.crop[:, 3]
    assert area.min() >= 0.7 - 1e-6


# ----------------------------------------------------------------------------- sampling


def test_sampled_params_ranges_and_frequencies():
    cfg = AugmentConfig()
    params = BatchAugment(cfg).sample_params(4000, generator=torch.Generator().manual_seed(1))
    rotated = params.angle != 0
    assert abs(rotated.float().mean().item() - 0.5) < 0.04
    assert params.angle.abs().max() <= 10.0 and params.angle.abs().max() > 9.0
    assert abs(params.hflip.float().mean().item() - 0.5) < 0.04
    assert not params.vflip.any()
    assert abs(params.jitter.float().mean().item() - 0.8) < 0.03
    assert abs(params.blur.float().mean().item() - 0.5) < 0.04
    assert abs(params.erase.float().mean().item() - 0.5) < 0.04

    cx, cy, w, h = params.crop.unbind(1)
    area = w * h
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 1.0 + 1e-6
    assert (cx - w / 2).min() >= -1e-6 and (cx + w / 2).max() <= 1 + 1e-6
    assert (cy - h / 2).min() >= -1e-6 and (cy + h / 2).max() <= 1 + 1e-6
    ratio = w / h
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    # Candidates are (area, ratio) pairs uniform on [0.2, 1] x log-ratio range; a pair fits when
    # ratio lies in [area, 1 / area], so the kept area has density proportional to that chance.
    grid = torch.linspace(0.2, 1.0, 100_001, dtype=torch.float64)
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    fit = (torch.clamp(-grid.log(), max=log_hi) - torch.clamp(grid.log(), min=log_lo)) / (
        log_hi - log_lo
    )
    expected_mean = (grid * fit).sum() / fit.sum()
    assert abs(area.mean().item() - expected_mean.item()) < 0.01

    b, c, s, hue = params.jitter_factors.unbind(1)
    for factor in (b, c, s):
        assert factor.min() >= 0.6 and factor.max() <= 1.4
        assert abs(factor.mean().item() - 1.0) < 0.02
    assert hue.abs().max() <= 0.1 and hue.abs().max() > 0.09
    assert hue.min() < -0.09 and hue.max() > 0.09  # both ways round the colour circle
    assert params.blur_sigma.min() >= 0.1 and params.blur_sigma.max() <= 2.0

    box = params.erase_box[params.erase]
    erased_area = box[:, 2] * box[:, 3]
    assert erased_area.min() >= 0.02 - 1e-6 and erased_area.max() <= 0.33 + 1e-6
    box_ratio = box[:, 2] / box[:, 3]
    assert box_ratio.min() >= 0.3 - 1e-5 and box_ratio.max() <= 3.3 + 1e-5


def test_strong_jitter_never_gives_negative_factors_and_unfit_boxes_are_not_erased():
    erase = dict(erase_p=1.0, erase_scale=(0.9, 1.0), erase_ratio=(8.0, 9.0))  # never fits
    cfg = AugmentConfig(brightness=1.5, contrast=1.2, **erase)
    params = BatchAugment(cfg).sample_params(2000, generator=torch.Generator().manual_seed(4))
    b, c, _, _ = params.jitter_factors.unbind(1)
    assert b.min() >= 0.0 and c.min() >= 0.0 and b.max() > 2.4  # [max(0, 1 - v), 1 + v]
    assert params.erase is not None and not params.erase.any()


@pytest.mark.parametrize("mode", ["reflection", "border"])
def test_the_configured_padding_fills_what_a_rotation_uncovers(mode):
    cfg = AugmentConfig(padding_mode=mode, mean=(0.0,), std=(1.0,))
    params = identity_params(1)
    params.angle = torch.tensor([45.0])
    out = BatchAugment(cfg).apply(torch.full((1, 1, 16, 16), 200, dtype=torch.uint8), params)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255))  # no black corners


def test_params_differ_across_the_batch():
    params = BatchAugment(AugmentConfig()).sample_params(
        32, generator=torch.Generator().manual_seed(2)
    )
    assert params.crop.unique(dim=0).shape[0] == 32
    assert params.angle[params.angle != 0].unique().numel() == (params.angle != 0).sum()
    assert params.blur_sigma.unique().numel() == 32
    for mask in (params.hflip, params.jitter, params.blur, params.erase):
        assert 0 < mask.sum() < 32


def test_crop_that_does_not_fit_falls_back_to_whole_image():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    crop = BatchAugment(cfg).sample_params(5).crop
    torch.testing.assert_close(crop, torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 5))


# ----------------------------------------------------------------------------- geometry


def test_flips_are_exact():
    images = random_images(2, 3, 10, 14)
    augment = BatchAugment(AugmentConfig(**RAW3))
    params = identity_params(2)
    params.hflip[:] = True
    torch.testing.assert_close(
        augment.apply(images, params), unit(images).flip(-1), atol=1e-5, rtol=0
    )
    params = identity_params(2)
    params.vflip[1] = True
    expected = torch.stack([unit(images[0]), unit(images[1]).flip(-2)])
    torch.testing.assert_close(augment.apply(images, params), expected, atol=1e-5, rtol=0)


def test_crop_resizes_the_box_bilinearly():
    # A linear image is reproduced exactly by bilinear sampling: value = 3 * col + 5 * row.
    height, width, out = 40, 50, 16
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    images = (3 * cols + 5 * rows).to(torch.uint8).expand(1, 1, height, width)
    top, left, box_h, box_w = 6.0, 10.0, 20.0, 30.0
    params = identity_params(1)
    params.crop[0] = torch.tensor(
        [(left + box_w / 2) / width, (top + box_h / 2) / height, box_w / width, box_h / height]
    )
    out_raw = BatchAugment(AugmentConfig(out_size=out, **RAW1)).apply(images, params) * 255
    # torchvision/OpenCV convention: output pixel i samples box coordinate (i + 0.5) * size/out - 0.5
    i = torch.arange(out, dtype=torch.float32)
    src_rows = top + (i + 0.5) * box_h / out - 0.5
    src_cols = left + (i + 0.5) * box_w / out - 0.5
    expected = 3 * src_cols.view(1, -1) + 5 * src_rows.view(-1, 1)
    torch.testing.assert_close(out_raw[0, 0], expected, atol=1e-3, rtol=0)


def test_crop_matches_torchvision_resized_crop_inside():
    images = random_images(1, 3, 32, 32, seed=3)
    top, left, size, out = 8, 4, 16, 24
    params = identity_params(1)
    params.crop[0] = torch.tensor([(left + size / 2) / 32, (top + size / 2) / 32, 0.5, 0.5])
    ours = BatchAugment(AugmentConfig(out_size=out, **RAW3)).apply(images, params)
    theirs = TF.resized_crop(unit(images), top, left, size, size, [out, out], antialias=False)
    # torchvision clamps samples at the crop border; ours read the real neighbours outside it.
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- resizing down


def zone_plate(size: int) -> torch.Tensor:
    """(size, size) uint8 rings whose frequency grows to the image's Nyquist limit at its
    corners: a crop resized down without antialiasing shows moiré rings."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    radius2 = (x - size / 2) ** 2 + (y - size / 2) ** 2
    return (127.5 + 127.5 * torch.cos(math.pi * radius2 / (size * math.sqrt(2)))).round().byte()


def box_params(boxes: list[tuple[int, int, int, int]], size: int) -> AugmentParams:
    """Crops of whole pixels (top, left, height, width) of a ``size``-pixel square."""
    params = identity_params(len(boxes))
    params.crop = torch.tensor(
        [
            [(left + w / 2) / size, (top + h / 2) / size, w / size, h / size]
            for top, left, h, w in boxes
        ]
    )
    return params


def test_crops_of_a_larger_input_match_an_antialiased_resize_of_the_crop():
    """Each crop shrinking by f > 1 is close to ``interpolate(antialias=True)`` of the cut-out
    crop, where plain bilinear sampling aliases; an enlarged crop (f < 1) is plain bilinear."""
    size, out = 512, 128
    image = zone_plate(size).view(1, 1, size, size)
    # f = 4, 2, 1.5 (x 4, y 2: per axis) and 0.75
    boxes = [(0, 0, 512, 512), (128, 128, 256, 256), (160, 96, 192, 192), (0, 0, 256, 512)]
    boxes.append((200, 180, 96, 96))
    ours = BatchAugment(AugmentConfig(out_size=out, **RAW1)).apply(
        image.expand(len(boxes), -1, -1, -1), box_params(boxes, size)
    )
    for i, (top, left, h, w) in enumerate(boxes):
        crop = image[..., top : top + h, left : left + w].float() / 255
        reference = F.interpolate(crop, size=(out, out), mode="bilinear", antialias=True)[0]
        plain = F.interpolate(crop, size=(out, out), mode="bilinear")[0]
        error = (ours[i] - reference).abs().mean().item()
        if w < out:  # (interpolate clamps at the crop's border, ours read the pixels beyond)
            inside = (..., slice(1, -1), slice(1, -1))
            torch.testing.assert_close(ours[i][inside], plain[inside], atol=1e-5, rtol=0)
        else:
            assert error < 3 / 255, (i, error)
            assert (plain - reference).abs().mean().item() > 2.5 * error, i  # plain aliases


def test_the_eval_transform_resizes_down_like_pil():
    """The whole image resized to 256 and 224 px: close to PIL's (antialiased) bilinear resize,
    an independent implementation; without the antialiasing far from it."""
    image = zone_plate(512)
    for out in (256, 224):
        config = dataclasses.replace(eval_transform(1, out), **RAW1)
        ours = BatchAugment(config)(image.view(1, 1, 512, 512))[0, 0] * 255
        pil = Image.fromarray(image.numpy()).resize((out, out), Image.Resampling.BILINEAR)
        reference = torch.from_numpy(np.array(pil)).float()
        plain = F.interpolate(image.view(1, 1, 512, 512).float(), size=(out, out), mode="bilinear")
        assert (ours - reference).abs().mean() < 3.0, out
        assert (plain[0, 0] - reference).abs().mean() > 15.0, out


def test_an_input_at_the_output_size_is_sampled_without_any_filtering(monkeypatch):
    """The cache at the training size: one bilinear ``grid_sample`` of the uint8 values, exactly
    as before resizing down existed (the antialiasing is never called)."""
    monkeypatch.setattr(augment_module, "_antialias", None)  # a call would fail
    images = random_images(8, 3, 24, 24, seed=21)
    config = dataclasses.replace(weak_augment(3, 24), crop_scale=(0.2, 1.0), rotate_p=1.0, **RAW3)
    augment = BatchAugment(config)
    params = augment.sample_params(8, generator=torch.Generator().manual_seed(5))
    theta = augment_module._affine_theta(params, (24, 24))
    grid = F.affine_grid(theta, [8, 3, 24, 24], align_corners=False)
    sampled = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    torch.testing.assert_close(augment.apply(images, params), sampled / 255, atol=1e-5, rtol=0)
    for size in (16, 24):  # smaller inputs are enlarged: no filtering either
        assert augment.apply(random_images(2, 3, size, size), identity_params(2)).shape[-1] == 24


@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_rotation_matches_torchvision(hw):
    images = random_images(2, 3, *hw, seed=4)
    augment = BatchAugment(AugmentConfig(padding_mode="zeros", **RAW3))
    params = identity_params(2)
    params.angle[:] = torch.tensor([10.0, -7.0])
    params.hflip[1] = True
    ours = augment.apply(images, params)
    theirs = torch.stack(
        [
            TF.rotate(unit(images[0]), 10.0, interpolation=TF.InterpolationMode.BILINEAR),
            TF.rotate(unit(images[1]), -7.0, interpolation=TF.InterpolationMode.BILINEAR).flip(-1),
        ]
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("angle", [12.0, -25.0])
def test_rotated_non_square_crop_is_the_rotation_of_the_resized_crop(angle):
    """Crop a 20x30 box, resize it to 16x16, then rotate (torchvision's order): on a linear
    image bilinear sampling is exact, so one sample of ours equals the two-step composition
    wherever the rotated samples stay inside the box (the centre)."""
    height, width, out = 40, 50, 16
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    images = (2 * cols + 3 * rows).to(torch.uint8).expand(1, 1, height, width)  # max 215
    top, left, box_h, box_w = 6.0, 10.0, 20.0, 30.0
    params = identity_params(1)
    params.crop[0] = torch.tensor(
        [(left + box_w / 2) / width, (top + box_h / 2) / height, box_w / width, box_h / height]
    )
    params.angle[:] = angle
    ours = BatchAugment(AugmentConfig(out_size=out, **RAW1)).apply(images, params)
    resized = TF.resized_crop(unit(images), 6, 10, 20, 30, [out, out], antialias=False)
    theirs = TF.rotate(resized, angle, interpolation=TF.InterpolationMode.BILINEAR)
    centre = slice(4, 12)
    assert ours[0, 0, centre, centre].std() > 0.03  # a real gradient, not a flat patch
    torch.testing.assert_close(
        ours[..., centre, centre], theirs[..., centre, centre], atol=1e-4, rtol=0
    )


def test_rotation_by_90_degrees_is_rot90():
    images = random_images(1, 1, 9, 9, seed=5)
    params = identity_params(1)
    params.angle[:] = 90.0
    out = BatchAugment(AugmentConfig(**RAW1)).apply(images, params)
    torch.testing.assert_close(out, torch.rot90(unit(images), 1, dims=(-2, -1)), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- colour jitter


def jitter_params(factors: list[list[float]]) -> AugmentParams:
    params = identity_params(len(factors))
    params.jitter = torch.ones(len(factors), dtype=torch.bool)
    params.jitter_factors = torch.tensor(factors)
    return params


def test_brightness_scales_and_clamps():
    images = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    params = jitter_params([[1.3, 1, 1, 0], [0.6, 1, 1, 0]])
    out = BatchAugment(AugmentConfig(**RAW3)).apply(images, params)
    torch.testing.assert_close(out[0], torch.full((3, 4, 4), 1.3 * 100 / 255))
    torch.testing.assert_close(out[1], torch.full((3, 4, 4), 0.6 * 100 / 255))
    bright = torch.full((1, 3, 4, 4), 250, dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(**RAW3)).apply(bright, jitter_params([[1.4, 1, 1, 0]]))
    assert (out == 1.0).all()


def test_contrast_blends_with_the_mean_grey():
    images = torch.linspace(60, 180, 16).round().to(torch.uint8).view(1, 1, 4, 4)
    out = BatchAugment(AugmentConfig(**RAW1)).apply(images, jitter_params([[1, 0.7, 1, 0]]))
    p = unit(images)
    torch.testing.assert_close(out, p.mean() + 0.7 * (p - p.mean()), atol=1e-6, rtol=0)


def test_zero_saturation_gives_grey():
    images = random_images(1, 3, 6, 6, seed=6)
    out = BatchAugment(AugmentConfig(**RAW3)).apply(images, jitter_params([[1, 1, 0, 0]]))
    r, g, b = unit(images)[0]
    grey = 0.2989 * r + 0.587 * g + 0.114 * b
    torch.testing.assert_close(out[0], grey.expand(3, 6, 6), atol=1e-6, rtol=0)


def test_grey_images_ignore_saturation_and_hue():
    images = random_images(2, 1, 6, 6, seed=7)
    out = BatchAugment(AugmentConfig(**RAW1)).apply(
        images, jitter_params([[1, 1, 0.0, 0.4], [1, 1, 1.4, -0.3]])
    )
    torch.testing.assert_close(out, unit(images), atol=1e-6, rtol=0)


def test_hue_shift_moves_primary_colours():
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).repeat(3, 1, 2, 2)
    shifts = [[1, 1, 1, 1 / 3], [1, 1, 1, -1 / 3], [1, 1, 1, 0.5]]
    out = BatchAugment(AugmentConfig(**RAW3)).apply(red, jitter_params(shifts))
    green_blue_cyan = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(out[:, :, 0, 0], green_blue_cyan, atol=1e-5, rtol=0)


def test_jitter_matches_torchvision_in_fixed_order():
    images = random_images(4, 3, 8, 8, seed=8)
    factors = [
        [1.2, 0.7, 1.3, 0.08],
        [0.7, 1.3, 0.6, -0.1],
        [1.0, 1.0, 1.0, 0.0],
        [1.4, 0.6, 0.0, 0.05],
    ]
    params = jitter_params(factors)
    params.jitter[2] = False
    out = BatchAugment(AugmentConfig(**RAW3)).apply(images, params)
    for i, (b, c, s, h) in enumerate(factors):
        x = unit(images[i])
        if i != 2:
            x = TF.adjust_brightness(x, b)
            x = TF.adjust_contrast(x, c)
            x = TF.adjust_saturation(x, s)
            x = TF.adjust_hue(x, h)
        torch.testing.assert_close(out[i], x, atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------- blur


def blur_params(sigmas: list[float], on: list[bool]) -> AugmentParams:
    params = identity_params(len(sigmas))
    params.blur = torch.tensor(on)
    params.blur_sigma = torch.tensor(sigmas)
    return params


def test_the_gpu_paths_kernels_blur_where_on_and_keep_the_image_where_off():
    """On a GPU every sample is convolved (no data-dependent selection): with a delta kernel
    where the blur is off. The kernels and the convolution are checked here on the CPU."""
    sigma, radius = torch.tensor([1.5, 0.7]), 3
    kernels = augment_module._gaussian_kernels(sigma, torch.tensor([True, False]), radius)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    gauss = torch.exp(-(offsets**2) / (2 * 1.5**2))
    torch.testing.assert_close(kernels[0], gauss / gauss.sum())
    assert torch.equal(kernels[1], (offsets == 0).float())
    x = unit(random_images(2, 3, 12, 12, seed=9))
    y = augment_module._convolve_separable(x, kernels, kernels, radius)
    torch.testing.assert_close(y[1], x[1], atol=1e-6, rtol=0)  # off: the image itself
    blurred = TF.gaussian_blur(x[0], [2 * radius + 1] * 2, [1.5, 1.5])  # reflect padding too
    torch.testing.assert_close(y[0], blurred, atol=1e-5, rtol=0)


def test_blur_of_a_delta_is_a_gaussian():
    images = torch.zeros(1, 1, 21, 21, dtype=torch.uint8)
    images[0, 0, 10, 10] = 255
    sigma = 1.5
    out = BatchAugment(AugmentConfig(**RAW1)).apply(images, blur_params([sigma], [True]))[0, 0]
    x = torch.arange(-6, 7, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    expected = torch.zeros(21, 21)
    expected[4:17, 4:17] = g.view(-1, 1) * g.view(1, -1)  # radius ceil(3 * 2.0) = 6
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert abs(out.sum().item() - 1.0) < 1e-5
    torch.testing.assert_close(out, out.flip(0).flip(1).T, atol=1e-7, rtol=0)


def test_blur_matches_torchvision_and_off_is_identity():
    images = random_images(3, 3, 16, 16, seed=9)
    sigmas = [0.3, 1.7, 1.0]
    out = BatchAugment(AugmentConfig(**RAW3)).apply(
        images, blur_params(sigmas, [True, True, False])
    )
    for i in range(2):
        theirs = TF.gaussian_blur(unit(images[i]), [13, 13], [sigmas[i], sigmas[i]])
        torch.testing.assert_close(out[i], theirs, atol=1e-5, rtol=0)
    unblurred = BatchAugment(AugmentConfig(**RAW3)).apply(images, identity_params(3))
    assert torch.equal(out[2], unblurred[2])


def test_blur_radius_is_capped_for_tiny_images():
    images = random_images(2, 1, 4, 4, seed=10)
    out = BatchAugment(AugmentConfig(**RAW1)).apply(images, blur_params([2.0, 2.0], [True, False]))
    assert out.shape == (2, 1, 4, 4) and torch.isfinite(out).all()
    assert abs(out[0].mean() - unit(images[0]).mean()) < 0.1


# ----------------------------------------------------------------------------- erasing


def test_erasing_fills_the_box_with_zero():
    images = torch.full((3, 3, 40, 40), 200, dtype=torch.uint8)
    params = identity_params(3)
    params.erase = torch.tensor([True, True, False])
    params.erase_box = torch.tensor(
        [[0.5, 0.5, 0.4, 0.25], [0.2, 0.7, 0.3, 0.5], [0.5, 0.5, 0.5, 0.5]]
    )
    out = BatchAugment(AugmentConfig()).apply(images, params)
    normalised = BatchAugment(AugmentConfig()).apply(images, identity_params(3))
    erased = (out != normalised).all(dim=1)  # (B, H, W)
    assert (out.permute(1, 0, 2, 3)[:, erased] == 0).all()
    assert erased[0].sum() == 16 * 10 and erased[1].sum() == 12 * 20
    assert erased[0, 15:25, 12:28].all() and not erased[2].any()
    assert torch.equal(out[2], normalised[2])


def test_sampled_erasing_covers_the_sampled_box():
    size = 32
    images = torch.full((300, 1, size, size), 255, dtype=torch.uint8)
    augment = BatchAugment(AugmentConfig(erase_p=0.5, jitter_p=0, blur_p=0))
    params = augment.sample_params(300, generator=torch.Generator().manual_seed(11))
    counts = (augment.apply(images, params) == 0).sum(dim=(1, 2, 3)).float()
    width, height = params.erase_box[:, 2] * size, params.erase_box[:, 3] * size
    on = params.erase
    assert (counts[~on] == 0).all() and (counts[on] > 0).all()
    low = ((width - 1).clamp(min=0) * (height - 1).clamp(min=0))[on]
    high = ((width + 1) * (height + 1))[on]
    assert (counts[on] >= low).all() and (counts[on] <= high).all()
    fraction = counts[on] / size**2
    assert fraction.min() < 0.05 and fraction.max() > 0.25


# ----------------------------------------------------------------------------- whole pipeline


def test_same_seed_same_output_and_different_seed_differs():
    images = random_images(8, 3, 24, 24, seed=12)
    augment = BatchAugment(strong_augment(3, 16))
    a = augment(images, torch.Generator().manual_seed(5))
    b = augment(images, torch.Generator().manual_seed(5))
    c = augment(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (8, 3, 16, 16) and torch.isfinite(a).all()


def test_multi_view_gives_independent_views_in_one_call():
    images = random_images(64, 3, 64, 64, seed=13)
    augment = BatchAugment(strong_augment(3))
    views = multi_view(images, 6, augment, torch.Generator().manual_seed(0))
    assert views.shape == (6, 64, 3, 64, 64)
    assert not torch.allclose(views[0], views[1])
    single = augment(images.repeat(6, 1, 1, 1), torch.Generator().manual_seed(0))
    assert torch.equal(views.reshape(-1, 3, 64, 64), single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_for_the_same_params():
    images = random_images(16, 3, 32, 32, seed=14)
    augment = BatchAugment(strong_augment(3, 24))
    params = augment.sample_params(16, generator=torch.Generator().manual_seed(3))
    cpu = augment.apply(images, params)
    cuda = augment.apply(images.cuda(), params_to(params, "cuda"))
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    drawn = augment(images.cuda(), torch.Generator("cuda").manual_seed(0))
    assert drawn.device.type == "cuda" and drawn.shape == (16, 3, 24, 24)


# ----------------------------------------------------------------------------- errors, docs


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"rotate_p": 1.5}, "rotate_p"),
        ({"hue": 0.6}, "hue"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"padding_mode": "wrap"}, "padding_mode"),
        ({"mean": (0.5,)}, "mean"),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "mean"),
        ({"mean": (0.5,), "std": (0.0,)}, "std"),
        ({"out_size": 0}, "out_size"),
    ],
)
def test_bad_config_is_rejected(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**kwargs)


def test_bad_images_are_rejected():
    augment = BatchAugment(strong_augment(1))
    with pytest.raises(DataError, match="uint8"):
        augment(torch.rand(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="channels"):
        augment(random_images(2, 3, 8, 8))
    with pytest.raises(DataError, match="channels"):
        BatchAugment(AugmentConfig())(random_images(2, 2, 8, 8))


def test_docstring_example_runs():
    assert doctest.testmod(augment_module, raise_on_error=True).attempted > 0


def test_config_lists_become_tuples():
    cfg = AugmentConfig(crop_scale=[0.3, 0.9], mean=[0.5], std=[0.2])
    assert cfg.crop_scale == (0.3, 0.9) and cfg.mean == (0.5,)
    assert math.isclose(cfg.crop_ratio[1], 4 / 3)
