"""Image decoding: formats, bit depths, DICOM LUTs, channel conversion, resize, broken files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from s2mts2.data.imageio import ImageReadError, load_preprocessed, read_image, resize_square
from s2mts2.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _save(tmp_path: Path, name: str, array: np.ndarray, **kwargs) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, **kwargs)
    return path


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, computed independently of PIL (float, (H, W))."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_grey_png_keeps_values_and_replicates_to_rgb(tmp_path):
    grey = RNG.integers(0, 256, (7, 9), dtype=np.uint8)
    path = _save(tmp_path, "g.png", grey)
    one = read_image(path, 1)
    three = read_image(path, 3)
    assert one.dtype == np.uint8 and one.shape == (7, 9, 1)
    np.testing.assert_array_equal(one[:, :, 0], grey)
    assert three.shape == (7, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[:, :, c], grey)


def test_rgb_to_grey_is_itu_601_luma(tmp_path):
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = _save(tmp_path, "c.png", rgb)
    np.testing.assert_array_equal(read_image(path, 3), rgb)
    grey = read_image(path, 1)[:, :, 0].astype(np.float64)
    assert np.abs(grey - _luma(rgb.astype(np.float64))).max() <= 1.0


def test_16bit_png_maps_min_to_0_and_max_to_255(tmp_path):
    values = RNG.integers(1000, 40000, (8, 8)).astype(np.uint16)
    values[0, 0], values[-1, -1] = 1000, 40000
    path = _save(tmp_path, "deep.png", values)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # a 16-bit PNG (older Pillow, e.g. 10.0, opens it as I)
    out = read_image(path, 1)[:, :, 0]
    expected = np.rint((values.astype(np.float64) - 1000) * 255 / 39000)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 0 and out[-1, -1] == 255


def test_32bit_integer_image_is_scaled_by_its_range(tmp_path):
    values = np.array([[-5, 0], [10, 95]], dtype=np.int32)
    path = _save(tmp_path, "i32.tif", values)
    np.testing.assert_array_equal(read_image(path, 1)[:, :, 0], [[0, 13], [38, 255]])


@pytest.mark.filterwarnings("error")  # no division by a zero range on the way
def test_constant_16bit_png_is_all_zero(tmp_path):
    path = _save(tmp_path, "flat.png", np.full((4, 4), 777, dtype=np.uint16))
    assert not read_image(path, 1).any()


def test_alpha_is_dropped(tmp_path):
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    la = RNG.integers(0, 256, (5, 6, 2), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_save(tmp_path, "a.png", rgba), 3), rgba[..., :3])
    la_path = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]).save(la_path)
    np.testing.assert_array_equal(read_image(la_path, 1)[:, :, 0], la[..., 0])


def test_palette_png_uses_the_palette(tmp_path):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    img = Image.new("P", (7, 6))
    img.putdata(indices.ravel().tolist())
    img.putpalette(palette.ravel().tolist())
    path = tmp_path / "p.png"
    img.save(path, transparency=3)
    np.testing.assert_array_equal(read_image(path, 3), palette[indices])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_as_a_viewer_would(tmp_path, suffix):
    stored = RNG.integers(0, 256, (6, 10), dtype=np.uint8)  # H 6, W 10 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = tmp_path / f"rotated{suffix}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    out = read_image(path, 1)[..., 0]
    assert out.shape == (10, 6)  # displayed upright: H 10, W 6
    expected = np.rot90(stored, k=-1)
    assert np.abs(out.astype(int) - expected).max() < (12 if suffix == ".jpg" else 1)


def test_jpeg_and_channel_choice_checked(tmp_path):
    ramp = np.linspace(0, 255, 16).astype(np.uint8)
    rgb = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1).astype(np.uint8)
    path = _save(tmp_path, "x.jpg", rgb, quality=95)
    out = read_image(path, 3)
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - rgb).max() < 12
    with pytest.raises(ConfigError, match="channels"):
        read_image(path, 2)


# ---------------------------------------------------------------- DICOM


def _write_dicom(path: Path, raw: np.ndarray, photometric: str, **elements) -> Path:
    """A minimal single-frame DICOM file: 12 bits stored in 16 (uint16 ``raw``) or 8-bit RGB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = raw.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if raw.ndim == 3:
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = raw.astype(np.uint8).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = raw.astype("<u2").tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 / C.11.2.1.3 windowing onto 0..255, written out independently."""
    if function == "LINEAR":
        unit = (x - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        unit = (x - center) / width + 0.5
    else:
        unit = 1 / (1 + np.exp(-4 * (x - center) / width))
    return np.rint(np.clip(unit, 0, 1) * 255)


RAW = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dicom_rescale_window_and_inversion(tmp_path, photometric, function):
    slope, intercept, center, width = 0.25, -12.0, 500.0, 100.0
    path = _write_dicom(
        tmp_path / "w.dcm",
        RAW,
        photometric,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=center,
        WindowWidth=width,
        VOILUTFunction=function,
    )
    values = RAW * slope + intercept
    expected = _window(values, center, width, function)
    if function != "LINEAR":  # the data tell the window functions apart
        assert not np.array_equal(expected, _window(values, center, width, "LINEAR"))
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    out = read_image(path, 1)[:, :, 0]
    if function != "SIGMOID":  # the linear windows clip at both ends
        assert (expected == 0).any() and (expected == 255).any()
    np.testing.assert_array_equal(out, expected)


def test_dicom_without_window_uses_its_range_and_is_found_by_magic(tmp_path):
    path = _write_dicom(tmp_path / "scan.img", RAW[2:6], "MONOCHROME1")
    x = RAW[2:6].astype(np.float64)
    expected = 255 - np.rint((x - x.min()) * 255 / (x.max() - x.min()))
    np.testing.assert_array_equal(read_image(path, 3)[:, :, 1], expected)


def test_dicom_voi_lut_sequence(tmp_path):
    lut = Dataset()
    first, entries = 1024, 256
    lut.LUTDescriptor = [entries, first, 10]
    table = (np.arange(entries) * 4).astype(np.uint16)[::-1]  # 10-bit output, descending
    lut.LUTData = table.astype("<u2").tobytes()
    raw = np.concatenate([RAW.ravel(), first + np.arange(entries)]).reshape(20, 16)  # every entry
    path = _write_dicom(tmp_path / "v.dcm", raw, "MONOCHROME2", VOILUTSequence=Sequence([lut]))
    looked_up = table[np.clip(raw.astype(int) - first, 0, entries - 1)]
    expected = np.rint(looked_up.astype(np.float64) * 255 / 1023)  # 10-bit output: 0..1023
    np.testing.assert_array_equal(read_image(path, 1)[:, :, 0], expected)


def test_dicom_by_an_upper_case_suffix_and_multi_frame_refused(tmp_path):
    path = _write_dicom(tmp_path / "scan.DCM", RAW, "MONOCHROME2")
    path.write_bytes(path.read_bytes()[132:])  # no preamble and magic: found by the suffix
    expected = np.rint(RAW.astype(np.float64) * 255 / RAW.max())
    np.testing.assert_array_equal(read_image(path, 1)[:, :, 0], expected)
    two = np.concatenate([RAW, RAW]).astype("<u2").tobytes()
    frames = _write_dicom(tmp_path / "two.dcm", RAW, "MONOCHROME2", NumberOfFrames=2, PixelData=two)
    with pytest.raises(ImageReadError, match="multi-frame DICOM \\(2 frames\\)"):
        read_image(frames, 1)


def test_rgb_dicom(tmp_path):
    rgb = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    path = _write_dicom(tmp_path / "colour.dcm", rgb, "RGB")
    np.testing.assert_array_equal(read_image(path, 3), rgb)
    grey = read_image(path, 1)[:, :, 0].astype(np.float64)
    assert np.abs(grey - _luma(rgb.astype(np.float64))).max() <= 1.0


def test_real_dicom(shared_data):
    (path,) = (shared_data / "real_samples").glob("*.dcm")
    out = read_image(path, 1)
    assert out.dtype == np.uint8 and out.shape == (1024, 1024, 1)
    assert out.std() > 20 and out.min() == 0 and out.max() == 255
    assert load_preprocessed(path, 64, 3).shape == (64, 64, 3)


def test_real_png_and_jpeg(shared_data):
    samples = shared_data / "real_samples"
    for name in ("00000001_000.png", "00027426_000.png"):
        out = read_image(samples / name, 1)
        with Image.open(samples / name) as img:
            np.testing.assert_array_equal(out[:, :, 0], np.asarray(img))
        assert out.shape == (512, 512, 1)
    rgb = read_image(samples / "16747_3_1.jpg", 3)
    assert rgb.shape == (885, 1036, 3) and rgb.std() > 20


# ---------------------------------------------------------------- broken files


def _truncated(source: Path, tmp_path: Path) -> Path:
    data = source.read_bytes()
    cut = tmp_path / f"cut{source.suffix}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_generated_file_raises(tmp_path, suffix):
    noise = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    cut = _truncated(_save(tmp_path, f"full{suffix}", noise), tmp_path)
    with pytest.raises(DataError, match=f"{cut}.*truncated"):
        read_image(cut, 3)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("name", ["00000001_000.png", "16747_3_1.jpg"])
def test_truncated_real_file_raises(shared_data, tmp_path, name):
    cut = _truncated(shared_data / "real_samples" / name, tmp_path)
    with pytest.raises(DataError, match="truncated"):
        read_image(cut, 1)


def test_text_renamed_png_and_missing_files_raise(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(DataError, match="notes.png.*cannot identify"):
        read_image(text, 1)
    with pytest.raises(DataError, match="gone.dcm.*No such file"):
        read_image(tmp_path / "gone.dcm", 1)
    bad_dicom = tmp_path / "bad.dcm"
    bad_dicom.write_text("not dicom either")
    with pytest.raises(DataError, match="bad.dcm"):
        read_image(bad_dicom, 1)


# ---------------------------------------------------------------- resize


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL-style antialiased bilinear (triangle filter, support scaled when shrinking), (out, in)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        x = np.arange(n_in) + 0.5
        w = np.clip(1 - np.abs(x - centre) / support, 0, None)
        weights[i] = w / w.sum()
    return weights


def test_resize_squashes_with_antialiased_bilinear():
    img = RNG.integers(0, 256, (30, 90, 1), dtype=np.uint8)
    out = resize_square(img, 12)
    assert out.shape == (12, 12, 1) and out.dtype == np.uint8
    expected = _bilinear_weights(30, 12) @ img[:, :, 0] @ _bilinear_weights(90, 12).T
    assert np.abs(out[:, :, 0] - expected).max() <= 1.0
    np.testing.assert_array_equal(resize_square(img, 12), out)


def test_resize_keeps_rgb_and_same_size():
    img = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_square(img, 8), img)
    assert resize_square(img, 20).shape == (20, 20, 3)
    with pytest.raises(ConfigError, match="size"):
        resize_square(img, 0)


def test_load_preprocessed_is_read_then_resize(tmp_path):
    rgb = RNG.integers(0, 256, (20, 14, 3), dtype=np.uint8)
    path = _save(tmp_path, "r.png", rgb)
    np.testing.assert_array_equal(
        load_preprocessed(path, 10, 1), resize_square(read_image(path, 1), 10)
    )
