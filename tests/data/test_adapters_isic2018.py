"""ISIC 2018 / HAM10000 adapter on the real 10,015 images, metadata and SRC-MT split."""

import csv
from pathlib import Path

import numpy as np
import pytest

from s2mts2.data.adapters.isic2018 import CLASSES, load_isic2018
from s2mts2.data.splits import labelled_subset
from s2mts2.errors import ConfigError, DataError

SPLIT_FILES = {"train": "training.csv", "val": "validation.csv", "test": "testing.csv"}


@pytest.fixture(scope="module")
def ham(shared_data):
    return shared_data / "ham10000"


@pytest.fixture(scope="module")
def split_rows(ham) -> dict[str, tuple[str, list[float]]]:
    """Image id -> (split, one-hot row) from the SRC-MT CSVs, read independently."""
    out = {}
    for split, name in SPLIT_FILES.items():
        with open(ham / "splits_srcmt" / name, newline="") as f:
            for r in csv.DictReader(f):
                out[r["image"]] = (split, [float(r[c]) for c in CLASSES])
    return out


@pytest.fixture(scope="module")
def table(ham):
    return load_isic2018(ham)


@pytest.fixture(scope="module")
def lesion_table(ham):
    return load_isic2018(ham, split="lesion", seed=0)


def test_srcmt_split_and_labels(table, split_rows, ham):
    assert len(table) == 10_015 and table.missing == 0
    assert table.counts() == {"train": 7012, "val": 1000, "test": 2003}
    assert table.classes == CLASSES and table.task == "multiclass" and table.channels == 3
    for i, p in enumerate(table.paths):
        split, onehot = split_rows[Path(p).stem]
        assert table.split[i] == split
        assert list(table.labels[i]) == onehot
    with open(ham / "HAM10000_metadata.csv", newline="") as f:
        lesion = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(f)}
    assert [lesion[Path(p).stem] for p in table.paths] == list(table.groups)


def test_lesion_split_has_no_shared_lesion(lesion_table):
    t = lesion_table
    assert len(t) == 10_015
    sets = {s: set(t.groups[t.split == s]) for s in ("train", "val", "test")}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    share = {s: n / len(t) for s, n in t.counts().items()}
    assert share == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.01)
    for s in ("val", "test"):  # class-stratified
        np.testing.assert_allclose(
            t.labels[t.split == s].mean(0), t.labels.mean(0), atol=0.01, err_msg=s
        )


def test_lesion_split_depends_on_seed(ham, lesion_table):
    again = load_isic2018(ham, split="lesion", seed=0)
    other = load_isic2018(ham, split="lesion", seed=1)
    assert np.array_equal(again.split, lesion_table.split)
    assert not np.array_equal(other.split, lesion_table.split)


def test_twenty_percent_labelled_per_class(table):
    train = table.indices("train")
    idx = labelled_subset(table.labels, train, fraction=0.2, seed=0)
    assert 1380 <= len(idx) <= 1420
    assert (table.labels[idx].sum(0) > 0).all()
    np.testing.assert_array_equal(
        table.labels[idx].sum(0), np.ceil(0.2 * table.labels[train].sum(0))
    )


