"""Image decoding (PNG, JPEG, DICOM) to uint8 arrays and the square resize used everywhere.

Every image that enters the package goes through :func:`load_preprocessed`, both when the uint8
cache is built and when ``predict`` reads a user's file, so training and inference see the same
pixels.

Conventions:

- 8-bit PNG/JPEG keep their pixel values. Alpha (RGBA, LA, PA, palette transparency) is dropped,
  not composited: X-ray and dermoscopy files carry an opaque or meaningless alpha channel.
- 16-bit and 32-bit PNG/TIFF (PIL modes ``I;16*``, ``I``, ``F``) are scaled linearly from their
  actual minimum..maximum to 0..255 (a constant image becomes all 0).
- DICOM: Modality LUT / rescale first, then the VOI LUT Sequence (scaled from its output range
  0..2**bits-1) or else Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID, evaluated by pydicom
  directly into 0..255), or else the actual minimum..maximum, and MONOCHROME1 is inverted last.
  Colour DICOM is converted to RGB by pydicom. Multi-frame DICOM is rejected.
- ``channels=1`` gives grey (ITU-R 601-2 luma, as PIL ``convert("L")``), ``channels=3`` gives RGB
  (grey replicated into the three channels).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from s2mts2.errors import ConfigError, DataError

_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_DICOM_MAGIC_OFFSET = 128


class ImageReadError(DataError):
    """An image file could not be decoded; ``path`` and ``reason`` say which one and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read image {self.path}: {self.reason}"


def read_image(path: str | Path | BinaryIO, channels: int) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file fully into a uint8 array of shape (H, W, channels).

    ``path`` may also be a binary file object (an upload held in memory, ``io.BytesIO``); its
    ``name`` attribute, when set, names it in errors and a ``.dcm`` name marks it as DICOM.
    Raises :class:`ImageReadError` (a ``DataError``) naming the path and the reason for any
    failure: missing, truncated, not an image, unsupported DICOM.
    """
    _check_channels(channels)
    try:
        pixels = _decode_dicom(path) if _is_dicom(path) else _decode_pil(path)
    except Exception as exc:  # decoders raise many undocumented types for corrupt input
        raise ImageReadError(_source_name(path), f"{type(exc).__name__}: {exc}") from exc
    return _to_channels(pixels, channels)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (H, W, C) image to (size, size, C), C in {1, 3}, without keeping the aspect.

    The image is squashed (as the SRC-MT / CheXpert pipelines do) with PIL's BILINEAR filter, whose
    support widens with the scale factor when shrinking (antialiased); deterministic.
    """
    if size < 1:
        raise ConfigError(f"image size must be a positive number of pixels, got {size}")
    _check_channels(img.shape[2])
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def load_preprocessed(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Decode ``path`` and squash it to uint8 (size, size, channels): the model's input pixels."""
    return resize_square(read_image(path, channels), size)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"image channels must be 1 (grey) or 3 (RGB), got {channels}")


def _source_name(source: str | Path | BinaryIO) -> str:
    """A path as given; a file object's ``name`` (an upload's file name), if it has one."""
    if isinstance(source, (str, Path)):
        return str(source)
    return str(getattr(source, "name", "<in memory>"))


def _is_dicom(path: str | Path | BinaryIO) -> bool:
    """True for a ``.dcm`` name or a file with the ``DICM`` magic after its 128-byte preamble."""
    if Path(_source_name(path)).suffix.lower() == ".dcm":
        return True
    if not isinstance(path, (str, Path)):  # a file object: peek, then rewind
        start = path.tell()
        path.seek(_DICOM_MAGIC_OFFSET, 1)
        magic = path.read(4)
        path.seek(start)
        return magic == b"DICM"
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False  # let the image decoder report the problem


def _decode_pil(path: str | Path | BinaryIO) -> np.ndarray:
    """Decode with PIL: uint8 (H, W) grey or (H, W, 3) RGB."""
    with warnings.catch_warnings():
        # an image above Pillow's decompression-bomb limit is refused with its reason (Pillow
        # itself refuses twice that size), not decoded after a raw warning
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        opened = Image.open(path)
    with opened:
        opened.load()  # decode everything now, so a truncated file fails here
        img = ImageOps.exif_transpose(opened)  # as viewers show it (EXIF Orientation)
        if img.mode in _HIGH_BIT_MODES:
            values = np.asarray(img, dtype=np.float64)
            return _scale_to_uint8(values, values.min(), values.max())
        if img.mode == "L":
            return np.asarray(img)
        if img.mode in ("1", "LA", "La"):
            return np.asarray(img.convert("L"))
        if img.mode in ("P", "PA"):
            return np.asarray(img.convert("RGBA").convert("RGB"))
        return np.asarray(img.convert("RGB"))


def _decode_dicom(path: str | Path | BinaryIO) -> np.ndarray:
    """Decode a single-frame DICOM to display values: uint8 (H, W) grey or (H, W, 3) RGB."""
    ds = dcmread(path, force=True)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if int(ds.get("SamplesPerPixel", 1)) != 3:
            raise ValueError(f"unsupported Photometric Interpretation {photometric!r}")
        rgb = ds.pixel_array  # pydicom converts YBR_* to RGB
        if rgb.dtype == np.uint8:
            return rgb
        return _scale_to_uint8(rgb.astype(np.float64), rgb.min(), rgb.max())
    values = apply_modality_lut(ds.pixel_array, ds)
    if ds.get("VOILUTSequence"):
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        grey = _scale_to_uint8(apply_voi(values, ds), 0, 2**lut_bits - 1)
    elif None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):
        grey = _scale_to_uint8(apply_windowing(values, _window_to_8bit(ds)), 0, 255)
    else:
        grey = _scale_to_uint8(values.astype(np.float64), values.min(), values.max())
    return 255 - grey if photometric == "MONOCHROME1" else grey


def _window_to_8bit(ds: Dataset) -> Dataset:
    """The window of ``ds`` on an unsigned 8-bit output, so pydicom windows straight into 0..255."""
    display = Dataset()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            display[keyword] = ds[keyword]
    display.PhotometricInterpretation = "MONOCHROME2"
    display.PixelRepresentation = 0
    display.BitsStored = 8
    return display


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly to 0..255 (rounded, clipped); all 0 when ``high <= low``."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def _to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) grey or (H, W, 3) RGB -> (H, W, channels)."""
    if pixels.ndim == 2:
        grey = pixels[:, :, None]
        return np.repeat(grey, 3, axis=2) if channels == 3 else grey
    if channels == 3:
        return pixels
    return np.asarray(Image.fromarray(pixels).convert("L"))[:, :, None]
