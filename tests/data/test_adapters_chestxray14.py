"""ChestX-ray14 adapter on the real NIH sample (1,000 images, full official CSV and lists) and on
a folder generated in the original layout."""

import csv
import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2mts2.data.adapters.chestxray14 import CLASSES, FINDINGS, load_chestxray14
from s2mts2.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def nih(shared_data):
    return shared_data / "nih14_sample"


@pytest.fixture(scope="module")
def entries(nih) -> dict[str, dict[str, str]]:
    """Image name -> CSV row, read independently of the adapter."""
    with gzip.open(nih / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as f:
        return {r["Image Index"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def table(nih):
    return load_chestxray14(nih)


def test_sample_counts_and_split(table, nih):
    assert len(table) == 1000
    assert table.missing == 111_120
    assert table.counts() == {"train": 690, "test": 310}
    test_names = set((nih / "test_list.txt").read_text().split())
    assert sum(Path(p).name in test_names for p in table.paths) == 310
    for p, s in zip(table.paths, table.split):
        assert (Path(p).name in test_names) == (s == "test")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in table.paths)


def test_labels_groups_and_metadata_match_the_csv(table, entries):
    assert table.classes == CLASSES and table.eval_classes == FINDINGS
    assert len(CLASSES) == 15 and "No Finding" not in FINDINGS
    assert table.task == "multilabel" and table.channels == 1
    for i, p in enumerate(table.paths):
        row = entries[Path(p).name]
        expected = set(row["Finding Labels"].split("|"))
        assert {c for c, v in zip(CLASSES, table.labels[i]) if v == 1} == expected
        assert table.groups[i] == row["Patient ID"]
    assert set(np.unique(table.labels)) == {0.0, 1.0}


def test_missing_images_are_reported(nih, caplog):
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        load_chestxray14(nih, view="AP")
    lines = [r.getMessage() for r in caplog.records if r.name == "s2mts2"]
    assert len(lines) == 1 and "not found" in lines[0]


def test_view_filter(nih, entries):
    pa = load_chestxray14(nih, view="PA")
    ap = load_chestxray14(nih, view="AP")
    assert len(pa) + len(ap) == 1000 and len(pa) > 0 and len(ap) > 0
    assert all(entries[Path(p).name]["View Position"] == "PA" for p in pa.paths)
    n_pa = sum(r["View Position"] == "PA" for r in entries.values())
    assert pa.missing == n_pa - len(pa)
    with pytest.raises(ConfigError, match="view"):
        load_chestxray14(nih, view="LL")


def _original_csv(nih, out: Path, rows: int, edit=None) -> list[str]:
    """Write the first ``rows`` entries as the original ``Data_Entry_2017.csv`` (trailing
    unnamed column); return the image names."""
    with gzip.open(nih / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as f:
        lines = f.read().splitlines()[: rows + 1]
    if edit:
        lines = edit(lines)
    (out / "Data_Entry_2017.csv").write_text("\n".join(line + "," for line in lines) + "\n")
    for name in ("train_val_list.txt", "test_list.txt"):
        (out / name).symlink_to(nih / name)
    return [line.split(",")[0] for line in lines[1:]]


def test_original_csv_with_trailing_column_and_flat_images(nih, entries, tmp_path):
    names = _original_csv(nih, tmp_path, 50)
    linked = [n for n in names if (nih / "images" / n).exists()][:6]
    assert len(linked) == 6
    for n in linked:
        (tmp_path / n).symlink_to(nih / "images" / n)
    table = load_chestxray14(tmp_path)
    assert sorted(Path(p).name for p in table.paths) == sorted(linked)
    assert table.missing == 50 - len(linked)
    for i, p in enumerate(table.paths):
        expected = set(entries[Path(p).name]["Finding Labels"].split("|"))
        assert {c for c, v in zip(CLASSES, table.labels[i]) if v == 1} == expected


def test_archive_layout_images_001(nih, tmp_path):
    for name in ("Data_Entry_2017_v2020.csv.gz", "train_val_list.txt", "test_list.txt"):
        (tmp_path / name).symlink_to(nih / name)
    files = sorted(os.listdir(nih / "images"))[:30]
    for k, n in enumerate(files):
        d = tmp_path / f"images_{1 + k % 3:03d}" / "images"
        d.mkdir(parents=True, exist_ok=True)
        (d / n).symlink_to(nih / "images" / n)
    table = load_chestxray14(tmp_path)
    assert sorted(Path(p).name for p in table.paths) == files
    assert table.missing == 112_120 - 30


def test_unknown_label_names_line_and_label(nih, tmp_path):
    def corrupt(lines):
        cells = lines[3].split(",")
        cells[1] = "Effusion|Pneumonitis"
        lines[3] = ",".join(cells)
        return lines

    names = _original_csv(nih, tmp_path, 5, corrupt)
    (tmp_path / "images").mkdir()
    for n in names:
        (tmp_path / "images" / n).symlink_to(nih / "images" / n)
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv, line 4: .*'Pneumonitis'"):
        load_chestxray14(tmp_path)


def test_missing_files_are_errors(nih, tmp_path):
    with pytest.raises(DataError, match="Data_Entry_2017"):
        load_chestxray14(tmp_path)
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").symlink_to(nih / "Data_Entry_2017_v2020.csv.gz")
    with pytest.raises(DataError, match="train_val_list.txt"):
        load_chestxray14(tmp_path)
    for name in ("train_val_list.txt", "test_list.txt"):
        (tmp_path / name).symlink_to(nih / name)
    with pytest.raises(DataError, match="none of the listed images"):
        load_chestxray14(tmp_path)


@pytest.mark.parametrize("options", [{"split": "grouped"}, {"val_fraction": 0.1}])
def test_patient_grouped_splits_share_no_patient(nih, options):
    t = load_chestxray14(nih, **options)
    parts = {s: set(t.groups[t.split == s]) for s in ("train", "val", "test")}
    assert all(parts[s] for s in parts)
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    assert not (parts["val"] & parts["test"])
    if "val_fraction" in options:  # the official test split is kept
        assert (t.split == "test").sum() == 310
        assert 0.05 < (t.split == "val").sum() / 690 < 0.15
    else:
        assert 0.6 < (t.split == "train").mean() < 0.8
    again = load_chestxray14(nih, **options)
    assert np.array_equal(again.split, t.split)


def test_bad_split_options(nih):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_chestxray14(nih, val_fraction=1.5)
    with pytest.raises(ConfigError, match="split"):
        load_chestxray14(nih, split="random")


def _generated_nih(root: Path) -> list[dict[str, str]]:
    """A ChestX-ray14 folder in the original layout, written here (no ../shared needed): the
    original CSV (trailing unnamed column), the two official lists, and images for 16 of the 20
    listed names, spread over images/ and the archive folders images_001/images, images_002/..."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(20):
        patient = 1 + k // 2
        picked = rng.choice(FINDINGS, size=int(rng.integers(0, 3)), replace=False)
        findings = "|".join(picked) if len(picked) else "No Finding"
        name = f"{patient:08d}_{k % 2:03d}.png"
        view = "PA" if k % 3 else "AP"
        rows.append({"name": name, "findings": findings, "patient": str(patient), "view": view})
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    header += "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    lines = [header] + [
        f"{r['name']},{r['findings']},{k % 2},{r['patient']},50,F,{r['view']},2500,2048,0.14,0.14,"
        for k, r in enumerate(rows)
    ]
    root.mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    test = [r["name"] for r in rows if int(r["patient"]) % 4 == 0]  # patient-level, as NIH's
    (root / "test_list.txt").write_text("\n".join(test))  # no trailing newline, as NIH's
    train = [r["name"] for r in rows if r["name"] not in test]
    (root / "train_val_list.txt").write_text("\n".join(train))
    for k, r in enumerate(rows[:16]):
        folder = root / ("images" if k < 6 else f"images_{1 + k % 2:03d}/images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), k, np.uint8)).save(folder / r["name"])
    return rows


def test_a_generated_folder_in_the_original_layout(tmp_path, caplog):
    rows = _generated_nih(tmp_path / "nih")
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        table = load_chestxray14(tmp_path / "nih")
    assert "4 of 20 listed images not found" in caplog.text
    assert [Path(p).name for p in table.paths] == [r["name"] for r in rows[:16]]
    assert table.missing == 4 and all(os.path.isfile(p) for p in table.paths)
    for i, r in enumerate(rows[:16]):
        assert {c for c, v in zip(CLASSES, table.labels[i]) if v == 1} == set(
            r["findings"].split("|")
        )
        assert table.groups[i] == r["patient"]
        assert table.split[i] == ("test" if int(r["patient"]) % 4 == 0 else "train")
    assert table.eval_classes == FINDINGS
    pa = load_chestxray14(tmp_path / "nih", view="PA")
    assert [Path(p).name for p in pa.paths] == [r["name"] for r in rows[:16] if r["view"] == "PA"]
    assert load_chestxray14(tmp_path / "nih", view="pa").paths == pa.paths  # as typed
    with pytest.raises(ConfigError, match=r"option view must be one of \['PA', 'AP'\], got 'LL'"):
        load_chestxray14(tmp_path / "nih", view="ll")
    held = load_chestxray14(tmp_path / "nih", val_fraction=0.3)
    assert (held.split == "test").sum() == (table.split == "test").sum()
    val, train = set(held.groups[held.split == "val"]), set(held.groups[held.split == "train"])
    assert val and train and not (val & train) and len(val) < len(train)  # 30 % of patients