def _ground_truth_folder(ham, split_rows, root: Path, n: int, n_images: int) -> list[str]:
    """root/ with a Task 3 ground-truth CSV of ``n`` images, ``n_images`` of them on disk."""
    ids = sorted(split_rows)[:n]
    with open(root / "ISIC2018_Task3_Training_GroundTruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *CLASSES])
        for k in ids:
            w.writerow([k, *split_rows[k][1]])
    (root / "ISIC2018_Task3_Training_Input").mkdir()
    for k in ids[:n_images]:
        name = f"{k}.jpg"
        (root / "ISIC2018_Task3_Training_Input" / name).symlink_to(ham / "images" / name)
    return ids


def test_ground_truth_csv_without_metadata(ham, split_rows, tmp_path):
    ids = _ground_truth_folder(ham, split_rows, tmp_path, 200, 150)
    table = load_isic2018(tmp_path)  # auto: no split CSVs -> lesion split
    assert len(table) == 150 and table.missing == 50
    assert [Path(p).stem for p in table.paths] == ids[:150]
    assert list(table.groups) == ids[:150]
    for i, k in enumerate(ids[:150]):
        assert list(table.labels[i]) == split_rows[k][1]
    assert set(table.split) == {"train", "val", "test"}
    with pytest.raises(DataError, match="splits_srcmt"):
        load_isic2018(tmp_path, split="srcmt")
    with pytest.raises(ConfigError, match="split"):
        load_isic2018(tmp_path, split="random")


def test_bad_label_files(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_1,ISIC_0000001,nv\nHAM_2,ISIC_0000002,melanoma\n"
    )
    with pytest.raises(DataError, match=r"line 3: unknown dx 'melanoma'"):
        load_isic2018(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DataError, match="no labels"):
        load_isic2018(tmp_path)
    (tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0,1,0,0,0,0,0\nISIC_2,0,1,1,0,0,0,0\n"
    )
    with pytest.raises(DataError, match="line 3: expected one-hot"):
        load_isic2018(tmp_path)


def test_split_files_must_agree_with_metadata(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2,ISIC_2,mel\nHAM_3,ISIC_3,df\n"
    )
    head = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
    (tmp_path / "training.csv").write_text(head + "ISIC_1,0,1,0,0,0,0,0\n")
    (tmp_path / "validation.csv").write_text(head + "ISIC_2,1,0,0,0,0,0,0\n")
    (tmp_path / "testing.csv").write_text(head + "ISIC_3,0,0,0,0,1,0,0\n")
    with pytest.raises(DataError, match=r"testing\.csv, line 2: image ISIC_3 is BKL here but DF"):
        load_isic2018(tmp_path)
    (tmp_path / "testing.csv").write_text(head + "ISIC_1,0,1,0,0,0,0,0\n")
    with pytest.raises(DataError, match="already in the train split"):
        load_isic2018(tmp_path)


def _generated_folder(root: Path) -> list[str]:
    """Nine tiny images, metadata (one row without a lesion id) and SRC-MT CSVs for six."""
    from PIL import Image

    ids = [f"ISIC_{k:07d}" for k in range(9)]
    (root / "images").mkdir(parents=True)
    for k in ids:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{k}.jpg")
    lesions = ["HAM_0", "HAM_0", "", "HAM_1", "HAM_2", "HAM_2", "HAM_3", "HAM_4", "HAM_5"]
    dx = ["nv", "nv", "mel", "bcc", "nv", "nv", "df", "vasc", "akiec"]
    meta = ["lesion_id,image_id,dx"] + [f"{le},{k},{d}" for le, k, d in zip(lesions, ids, dx)]
    (root / "HAM10000_metadata.csv").write_text("\n".join(meta) + "\n")
    head = "image," + ",".join(CLASSES) + "\n"
    for name, rows in zip(SPLIT_FILES.values(), ([0, 1, 2, 3], [4], [5])):
        onehot = [",".join("1" if c == dx[k].upper() else "0" for c in CLASSES) for k in rows]
        (root / name).write_text(head + "".join(f"{ids[k]},{o}\n" for k, o in zip(rows, onehot)))
    return ids


def test_generated_folder_split_files_and_lesion_ids(tmp_path, caplog):
    ids = _generated_folder(tmp_path)
    with caplog.at_level("WARNING", logger="s2mts2"):
        table = load_isic2018(tmp_path)  # auto: the SRC-MT CSVs are there
    assert "3 labelled images are in no SRC-MT split file; left out" in caplog.text
    assert [Path(p).stem for p in table.paths] == ids[:6] and table.missing == 0
    assert list(table.split) == ["train"] * 4 + ["val", "test"]
    assert list(table.groups) == ["HAM_0", "HAM_0", ids[2], "HAM_1", "HAM_2", "HAM_2"]
    assert [CLASSES[c] for c in table.labels.argmax(1)] == ["NV", "NV", "MEL", "BCC", "NV", "NV"]
    lesion = load_isic2018(tmp_path, split="lesion")  # the CSVs are there but not used
    assert len(lesion) == 9 and ids[2] in lesion.groups
    for g in np.unique(lesion.groups):
        assert len(set(lesion.split[lesion.groups == g])) == 1


def test_the_split_used_and_its_shared_lesions_are_named(tmp_path, caplog):
    """prepare names the split in summary.json and the log, with the lesions it shares between
    train/val/test: SRC-MT's files put lesion HAM_2 in val and test; the lesion split none."""
    import json

    from s2mts2.data.prepared import prepare_dataset

    _generated_folder(tmp_path / "ham")
    with caplog.at_level("INFO", logger="s2mts2"):
        summary = prepare_dataset(
            "isic2018", tmp_path / "ham", tmp_path / "out", size=8, progress=False, workers=1
        )
    assert summary["split"].startswith("srcmt: SRC-MT's training.csv, validation.csv, testing.csv")
    assert summary["groups_in_several_splits"] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["split"] == summary["split"]
    assert "isic2018 split: srcmt" in caplog.text
    assert "1 patients/lesions have images in more than one of train/val/test" in caplog.text
    lesion = prepare_dataset(
        "isic2018",
        tmp_path / "ham",
        tmp_path / "lesion",
        size=8,
        progress=False,
        workers=1,
        options={"split": "lesion", "seed": 3},
    )
    assert lesion["split"] == "lesion: grouped by lesion, class-stratified 70/10/20, seed 3"
    assert lesion["groups_in_several_splits"] == 0


def test_srcmt_split_shares_lesions_between_train_and_test(table, lesion_table):
    assert table.groups_in_several_splits() == 1013  # SRC-MT split by image, not by lesion
    assert lesion_table.groups_in_several_splits() == 0
