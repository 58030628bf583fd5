"""A disk that fills up: an error line naming the file (exit 1), no crash, no half-written file,
no temporary file left, the earlier result kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer.conftest import write_checkpoint
from PIL import Image

from s2mts2.engine.checkpoint import save_checkpoint

from .conftest import fill, run_process, temporaries


def images(folder: Path, n: int, size: int = 40) -> Path:
    """``n`` grey PNGs with long names (long result rows) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"scan_{i:04d}_with_a_long_descriptive_name.png")
    return folder


def test_prepare_fills_the_disk_with_an_error_not_a_crash(small_disk, tmp_path):
    """The image cache (a memory map) no longer dies of SIGBUS: ENOSPC is an error."""
    root = images(tmp_path / "root", 24, size=64)
    rows = [f"{p.name},{'AB'[i % 2]}" for i, p in enumerate(sorted(root.glob("*.png")))]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = small_disk / "prepared"
    argv = ["prepare", "csv", "--root", root, "--out", out, "--size", "256", "--no-progress"]
    argv += ["--option", "csv=labels.csv", "--option", "class_column=label", "--workers", "1"]
    result = run_process(argv, cwd=tmp_path)
    result.failed_cleanly(1, f"{out / 'cache-256px' / 'images.npy'}", "No space left on device")
    assert temporaries(small_disk) == []


def test_prepare_isic2018_on_a_full_disk(small_disk, tmp_path, shared_data):
    out = small_disk / "p"
    argv = ["prepare", "isic2018", "--root", shared_data / "ham10000", "--out", out]
    result = run_process([*argv, "--size", "64", "--no-progress"], cwd=tmp_path)
    result.failed_cleanly(1, "images.npy", "No space left on device")
    assert temporaries(small_disk) == []


def test_predict_on_a_full_disk_keeps_the_earlier_results(small_disk, tmp_path, run):
    ckpt = write_checkpoint(tmp_path / "best.pt", "multiclass", 1, ("a", "b", "c"))
    scans = images(tmp_path / "scans", 40)
    earlier = small_disk / "pred.csv"
    earlier.write_text("path,a,b,c,top_class,error\nold.png,0.2,0.3,0.5,c,\n")
    before = earlier.read_bytes()
    fill(small_disk, leave=4096)  # room to start, not for 40 rows (5 kB)
    result = run("predict", ckpt, scans, "--out", earlier, "--no-progress")
    result.failed_cleanly(1, f"{earlier}: No space left on device")
    assert earlier.read_bytes() == before
    assert temporaries(small_disk) == []


def test_predict_checks_the_disk_before_inference(small_disk, tmp_path, run, monkeypatch):
    import s2mts2.infer.predict

    ckpt = write_checkpoint(tmp_path / "best.pt", "multiclass", 1, ("a", "b", "c"))
    monkeypatch.setattr(s2mts2.infer.predict, "predict_files", None)  # never reached
    fill(small_disk)
    result = run("predict", ckpt, tmp_path, "--out", small_disk / "p.csv")
    result.failed_cleanly(1, f"{small_disk}: No space left on device")


def test_a_checkpoint_on_a_full_disk_is_an_os_error_naming_it(small_disk):
    """torch.save's own RuntimeError ([enforce fail at inline_container.cc]) becomes ENOSPC."""
    path = small_disk / "last.pt"
    save_checkpoint({"kind": "pretrain", "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_checkpoint({"kind": "pretrain", "w": torch.zeros(1_000_000)}, path)
    assert caught.value.filename == str(path)
    assert path.read_bytes() == before
    assert temporaries(small_disk) == []


def test_pretrain_on_a_full_disk_names_the_checkpoint(small_disk, tiny_data, run):
    out = small_disk / "run"
    argv = ["pretrain", "--config", "tiny", "--set", f"data.dir={tiny_data}", "--out", out]
    result = run(*argv, "--set", "epochs=1", "--no-progress")
    result.failed_cleanly(1, f"{out / 'last.pt'}: No space left on device")
    assert not (out / "last.pt").exists() and temporaries(small_disk) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "synthetic", "--out", "{disk}/p"],
        ["pretrain", "--config", "tiny", "--out", "{disk}/run"],
        ["finetune", "--config", "tiny", "--out", "{disk}/run"],
        ["evaluate", "{ckpt}", "--out", "{disk}/eval"],
        ["compare", "{ckpt}", "{ckpt}", "--out", "{disk}/compare"],
        ["export", "{ckpt}", "--onnx", "{disk}/export/model.onnx"],
        ["demo", "--out", "{disk}/demo"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_stops_at_once_on_a_full_disk(small_disk, tmp_path, run, argv):
    ckpt = write_checkpoint(tmp_path / "best.pt", "multiclass", 1, ("a", "b", "c"))
    fill(small_disk)
    args = [a.format(disk=small_disk, ckpt=ckpt) for a in argv]
    result = run(*args)
    result.failed_cleanly(1, "No space left on device", str(small_disk))
