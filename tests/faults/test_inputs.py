"""Bad label tables and leftovers: refused before any decoding (exit 2), or reported in the
results, never silently taken."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from infer.conftest import png_bytes, write_checkpoint
from PIL import Image

from s2mts2.data.imageio import ImageReadError, read_image
from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.files import remove_stale_temporaries

from .conftest import SRC, temporaries


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Ten PNGs in root/img and a file outside root that root/img/link.png points to."""
    folder = tmp_path / "root"
    (folder / "img").mkdir(parents=True)
    for i in range(10):
        (folder / "img" / f"{i}.png").write_bytes(png_bytes(20, 20))
    (tmp_path / "secret.png").write_bytes(png_bytes(20, 20))
    (folder / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    return folder


def prepare_csv(run, root: Path, rows: list[str], *options: str):
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    argv = ["prepare", "csv", "--root", root, "--out", root.parent / "out", "--size", "8"]
    argv += ["--no-progress", "--workers", "1", "--option", "csv=labels.csv"]
    for option in options:
        argv += ["--option", option]
    return run(*argv)


def test_a_blank_class_column_is_refused(root, run):
    rows = ["path,label"] + [f"img/{i}.png," for i in range(10)]
    prepare_csv(run, root, rows, "class_column=label").failed_cleanly(
        2, "not one image has a label"
    )
    assert not (root.parent / "out" / "cache-8px").exists()


def test_blank_label_columns_are_refused(root, run):
    rows = ["path,A,B"] + [f"img/{i}.png,," for i in range(10)]
    prepare_csv(run, root, rows, "label_columns=A,B").failed_cleanly(2, "not one image has a label")


def test_nan_in_a_class_column_is_an_unknown_label_not_a_class(root, run):
    names = ["A"] * 4 + ["B"] * 4 + ["nan", "NaN"]
    rows = ["path,label"] + [f"img/{i}.png,{n}" for i, n in enumerate(names)]
    assert prepare_csv(run, root, rows, "class_column=label").code == 0
    summary = (root.parent / "out" / "summary.json").read_text()
    assert '"classes": [\n    "A",\n    "B"\n  ]' in summary


def test_a_link_out_of_the_root_is_refused(root, run):
    rows = ["path,label"] + [f"img/{i}.png,{'AB'[i % 2]}" for i in range(10)] + ["img/link.png,A"]
    result = prepare_csv(run, root, rows, "class_column=label")
    result.failed_cleanly(2, "line 12", "not inside the root folder")


@pytest.mark.parametrize(
    "flag", [["--labelled", "0"], ["--labelled", "1.5"], ["--labelled-count", "99"]]
)
def test_a_bad_labelled_setting_is_refused_before_decoding(root, run, flag):
    rows = ["path,label"] + [f"img/{i}.png,{'AB'[i % 2]}" for i in range(10)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = root.parent / "out"
    argv = ["prepare", "csv", "--root", root, "--out", out, "--option", "csv=labels.csv"]
    result = run(*argv, "--option", "class_column=label", *flag)
    assert result.code == 2 and "Traceback" not in result.err
    assert not (out / "cache-256px").exists()


def _ham(root: Path, rows: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    for name in ("ISIC_0000001", "ISIC_0000002"):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{name}.jpg")
    (root / "HAM10000_metadata.csv").write_text("\n".join(["lesion_id,image_id,dx", *rows]) + "\n")


def test_isic2018_refuses_an_image_listed_twice(tmp_path, run):
    rows = ["L1,ISIC_0000001,nv", "L2,ISIC_0000002,mel", "L1,ISIC_0000001,mel"]
    _ham(tmp_path / "ham", rows)
    result = run("prepare", "isic2018", "--root", tmp_path / "ham", "--out", tmp_path / "out")
    result.failed_cleanly(2, "line 4", "ISIC_0000001 is listed again (first on line 2)")


def test_chestxray14_refuses_an_image_listed_twice(tmp_path, run):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "images" / "a.png")
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID,View Position\na.png,Mass,1,PA\na.png,Mass,1,PA\n"
    )
    (root / "train_val_list.txt").write_text("a.png\n")
    (root / "test_list.txt").write_text("")
    result = run("prepare", "chestxray14", "--root", root, "--out", tmp_path / "out")
    result.failed_cleanly(2, "line 3", "a.png is listed again")


def test_a_broken_link_in_a_folder_gets_a_row(tmp_path, run):
    ckpt = write_checkpoint(tmp_path / "best.pt", "multiclass", 1, ("a", "b"))
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ok.png").write_bytes(png_bytes())
    (tmp_path / "scans" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "p.csv"
    assert run("predict", ckpt, tmp_path / "scans", "--out", out).code == 0
    gone = next(line for line in out.read_text().splitlines() if "gone.png" in line)
    assert "No such file or directory" in gone


def test_a_decompression_bomb_is_an_unreadable_image_not_a_raw_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 px: a warning, not an error
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(20, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing printed raw
        with pytest.raises(ImageReadError, match="DecompressionBombWarning"):
            read_image(path, 1)


def test_a_killed_checkpoint_write_is_cleaned_up_by_the_next(tmp_path):
    target = tmp_path / "last.pt"
    writer = (
        "import os, signal, torch, sys\n"
        "from s2mts2.engine.checkpoint import save_checkpoint\n"
        "class Dying(dict):\n"
        "    def __reduce_ex__(self, protocol):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"save_checkpoint({{'kind': 'x', 'w': torch.zeros(99), 'die': Dying()}}, {str(target)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", writer], env=env, capture_output=True)
    assert done.returncode == -9
    assert len(temporaries(tmp_path)) == 1 and not target.exists()
    save_checkpoint({"kind": "x", "w": torch.zeros(3)}, target)
    assert temporaries(tmp_path) == [] and target.is_file()


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    target = tmp_path / "last.pt"
    live = tmp_path / f".last.pt.{os.uname().nodename}-{os.getpid()}.abc.tmp"
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(target) == [] and live.exists()


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(run, monkeypatch, capsys):
    import s2mts2.data.prepared

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(s2mts2.data.prepared, "prepare_dataset", broken)
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    run("prepare", "synthetic", "--out", out / "s2mts2-x").failed_cleanly(1, "TypeError: a bug")
    with pytest.raises(TypeError):
        run("prepare", "synthetic", "--out", out / "s2mts2-x", "--debug")
