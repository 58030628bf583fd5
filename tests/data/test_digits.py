"""The bundled digits written as a user's folder + CSV, read back by the ``csv`` adapter."""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from s2mts2.data.adapters.csvfolder import load_csv
from s2mts2.data.digits import CSV_OPTIONS, FOLDER, write_digits_folder


def test_every_bundled_digit_is_written_pixel_for_pixel_with_its_label(tmp_path):
    folder = write_digits_folder(tmp_path)
    assert folder == tmp_path / FOLDER
    table = load_csv(folder, **CSV_OPTIONS)
    digits = load_digits()
    assert table.classes == [str(d) for d in range(10)] and table.task == "multiclass"
    assert table.channels == 1 and table.missing == 0
    assert len(table.paths) == len(digits.target) == 1797
    assert (table.labels.argmax(1) == digits.target).all()  # CSV rows keep sklearn's order
    for i in (0, 1, 1796):
        pixels = np.asarray(Image.open(table.paths[i]))
        assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, np.rint(digits.images[i] * 255 / 16))
    for split in ("train", "val", "test"):  # stratified: every digit in every split
        assert set(table.labels[table.split == split].argmax(1)) == set(range(10))


def test_a_written_folder_is_kept_and_a_half_written_one_is_completed(tmp_path):
    folder = write_digits_folder(tmp_path)
    (folder / "images" / "digit-0000.png").unlink()
    assert write_digits_folder(tmp_path) == folder  # kept once labels.csv exists
    assert not (folder / "images" / "digit-0000.png").exists()
    (folder / "labels.csv").unlink()  # an interrupted write: labels.csv comes last
    write_digits_folder(tmp_path)
    assert (folder / "images" / "digit-0000.png").is_file()
    assert len((folder / "labels.csv").read_text().splitlines()) == 1798


@pytest.mark.parametrize("name", ["digit-0005.png", "digit-1796.png"])
def test_digit_files_are_named_by_their_row(tmp_path, name):
    folder = write_digits_folder(tmp_path)
    rows = (folder / "labels.csv").read_text().splitlines()
    index = int(name[6:10])
    assert rows[index + 1].startswith(f"images/{name},")
