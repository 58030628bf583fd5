"""Model cards and checkpoints that disagree with their network: refused with one line naming
the file (exit 2), never a shifted or NaN result."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from infer.conftest import png_bytes, write_checkpoint

from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.infer.export import export_model

CLASSES = ("normal", "effusion", "nodule")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", "multiclass", 1, CLASSES)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    (tmp_path / "scan.png").write_bytes(png_bytes())
    return tmp_path / "scan.png"


def _edit_meta(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda state: state["meta"].update(values)


def _nan_teacher(state: dict[str, Any]) -> None:
    for value in state["teacher"].values():
        if torch.is_tensor(value) and value.is_floating_point():
            value.fill_(float("nan"))


CHECKPOINT_EDITS = {
    "fewer classes": (_edit_meta(classes=list(CLASSES[:2])), "weights do not fit"),
    "more classes": (_edit_meta(classes=[*CLASSES, "x"]), "weights do not fit"),
    "channels": (_edit_meta(channels=3, mean=[0.5] * 3, std=[0.2] * 3), "weights do not fit"),
    "channels as text": (_edit_meta(channels="1"), "channels '1'"),
    "size as text": (_edit_meta(size="32"), "size '32'"),
    "classes not a list": (_edit_meta(classes=3), "classes 3"),
    "repeated class": (_edit_meta(classes=["a", "a", "b"]), "distinct names"),
    "std zero": (_edit_meta(std=[0.0]), "std [0.0]"),
    "backbone": (lambda s: s["config"]["model"].update(backbone="resnet50"), "do not fit"),
    "config not a mapping": (lambda s: s.update(config={"model": 5}), "its config is damaged"),
    "meta not a mapping": (lambda s: s.update(meta=[1]), "no meta entry"),
    "NaN weights": (_nan_teacher, "non-finite probabilities"),
}


ALSO = {
    "evaluate": ("fewer classes", "channels as text"),
    "export": ("more classes", "NaN weights"),
}


@pytest.mark.parametrize(
    ("command", "edit"),
    [("predict", edit) for edit in CHECKPOINT_EDITS]
    + [(command, edit) for command, edits in ALSO.items() for edit in edits],
    ids=lambda v: v,
)
def test_an_edited_checkpoint_is_refused(ckpt, scan, tmp_path, run, command, edit):
    change, says = CHECKPOINT_EDITS[edit]
    state = torch.load(ckpt, weights_only=True)
    change(state := copy.deepcopy(state))
    edited = tmp_path / "best.pt"
    save_checkpoint(state, edited)
    argv = {
        "predict": ["predict", edited, scan, "--out", tmp_path / "p.csv"],
        "evaluate": ["evaluate", edited, "--bootstrap", "0"],
        "export": ["export", edited, "--onnx", tmp_path / "e" / "m.onnx"],
    }[command]
    result = run(*argv)
    result.failed_cleanly(2, says)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "e" / "m.onnx").exists()


@pytest.fixture(scope="module")
def exported(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(ckpt, tmp_path_factory.mktemp("export") / "model.onnx").onnx


CARD_EDITS = {
    "fewer classes": ({"classes": list(CLASSES[:2])}, "lists 2 classes but the network gives 3"),
    "more classes": ({"classes": [*CLASSES, "x"]}, "lists 4 classes but the network gives 3"),
    "size": ({"size": 24}, "does not take the input it describes"),
    "channels": ({"channels": 3, "mean": [0.5] * 3, "std": [0.2] * 3}, "does not take the input"),
    "size as text": ({"size": "abc"}, "size 'abc'"),
    "channels as text": ({"channels": "x"}, "channels 'x'"),
    "task": ({"task": "regression"}, "task 'regression'"),
    "multilabel as multiclass": ({"task": "multilabel"}, None),
    "mean of two channels": ({"mean": [0.5, 0.5]}, "mean [0.5, 0.5]"),
}


@pytest.mark.parametrize("edit", list(CARD_EDITS), ids=str)
def test_an_edited_model_card_is_refused(exported, scan, tmp_path, run, edit):
    values, says = CARD_EDITS[edit]
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(exported.read_bytes())
    card = json.loads(exported.with_suffix(".json").read_text())
    onnx.with_suffix(".json").write_text(json.dumps({**card, **values}))
    result = run("predict", onnx, scan, "--out", tmp_path / "p.csv")
    if says is None:  # a softmax network read as multi-label: the same probabilities, no harm
        assert result.code == 0, result.err
        return
    result.failed_cleanly(2, str(onnx.with_suffix(".json")), says)
    assert not (tmp_path / "p.csv").exists()


def test_a_sigmoid_network_under_a_multiclass_card_is_refused(tmp_path, scan, run):
    ckpt = write_checkpoint(tmp_path / "ml.pt", "multilabel", 1, CLASSES)
    onnx = export_model(ckpt, tmp_path / "ml.onnx").onnx
    card = json.loads(onnx.with_suffix(".json").read_text())
    onnx.with_suffix(".json").write_text(json.dumps({**card, "task": "multiclass"}))
    run("predict", onnx, scan, "--out", tmp_path / "p.csv").failed_cleanly(2, "do not sum to 1")
