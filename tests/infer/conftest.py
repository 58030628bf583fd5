"""Small stage-2 checkpoints (random ``resnet18_small`` weights, 32 px, no training), bad files,
a prepared data folder at their size."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2mts2.config import RunConfig, config_to_dict
from s2mts2.data.augment import eval_transform
from s2mts2.data.prepared import prepare_dataset
from s2mts2.data.table import DatasetTable
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.models.ema import EmaTeacher

SIZE = 32
GREY_CLASSES = ("normal", "effusion", "nodule")
RGB_CLASSES = ("mel", "nv")


def write_checkpoint(
    path: Path, task: str, channels: int, classes: Sequence[str], seed: int = 0, size: int = SIZE
) -> Path:
    """A stage-2 checkpoint in ``finetune``'s layout; student and teacher hold different random
    weights (inference and export must use the teacher's)."""
    cfg = RunConfig()
    cfg.model.backbone = "resnet18_small"
    cfg.data.size = size
    cfg.finetune.method = "supervised"
    torch.manual_seed(seed)
    teacher = classifier_network(cfg.model, channels, len(classes)).eval()
    student = classifier_network(cfg.model, channels, len(classes)).eval()
    stats = eval_transform(channels, size)
    state = {
        "kind": "finetune",
        "epoch": 3,
        "student": student.state_dict(),
        "teacher": EmaTeacher(teacher).state_dict(),
        "best_val": 0.5,
        "config": config_to_dict(cfg),
        "meta": {
            "classes": list(classes),
            "eval_classes": list(classes),
            "task": task,
            "channels": channels,
            "size": size,
            "mean": list(stats.mean),
            "std": list(stats.std),
            "backbone": cfg.model.backbone,
            "head_hidden": cfg.model.head_hidden,
            "method": cfg.finetune.method,
            "dataset": "test",
            "data_dir": str(path.parent),
            "labelled_images": 10,
            "train_images": 50,
        },
    }
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-class, 1 channel, classes GREY_CLASSES."""
    folder = tmp_path_factory.mktemp("grey_run")
    return write_checkpoint(folder / "best.pt", "multiclass", 1, GREY_CLASSES)


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-label, 3 channels, classes RGB_CLASSES."""
    folder = tmp_path_factory.mktemp("rgb_run")
    return write_checkpoint(folder / "best.pt", "multilabel", 3, RGB_CLASSES, seed=1)


def teacher_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The teacher's weights as ``write_checkpoint`` stored them (EmaTeacher's ``module.``)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {
        k.removeprefix("module."): v for k, v in state["teacher"].items() if k != "_extra_state"
    }


def png_bytes(height: int = 40, width: int = 48, mode: str = "L") -> bytes:
    """A random image of ``mode`` encoded as PNG."""
    rng = np.random.default_rng(height * width)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(2) if channels == 1 else pixels, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def bad_files(tmp_path: Path) -> list[Path]:
    """A truncated PNG and a text file renamed ``.png``."""
    truncated = tmp_path / "bad" / "truncated.png"
    truncated.parent.mkdir()
    data = png_bytes(64, 64)
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "bad" / "notes.png"
    text.write_text("this is not an image\n")
    return [truncated, text]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic multi-label set (grey, 120 images, cache at the checkpoints' size)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    options = {"n": 120, "size": 48}
    prepare_dataset("synthetic", out, out, size=SIZE, progress=False, options=options, workers=1)
    return out


@pytest.fixture
def split_ckpt(prepared: Path, tmp_path: Path) -> Path:
    """A checkpoint with the classes of ``prepared`` (to browse its test split)."""
    table = DatasetTable.load(prepared)
    return write_checkpoint(tmp_path / "best.pt", table.task, table.channels, table.classes)
