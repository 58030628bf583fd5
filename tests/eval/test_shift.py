"""The fixed image shifts of the shifted evaluation, against hand-computed values."""

import numpy as np
import pytest
import torch

from s2mts2.errors import DataError
from s2mts2.eval.shift import DERMOSCOPY_SHIFTS, ImageShift


def every_value(channels: int = 3) -> torch.Tensor:
    """(2, C, 16, 16) uint8: every value 0..255 in each channel, once per image."""
    plane = torch.arange(256, dtype=torch.uint8).view(16, 16)
    return torch.stack([plane.expand(channels, 16, 16), plane.flip(0).expand(channels, 16, 16)])


def test_no_change_returns_the_same_bytes():
    images = every_value()
    for shift in (ImageShift("identity"), ImageShift("unit", gains=None, contrast=1.0, gamma=1.0)):
        assert torch.equal(shift(images), images)


def test_the_documented_shifts_compute_what_they_say():
    x = every_value().numpy().astype(np.float64)
    cast, contrast, gamma = DERMOSCOPY_SHIFTS
    assert [s.name for s in DERMOSCOPY_SHIFTS] == ["colour-cast", "low-contrast", "gamma"]
    gains = np.array([1.10, 0.95, 0.80], dtype=np.float32).reshape(1, 3, 1, 1)
    expected = np.clip(np.round(x.astype(np.float32) * gains), 0, 255)  # float32, as the shift
    np.testing.assert_array_equal(cast(every_value()).numpy(), expected)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)  # 127.5 for every image
    expected = np.clip(np.round(mean + 0.6 * (x - mean)), 0, 255)
    np.testing.assert_allclose(contrast(every_value()).numpy(), expected, atol=1)  # float32 ties
    assert contrast(every_value()).min() == 51 and contrast(every_value()).max() == 204
    out = gamma(every_value()).numpy()
    np.testing.assert_allclose(out, np.round(255 * (x / 255) ** 1.5), atol=1)
    assert out.min() == 0 and out.max() == 255 and (out <= x).all()  # darker, ends kept
    for shift in DERMOSCOPY_SHIFTS:
        changed = shift(every_value())
        assert changed.dtype == torch.uint8 and changed.shape == (2, 3, 16, 16)
        assert not torch.equal(changed, every_value())


def test_a_cast_needs_one_gain_per_channel_and_images_must_be_uint8():
    cast = DERMOSCOPY_SHIFTS[0]
    with pytest.raises(DataError, match="3 channel gains for images with 1 channel"):
        cast(every_value(channels=1))
    with pytest.raises(DataError, match="uint8"):
        cast(every_value().float())
    assert DERMOSCOPY_SHIFTS[2](every_value(channels=1)).shape == (2, 1, 16, 16)  # grey: fine
