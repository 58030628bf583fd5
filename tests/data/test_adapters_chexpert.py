"""CheXpert adapter: the real train.csv labels with tiny JPEGs drawn at the first 300 paths."""

import csv
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2mts2.data.adapters.chexpert import COMPETITION, OBSERVATIONS, load_chexpert
from s2mts2.errors import ConfigError, DataError

N_IMAGES = 300
N_ROWS = 223_414


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)


@pytest.fixture(scope="module")
def source(shared_data):
    return shared_data / "chexpert_meta" / "train.csv.gz"


@pytest.fixture(scope="module")
def rows(source) -> list[dict[str, str]]:
    """The first 300 CSV rows, read independently of the adapter."""
    with gzip.open(source, "rt", newline="") as f:
        reader = csv.DictReader(f)
        return [next(reader) for _ in range(N_IMAGES)]


@pytest.fixture(scope="module")
def full_root(tmp_path_factory, source, rows):
    """parent/CheXpert-v1.0-small/ with the real train.csv.gz, 300 images, a small valid.csv."""
    parent = tmp_path_factory.mktemp("chexpert_full")
    dataset = parent / "CheXpert-v1.0-small"
    dataset.mkdir()
    (dataset / "train.csv.gz").symlink_to(source)
    for r in rows:
        _jpeg(parent / r["Path"])
    header = list(rows[0])
    valid = [
        dict(r, Path=f"CheXpert-v1.0-small/valid/patient{64541 + k}/study1/view1_frontal.jpg")
        for k, r in enumerate(rows[:6])
    ]
    with open(dataset / "valid.csv", "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(valid)
    for r in valid[:4]:
        _jpeg(parent / r["Path"])
    return parent


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, rows):
    """A dataset folder (root = the dataset folder) whose train.csv has only the 300 rows."""
    parent = tmp_path_factory.mktemp("chexpert_small")
    dataset = parent / "CheXpert-v1.0-small"
    dataset.mkdir()
    with open(dataset / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        _jpeg(parent / r["Path"])
    return dataset


def _expected(rows, classes, uncertain, blank) -> np.ndarray:
    value = {"1.0": 1.0, "0.0": 0.0}
    value["-1.0"] = {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    value[""] = {"zeros": 0.0, "ignore": math.nan}[blank]
    return np.array([[value[r[c]] for c in classes] for r in rows], dtype=np.float32)


def test_full_csv_counts_missing_and_splits(full_root, rows):
    table = load_chexpert(full_root)
    assert table.counts() == {"train": N_IMAGES, "val": 4}
    assert table.missing == (N_ROWS - N_IMAGES) + 2
    assert table.classes == COMPETITION and table.task == "multilabel" and table.channels == 1
    assert [Path(p).relative_to(full_root).as_posix() for p in table.paths[:N_IMAGES]] == [
        r["Path"] for r in rows
    ]
    expected = _expected(rows, COMPETITION, "ignore", "zeros")
    np.testing.assert_array_equal(table.labels[:N_IMAGES], expected)
    assert table.groups[-1] == "patient64544"


@pytest.mark.parametrize("uncertain", ["ignore", "zeros", "ones"])
def test_uncertain_policies(small_root, rows, uncertain):
    table = load_chexpert(small_root, classes="all", uncertain=uncertain)
    assert table.missing == 0 and table.classes == OBSERVATIONS
    raw = np.array([[r[c] for c in OBSERVATIONS] for r in rows])
    assert (raw == "-1.0").sum() > 20
    expected = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    np.testing.assert_array_equal(table.labels[raw == "-1.0"], expected)
    np.testing.assert_array_equal(table.labels, _expected(rows, OBSERVATIONS, uncertain, "zeros"))


def test_blank_policy(small_root, rows):
    table = load_chexpert(small_root, blank="ignore", uncertain="ones")
    raw = np.array([[r[c] for c in COMPETITION] for r in rows])
    assert (raw == "").sum() > 100
    assert np.isnan(table.labels[raw == ""]).all()
    np.testing.assert_array_equal(table.labels, _expected(rows, COMPETITION, "ones", "ignore"))


def test_frontal_only_and_patients(small_root, rows):
    table = load_chexpert(small_root, frontal_only=True)
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    assert 0 < len(table) == len(frontal) < N_IMAGES
    assert list(table.groups) == [r["Path"].split("/")[2] for r in frontal]
    assert all("lateral" not in p for p in table.paths)


def test_bad_options_and_cells(small_root, tmp_path):
    with pytest.raises(ConfigError, match="uncertain"):
        load_chexpert(small_root, uncertain="maybe")
    with pytest.raises(ConfigError, match="classes"):
        load_chexpert(small_root, classes="some")
    with pytest.raises(DataError, match="train.csv"):
        load_chexpert(tmp_path)
    dataset = tmp_path / "renamed"  # the CSV's first folder names the dataset folder, any name
    dataset.mkdir()
    lines = (small_root / "train.csv").read_text().splitlines()[:4]
    cells = next(csv.reader([lines[2]]))
    cells[OBSERVATIONS.index("Edema") + 5] = "2.0"
    lines[2] = ",".join(cells)
    (dataset / "train.csv").write_text("\n".join(lines) + "\n")
    for line in lines[1:]:
        _jpeg(dataset / line.split(",")[0].split("/", 1)[1])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.csv").write_text("Path\n")
    with pytest.raises(DataError, match="several folders: other, renamed"):
        load_chexpert(tmp_path)
    with pytest.raises(DataError, match=r"train\.csv, line 3: column 'Edema' has '2\.0'"):
        load_chexpert(dataset)


def test_a_generated_csv_whose_paths_start_at_the_split_folder(tmp_path):
    # some copies list "train/patient.../..." without the dataset folder in front
    dataset = tmp_path / "chexpert"
    rows = [
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "1.0", "-1.0"),
        ("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Frontal", "", "0.0"),
        ("train/patient00002/study1/view2_lateral.jpg", "Lateral", "0.0", "1.0"),
    ]
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
    dataset.mkdir()
    with open(dataset / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for path, view, atelectasis, edema in rows:
            cells = dict.fromkeys(OBSERVATIONS, "") | {"Atelectasis": atelectasis, "Edema": edema}
            w.writerow([path, "Female", "60", view, "AP", *(cells[c] for c in OBSERVATIONS)])
    expected = [dataset / "train/patient00001/study1/view1_frontal.jpg"]
    expected += [dataset / "train/patient00002/study1/view1_frontal.jpg"]
    expected += [dataset / "train/patient00002/study1/view2_lateral.jpg"]
    for p in expected:
        _jpeg(p)
    table = load_chexpert(dataset)
    assert table.paths == [str(p) for p in expected] and table.missing == 0
    assert list(table.groups) == ["patient00001", "patient00002", "patient00002"]
    assert table.counts() == {"train": 3}
    edema, atelectasis = COMPETITION.index("Edema"), COMPETITION.index("Atelectasis")
    np.testing.assert_array_equal(table.labels[:, atelectasis], [1.0, 0.0, 0.0])  # blank -> 0
    np.testing.assert_array_equal(table.labels[:, edema], [np.nan, 0.0, 1.0])  # -1 -> ignored
    assert load_chexpert(dataset, blank="ignore").labels[1, atelectasis] != 0  # NaN
    frontal = load_chexpert(dataset, frontal_only=True)
    assert frontal.paths == [str(p) for p in expected[:2]]
    (dataset / "valid.csv").write_text((dataset / "train.csv").read_text().split("\n", 2)[0] + "\n")
    with open(dataset / "valid.csv", "a", newline="") as f:
        csv.writer(f).writerow(["valid/patient64541/study1/view1_frontal.jpg", "", "", "Frontal"])
    _jpeg(dataset / "valid/patient64541/study1/view1_frontal.jpg")
    assert load_chexpert(dataset).counts() == {"train": 3, "val": 1}
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "train.csv").write_text("Path\n")
    with pytest.raises(DataError, match="several folders: chexpert, copy"):
        load_chexpert(tmp_path)
