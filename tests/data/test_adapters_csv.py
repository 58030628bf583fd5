"""Generic CSV-folder adapter and the adapter registry."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2mts2.data.adapters import ADAPTERS, load_dataset
from s2mts2.data.adapters.csvfolder import load_csv
from s2mts2.errors import ConfigError, DataError


def _folder(root: Path, rows: list[str], header: str, images: list[str]) -> None:
    for name in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture
def multilabel(tmp_path) -> Path:
    rows = [f"img/{k}.png,{k % 2},{'' if k == 3 else (k // 2) % 2},p{k // 2}" for k in range(12)]
    _folder(tmp_path, rows, "path,a,b,patient", [f"img/{k}.png" for k in range(11)])
    return tmp_path


def test_multilabel_columns_blank_is_nan(multilabel, caplog):
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        t = load_csv(multilabel, csv="labels.csv", label_columns=["a", "b"], group_column="patient")
    assert len(t) == 11 and t.missing == 1 and "not found" in caplog.text
    assert t.task == "multilabel" and t.classes == ["a", "b"] and t.channels == 3
    assert t.paths[0] == str(multilabel / "img" / "0.png")
    expected = np.array([[k % 2, (k // 2) % 2] for k in range(11)], np.float32)
    expected[3, 1] = np.nan
    np.testing.assert_array_equal(t.labels, expected)
    for g in np.unique(t.groups):
        assert len(set(t.split[t.groups == g])) == 1
    assert np.array_equal(
        t.split,
        load_csv(
            multilabel, csv="labels.csv", label_columns=["a", "b"], group_column="patient"
        ).split,
    )


def test_class_column_and_split_column(tmp_path):
    names = ["nv", "mel", "", "bcc", "nv", "mel"]
    splits = ["train", "train", "train", "val", "test", "test"]
    rows = [f"{k}.png,{c},{s}" for k, (c, s) in enumerate(zip(names, splits))]
    _folder(tmp_path, rows, "file,dx,fold", [f"{k}.png" for k in range(6)])
    t = load_csv(
        tmp_path,
        csv="labels.csv",
        path_column="file",
        class_column="dx",
        split_column="fold",
        channels=1,
    )
    assert t.classes == ["bcc", "mel", "nv"] and t.task == "multiclass" and t.channels == 1
    np.testing.assert_array_equal(t.labels[[0, 1, 3]], np.eye(3, dtype=np.float32)[[2, 1, 0]])
    assert np.isnan(t.labels[2]).all()
    assert list(t.split) == splits
    assert list(t.groups) == t.paths  # no group column: one group per image


def test_a_split_column_that_lets_patients_cross_splits_is_reported(tmp_path, caplog):
    splits = ["train", "train", "test", "val", "val", "test"]  # p1: test+val, p2: val+test
    rows = [f"{k}.png,nv,{s},p{k // 2}" for k, s in enumerate(splits)]
    _folder(tmp_path, rows, "file,dx,fold,patient", [f"{k}.png" for k in range(6)])
    options = dict(csv="labels.csv", path_column="file", class_column="dx", split_column="fold")
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        t = load_csv(tmp_path, **options, group_column="patient")
    assert list(t.split) == splits  # the CSV's split is kept, and the leak is named
    assert "2 of 3 patient values have images in more than one split (e.g. p1 in test/val)" in (
        caplog.text
    )
    caplog.clear()
    (tmp_path / "labels.csv").write_text(
        "file,dx,fold,patient\n" + "".join(f"{k}.png,nv,{s},p{k}\n" for k, s in enumerate(splits))
    )
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        load_csv(tmp_path, **options, group_column="patient")
    assert "more than one split" not in caplog.text


def test_spreadsheet_exports_semicolons_windows_paths_and_missing_files_named(tmp_path, caplog):
    rows = ["img\\0.png;nv", "img\\1.png;mel", "img\\gone.png;nv", "img\\2.png;mel"]
    _folder(tmp_path, rows, "path;dx", ["img/0.png", "img/1.png", "img/2.png"])
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        t = load_csv(tmp_path, csv="labels.csv", class_column="dx")
    assert t.paths == [str(tmp_path / "img" / f"{k}.png") for k in range(3)]
    assert t.classes == ["mel", "nv"] and t.missing == 1
    assert "1 of 4 listed images not found" in caplog.text
    assert "line 4: img\\gone.png" in caplog.text
    (tmp_path / "latin.csv").write_bytes("path,dx\nimg/0.png,n\xe6vus\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text.*save the CSV as UTF-8"):
        load_csv(tmp_path, csv="latin.csv", class_column="dx")


def test_uncertain_labels_need_the_option_and_duplicates_are_refused(tmp_path):
    rows = ["0.png,1,-1", "1.png,0,1", "2.png,-1.0,0"]
    _folder(tmp_path, rows, "path,a,b", [f"{k}.png" for k in range(3)])
    with pytest.raises(DataError, match=r"line 4: column 'a' has '-1.0'.*--option uncertain"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a", "b"])
    expected = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
    for policy, value in expected.items():
        t = load_csv(tmp_path, csv="labels.csv", label_columns="a,b", uncertain=policy)
        np.testing.assert_array_equal(t.labels, [[1, value], [0, 1], [value, 0]])
    with pytest.raises(ConfigError, match="uncertain"):
        load_csv(tmp_path, csv="labels.csv", label_columns="a", uncertain="maybe")
    (tmp_path / "dup.csv").write_text("path,a\n0.png,1\n1.png,0\n./0.png,0\n")
    with pytest.raises(DataError, match=r"dup.csv, line 4: image .*0.png is listed again .*line 2"):
        load_csv(tmp_path, csv="dup.csv", label_columns="a")


def test_label_columns_may_be_a_comma_separated_string(multilabel):
    t = load_csv(multilabel, csv="labels.csv", label_columns="a, b")
    assert t.classes == ["a", "b"]
    assert load_csv(multilabel, csv="labels.csv", label_columns="b").classes == ["b"]


def _classes_folder(root: Path, names: list[str]) -> None:
    rows = [f"{k}.png,{c}" for k, c in enumerate(names)]
    _folder(root, rows, "path,dx", [f"{k}.png" for k in range(len(names))])


def test_class_names_that_differ_in_case_are_refused(tmp_path):
    _classes_folder(tmp_path, ["nv", "mel", "nv", "NV", "mel", "nv"])
    with pytest.raises(DataError, match=r"'NV' \(line 5\), 'nv' \(line 2\) differ only in case"):
        load_csv(tmp_path, csv="labels.csv", class_column="dx")


def test_a_rare_class_is_reported_and_the_classes_option_refuses_it(tmp_path, caplog):
    _classes_folder(tmp_path, ["nv", "mel", "nv", "Melanoma", "mel", "nv", "mel", "bcc"])
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        t = load_csv(tmp_path, csv="labels.csv", class_column="dx")
    assert t.classes == ["Melanoma", "bcc", "mel", "nv"]
    assert "'Melanoma' (1, line 5)" in caplog.text and "'bcc' (1, line 9)" in caplog.text
    with pytest.raises(DataError, match=r"line 5: class 'Melanoma' is not one of the classes"):
        load_csv(tmp_path, csv="labels.csv", class_column="dx", classes="nv,mel,bcc")
    _classes_folder(tmp_path, ["nv", "mel", "nv", "", "mel", "nv"])
    t = load_csv(tmp_path, csv="labels.csv", class_column="dx", classes=["nv", "mel", "bcc"])
    assert t.classes == ["nv", "mel", "bcc"]  # the given order, an absent class kept
    np.testing.assert_array_equal(t.labels[0], [1, 0, 0])
    assert np.isnan(t.labels[3]).all()
    with pytest.raises(ConfigError, match="classes goes with class_column"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["dx"], classes=["nv"])


def test_missing_column_names_column_file_and_columns(multilabel):
    with pytest.raises(
        DataError, match=r"labels\.csv: column 'c' not found; columns are: path, a, b"
    ):
        load_csv(multilabel, csv="labels.csv", label_columns=["a", "c"])
    with pytest.raises(DataError, match="'subject'"):
        load_csv(multilabel, csv="labels.csv", label_columns=["a"], group_column="subject")


@pytest.mark.parametrize("bad", ["../outside.png", "img/../../outside.png", "/etc/passwd"])
def test_path_escaping_the_root_names_the_row(tmp_path, bad):
    root = tmp_path / "data"
    root.mkdir()
    _folder(root, ["ok.png,1", f"{bad},0"], "path,a", ["ok.png"])
    (tmp_path / "outside.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"labels\.csv, line 3: image path .* not inside"):
        load_csv(root, csv="labels.csv", label_columns=["a"])


def test_absolute_path_inside_root_is_accepted(tmp_path):
    _folder(tmp_path, [f"{tmp_path / 'x.png'},1"], "path,a", ["x.png"])
    assert load_csv(tmp_path, csv=str(tmp_path / "labels.csv"), label_columns=["a"]).paths == [
        str(tmp_path / "x.png")
    ]


def test_bad_values(tmp_path):
    _folder(tmp_path, ["x.png,2,train"], "path,a,fold", ["x.png"])
    with pytest.raises(DataError, match=r"line 2: column 'a' has '2'"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a"])
    _folder(tmp_path, ["x.png,1,training"], "path,a,fold", [])
    with pytest.raises(DataError, match=r"line 2: split 'training'"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a"], split_column="fold")
    _folder(tmp_path, ["x.png,1,1"], "path,a,b", [])
    with pytest.raises(DataError, match="exactly one 1"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a", "b"], task="multiclass")
    with pytest.raises(ConfigError, match="exactly one of"):
        load_csv(tmp_path, csv="labels.csv")
    with pytest.raises(ConfigError, match="channels"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a"], channels=2)


def test_registry(multilabel):
    assert set(ADAPTERS) == {"chestxray14", "chexpert", "isic2018", "csv", "synthetic"}
    t = load_dataset("csv", multilabel, csv="labels.csv", label_columns=["a", "b"])
    assert len(t) == 11
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; valid names: chestxray14"):
        load_dataset("mnist", multilabel)
    with pytest.raises(ConfigError, match="unknown option 'label_column'"):
        load_dataset("csv", multilabel, csv="labels.csv", label_column=["a"])
    with pytest.raises(ConfigError, match="option 'csv' is required"):
        load_dataset("csv", multilabel, label_columns=["a"])


def test_a_spreadsheet_export_with_bom_padded_header_blank_lines_and_short_rows(tmp_path):
    # Excel's "CSV UTF-8" starts with a byte-order mark; hand edits leave spaces and blank lines
    _folder(tmp_path, [], "x", [f"{k}.png" for k in range(3)])
    text = "\ufeffpath , dx ,site\r\n0.png,nv,back\r\n\r\n1.png,mel\r\n2.png,nv,arm\r\n"
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-8"))
    t = load_csv(tmp_path, csv="labels.csv", class_column="dx", group_column="site")
    assert t.paths == [str(tmp_path / f"{k}.png") for k in range(3)] and t.classes == ["mel", "nv"]
    assert list(t.groups) == ["back", str(tmp_path / "1.png"), "arm"]  # short row: no group


def test_rows_without_a_group_are_their_own_group(tmp_path):
    rows = [f"{k}.png,{k % 2},{'p' if k < 2 else ''}" for k in range(6)]
    _folder(tmp_path, rows, "path,a,patient", [f"{k}.png" for k in range(6)])
    t = load_csv(tmp_path, csv="labels.csv", label_columns="a", group_column="patient")
    assert list(t.groups) == ["p", "p", *(str(tmp_path / f"{k}.png") for k in range(2, 6))]


def test_repeated_names_in_an_option_are_refused(multilabel):
    with pytest.raises(ConfigError, match="label_columns repeats a name"):
        load_csv(multilabel, csv="labels.csv", label_columns="a,b,a")


def test_a_multiclass_row_of_zeros_is_refused(tmp_path):
    _folder(tmp_path, ["x.png,1,0", "y.png,0,0"], "path,a,b", ["x.png", "y.png"])
    with pytest.raises(DataError, match=r"line 3: task multiclass needs exactly one 1"):
        load_csv(tmp_path, csv="labels.csv", label_columns=["a", "b"], task="multiclass")


def test_prepare_cli_takes_column_names_as_typed_and_parses_the_other_options(tmp_path):
    from s2mts2.cli import main
    from s2mts2.data.prepared import PreparedData

    rows = [f"{k}.png,{'ab'[k % 2]},{k // 2:04d}" for k in range(12)]
    _folder(tmp_path / "src", rows, "file,2024,0012", [f"{k}.png" for k in range(12)])
    options = ["csv=labels.csv", "path_column=file", "class_column=2024", "group_column=0012"]
    flags = [a for o in [*options, "channels=1", "classes=[b, a]"] for a in ("--option", o)]
    out = tmp_path / "out"
    common = ["--size", "8", "--labelled", "0.5", "--workers", "1", "--no-progress"]
    assert (
        main(
            ["prepare", "csv", "--root", str(tmp_path / "src"), "--out", str(out), *common, *flags]
        )
        == 0
    )
    table = PreparedData.open(out, 8).table
    assert table.classes == ["b", "a"] and table.channels == 1
    assert sorted(set(table.groups)) == [f"{k:04d}" for k in range(6)]  # "0012" is no number
