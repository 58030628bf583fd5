"""scikit-learn's bundled handwritten digits written out as a user brings images: a folder of
PNGs and a CSV, read by the ``csv`` adapter (``CSV_OPTIONS``). Real images with no download:
the demo's second task and a benchmark of the CSV route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from s2mts2.files import write_text_atomic

FOLDER = "digits-images"
CSV_OPTIONS = {"csv": "labels.csv", "class_column": "digit", "channels": 1}


def write_digits_folder(data_dir: str | Path) -> Path:
    """The 1,797 bundled 8x8 digits (the UCI test set, 43 writers, values 0..16) as
    ``<data_dir>/digits-images/`` with ``images/digit-NNNN.png`` (grey, 0..16 scaled to 0..255)
    and ``labels.csv`` (``path,digit``, rows in scikit-learn's order). Kept when ``labels.csv``
    exists (it is written last)."""
    folder = Path(data_dir) / FOLDER
    if (folder / "labels.csv").is_file():
        return folder
    digits = load_digits()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,digit"]
    for i, (image, digit) in enumerate(zip(digits.images, digits.target)):
        name = f"images/digit-{i:04d}.png"
        pixels = np.rint(image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},{digit}")
    write_text_atomic(folder / "labels.csv", "\n".join(rows) + "\n")
    return folder
