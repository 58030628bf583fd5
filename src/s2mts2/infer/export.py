"""``s2mts2 export``: ONNX model, safetensors weights and a JSON model card from a checkpoint.

``export_model(ckpt, "out/model.onnx")`` writes, next to each other:

- ``model.onnx``: the teacher network followed by its output activation, exported with PyTorch's
  ``torch.export``-based exporter (``dynamo=True``, opset 18, weights inside the file).
  Input ``image``: float32 (batch, channels, size, size), the *normalised* image (decoded,
  squashed to size x size with bilinear filtering, scaled to [0, 1], then ``(x - mean) / std``).
  Output ``probabilities``: float32 (batch, classes), sigmoid of the logits for multi-label
  tasks, softmax for multi-class ones. The batch axis is dynamic.
- ``model.safetensors``: the teacher's ``state_dict`` (no pickle; loads into
  ``classifier_network`` built from the card's ``backbone``/``head_hidden``).
- ``model.json``: the model card (format ``s2mts2-model-card/1``): ``classes``, ``task``,
  ``channels``, ``size``, ``mean``, ``std`` (what ``s2mts2 predict model.onnx`` reads), the
  input/output description, backbone, a training summary from the checkpoint's meta, the
  metrics of the ``eval-*/metrics.json`` folders next to the checkpoint (``s2mts2 evaluate``'s
  default output) and the parity check.

Parity: onnxruntime (CPU) runs the file on seeded random inputs of batch 1 and 4; the largest
absolute difference from PyTorch's probabilities must stay below 1e-4 (fp32), else the export
fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from s2mts2 import __version__
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError, DataError, S2MTS2Error
from s2mts2.files import atomic_path
from s2mts2.infer.onnx_packages import require_onnx_packages
from s2mts2.infer.predict import CARD_FORMAT, read_checkpoint
from s2mts2.losses.consistency import probabilities

PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 4)
OPSET = 18
TRAINING_KEYS = ("method", "dataset", "labelled_images", "train_images", "eval_classes")
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")  # log every graph pass at INFO level


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Raise the exporter's loggers to WARNING for the duration (the CLI logs INFO)."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class ProbabilityModel(nn.Module):
    """Network + output activation: (B, C, S, S) normalised image -> (B, K) probabilities."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(image), self.task)


def export_onnx(model: ProbabilityModel, info: ModelInfo, path: Path) -> None:
    """Write ``model`` (on the CPU) in eval mode as ONNX: input ``image``, output ``probabilities``."""
    model.eval()
    example = torch.randn(2, info.channels, info.size, info.size)
    with _quiet_exporter():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


@torch.no_grad()
def onnx_parity(model: ProbabilityModel, info: ModelInfo, path: Path, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| over random inputs of each batch size in PARITY_BATCHES."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = torch.randn(batch, info.channels, info.size, info.size, generator=gen)
        (onnx_out,) = session.run(["probabilities"], {"image": x.numpy()})
        worst = float(np.max([worst, np.abs(onnx_out - model(x).numpy()).max()]))  # NaN stays
    return worst


def sibling_metrics(checkpoint: Path) -> dict[str, Any]:
    """``{"eval-<split>": metrics}`` from the ``eval-*/metrics.json`` files next to the checkpoint
    that evaluated a checkpoint of the same file name; empty when there are none."""
    found: dict[str, Any] = {}
    for path in sorted(checkpoint.parent.glob("eval-*/metrics.json")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable metrics file: {e}") from e
        source = metrics.get("checkpoint") if isinstance(metrics, dict) else None
        if isinstance(metrics, dict) and (source is None or Path(source).name == checkpoint.name):
            found[path.parent.name] = metrics
    return found


def model_card(
    state: dict[str, Any], info: ModelInfo, checkpoint: Path, onnx_path: Path, max_diff: float
) -> dict[str, Any]:
    """The JSON model card of an export (see the module docstring)."""
    meta = state["meta"]
    activation = "sigmoid" if info.task == "multilabel" else "softmax"
    return {
        "format": CARD_FORMAT,
        **info.to_dict(),
        "input": {
            "name": "image",
            "shape": ["batch", info.channels, info.size, info.size],
            "dtype": "float32",
            "preprocessing": (
                f"decode (PNG/JPEG/DICOM), convert to {info.channels} channel(s), resize to "
                f"{info.size}x{info.size} (bilinear, aspect not kept), scale to [0, 1], "
                "subtract mean and divide by std per channel"
            ),
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(info.classes)],
            "activation": activation,
        },
        "model": {
            "backbone": meta.get("backbone"),
            "head_hidden": meta.get("head_hidden"),
            "weights": "teacher",
        },
        "training": {
            **{k: meta[k] for k in TRAINING_KEYS if k in meta},
            "epochs": state.get("epoch"),
            "best_val_mean_auc": state.get("best_val"),
        },
        "metrics": sibling_metrics(checkpoint),
        "files": {
            "onnx": onnx_path.name,
            "safetensors": onnx_path.with_suffix(".safetensors").name,
            "checkpoint": str(checkpoint),
        },
        "parity": {
            "max_abs_diff": max_diff,
            "tolerance": PARITY_TOLERANCE,
            "batch_sizes": list(PARITY_BATCHES),
            "runtime": "onnxruntime CPU, fp32",
        },
        "s2mts2_version": __version__,
    }


@dataclass
class ExportResult:
    """Files written by :func:`export_model` and the parity check's largest difference."""

    onnx: Path
    safetensors: Path
    card: Path
    max_abs_diff: float

    def summary(self) -> str:
        return (
            f"wrote {self.onnx}, {self.safetensors}, {self.card}\n"
            f"ONNX parity (onnxruntime vs PyTorch, batches {list(PARITY_BATCHES)}): "
            f"max abs diff {self.max_abs_diff:.2e} < {PARITY_TOLERANCE:g}"
        )


def export_model(checkpoint: str | Path, onnx_path: str | Path) -> ExportResult:
    """Export the teacher of a stage-2 checkpoint: ONNX + safetensors + model card, checked."""
    from safetensors.torch import save_file

    checkpoint, onnx_path = Path(checkpoint), Path(onnx_path)
    if onnx_path.suffix.lower() != ".onnx":
        raise ConfigError(f"--onnx {onnx_path}: expected a file name ending in .onnx")
    require_onnx_packages("onnx", "onnxruntime", "onnxscript")
    state, net, info = read_checkpoint(checkpoint)
    model = ProbabilityModel(net, info.task)
    weights, card = onnx_path.with_suffix(".safetensors"), onnx_path.with_suffix(".json")
    # all three are written first and renamed into place together: a failure keeps an earlier
    # export whole, never a new model next to an old card
    with (
        atomic_path(onnx_path) as onnx_tmp,
        atomic_path(weights) as weights_tmp,
        atomic_path(card) as card_tmp,
    ):
        export_onnx(model, info, onnx_tmp)
        max_diff = onnx_parity(model, info, onnx_tmp)
        if not max_diff < PARITY_TOLERANCE:
            raise S2MTS2Error(
                f"{onnx_path}: ONNX parity check failed: onnxruntime differs from PyTorch by up "
                f"to {max_diff:.2e} (tolerance {PARITY_TOLERANCE:g}); nothing was written"
            )
        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()},
            str(weights_tmp),
            metadata={"format": "pt", "model_card": card.name},
        )
        card_tmp.write_text(
            json.dumps(model_card(state, info, checkpoint, onnx_path, max_diff), indent=2) + "\n",
            encoding="utf-8",
        )
    return ExportResult(onnx_path, weights, card, max_diff)
