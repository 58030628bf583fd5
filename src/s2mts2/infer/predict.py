"""``s2mts2 predict``: class probabilities (and Grad-CAM overlays) for image files.

The model is either a stage-2 checkpoint (``best.pt``, the teacher's weights, read with
``weights_only=True``) or an ONNX file written by ``s2mts2 export`` with its model card next to it
(``model.onnx`` + ``model.json``). Both give the same probabilities: the ONNX graph ends with the
sigmoid (multi-label) or softmax (multi-class) that is applied to the checkpoint's logits here.

Inputs are files, folders (searched recursively for ``.png``, ``.jpg``, ``.jpeg``, ``.dcm`` files
and DICOM files of any other name, such as ``1.2.840.5`` or ``IM0001``, recognised by their
``DICM`` magic; hidden files skipped) and glob patterns (``**`` recursive). Every image is decoded
and squashed to the training size exactly as the training cache
(:func:`s2mts2.data.imageio.read_image` + :func:`~s2mts2.data.imageio.resize_square`), then
normalised with the mean/std stored in the checkpoint or model card: the user never re-specifies
preprocessing. Inference runs in float32. A file that cannot be read gets a row with its error;
the others are processed.

Results: one row per input, ``.csv`` (columns ``path``, one probability column per class,
``top_class`` for multi-class tasks, ``cam`` when overlays are written, ``error``) or ``.json``
(``{"model", "task", "classes", "predictions": [{"path", "probabilities": {class: p} | null,
"top_class", "cams", "error"}]}``), chosen by the file extension.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from s2mts2.data.augment import BatchAugment
from s2mts2.data.imageio import _is_dicom, read_image, resize_square
from s2mts2.engine.evaluate import load_classifier, load_finetuned
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError, DataError
from s2mts2.files import write_text_atomic
from s2mts2.infer.gradcam import CamLayer, grad_cam, save_overlay, select_cam_layer
from s2mts2.infer.onnx_packages import require_onnx_packages
from s2mts2.losses.consistency import probabilities
from s2mts2.models.heads import Network
from s2mts2.runtime.device import resolve_device

log = logging.getLogger("s2mts2")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
CARD_FORMAT = "s2mts2-model-card/1"
RESULT_SUFFIXES = (".csv", ".json")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class TorchModel:
    """A stage-2 network: normalised float (B, C, S, S) -> probabilities (B, K) on the CPU."""

    def __init__(self, net: Network, info: ModelInfo, device: torch.device) -> None:
        self.net = net.eval().to(device)  # fp32 NCHW: the same numbers as the ONNX export
        self.info = info
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(x.to(self.device)).float(), self.info.task).cpu()


class OnnxModel:
    """An ONNX export (input ``image``, output ``probabilities``) run by onnxruntime."""

    def __init__(self, path: Path, info: ModelInfo, device: torch.device) -> None:
        require_onnx_packages("onnxruntime")
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise DataError(f"{path}: not a readable ONNX model: {e}") from e
        names = [o.name for o in self.session.get_outputs()]
        if "probabilities" not in names:
            raise DataError(f"{path}: no output named 'probabilities' (outputs: {names})")
        self.info = info

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(["probabilities"], {"image": x.cpu().numpy()})
        return torch.from_numpy(out)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], Network, ModelInfo]:
    """Load a stage-2 checkpoint safely: (its state, the teacher network in eval mode, its info),
    checked (:func:`check_model`)."""
    state = load_finetuned(path)
    info = ModelInfo.from_mapping(state["meta"], path)
    net = load_classifier(state, source=path)
    check_model(TorchModel(net, info, torch.device("cpu")), path)
    return state, net, info


def load_model(path: str | Path, device: str = "auto") -> TorchModel | OnnxModel:
    """A checkpoint (teacher weights) or an ONNX file with its model card (same name, .json),
    checked against its network (:func:`check_model`)."""
    path = Path(path)
    dev = resolve_device(device)
    if path.suffix.lower() != ".onnx":
        _, net, info = read_checkpoint(path)
        return TorchModel(net, info, dev)
    if not path.is_file():
        raise DataError(f"ONNX model not found: {path}")
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise DataError(
            f"{path}: its model card {card_path} is missing (s2mts2 export writes both); "
            "preprocessing and class names come from it"
        )
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{card_path}: not a JSON model card: {e}") from e
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise DataError(f"{card_path}: not an s2mts2 model card (format {CARD_FORMAT!r})")
    return check_model(OnnxModel(path, ModelInfo.from_mapping(card, card_path), dev), card_path)


def check_model(model: TorchModel | OnnxModel, source: Path) -> TorchModel | OnnxModel:
    """``model`` when its network takes the input its info describes and gives one probability
    per class; else a DataError naming ``source`` (the checkpoint or model card)."""
    info = model.info
    try:
        out = model(torch.zeros(2, info.channels, info.size, info.size))
    except Exception as e:  # onnxruntime and torch raise their own types for a shape mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{source}: the network does not take the input it describes ({info.channels} "
            f"channel(s), {info.size}x{info.size} px): {first}"
        ) from e
    if tuple(out.shape) != (2, len(info.classes)):
        raise DataError(
            f"{source}: lists {len(info.classes)} classes but the network gives "
            f"{out.shape[-1] if out.ndim else 'no'} output(s) per image: damaged or edited"
        )
    if not torch.isfinite(out).all():
        raise DataError(f"{source}: the network gives non-finite probabilities: damaged weights")
    if info.task == "multiclass" and not torch.allclose(out.sum(1), torch.ones(2), atol=1e-3):
        raise DataError(
            f"{source}: says multiclass, but the network's probabilities do not sum to 1 per "
            "image (a multi-label network?): damaged or edited"
        )
    return model


def _is_image_file(path: Path) -> bool:
    """An image extension, or DICOM content (``DICM`` magic) under any other name."""
    return path.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(path)


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files and folders skipped), sorted; a
    broken link with an image's name is kept, so that its row reports it."""
    return sorted(
        p
        for p in folder.rglob("*")
        if (p.is_file() or (p.is_symlink() and not p.exists()))
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and _is_image_file(p)
    )


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively, glob patterns expanded; duplicates dropped.

    A path that does not exist and is no pattern is kept: its row reports the error.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = _images_in(path)
            if not images:
                log.warning(
                    "%s: no %s or DICOM files in this folder", path, "/".join(IMAGE_SUFFIXES)
                )
            found += images
        elif not path.exists() and _GLOB_CHARS.search(str(item)):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            if not matches:
                log.warning("%s: no file matches this pattern", item)
            for m in matches:
                found += _images_in(m) if m.is_dir() else [m]
        else:
            found.append(path)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise DataError(f"no input images found in: {', '.join(map(str, inputs))}")
    return list(unique.values())


@dataclass
class Prediction:
    """One input's result: probabilities (K,) or the error that stopped it; CAM files written."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    cams: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CamRequest:
    """Grad-CAM overlays into ``out_dir`` for ``classes`` (indices) or the ``top_k`` most likely,
    at ``layer`` (a name of :func:`~s2mts2.models.backbones.cam_layers`; None: the default of
    :func:`~s2mts2.infer.gradcam.select_cam_layer`)."""

    out_dir: Path
    classes: tuple[int, ...] | None = None
    top_k: int = 1
    layer: str | None = None

    def targets(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, T) class indices (σ and softmax keep the order of the logits)."""
        if self.classes is not None:
            return torch.tensor(self.classes, device=logits.device).expand(len(logits), -1)
        return logits.topk(self.top_k, dim=1).indices


def _display_stem(path: Path) -> str:
    name = path.name
    if path.suffix.lower() in IMAGE_SUFFIXES:
        name = name[: -len(path.suffix)]
    return _UNSAFE_NAME.sub("_", name) or "image"


def decode_image(source: Path | BinaryIO, channels: int) -> np.ndarray | str:
    """uint8 (H, W, channels) pixels of a file or an in-memory upload, or why it cannot be read."""
    try:
        return read_image(source, channels)
    except DataError as e:
        return getattr(e, "reason", str(e))


def model_input(squashed: Sequence[np.ndarray], transform: BatchAugment) -> torch.Tensor:
    """uint8 (size, size, C) images (:func:`resize_square`) -> the normalised (B, C, size, size)."""
    batch = torch.from_numpy(np.stack(squashed)).permute(0, 3, 1, 2).contiguous()
    return transform(batch)


def cam_layer_of(model: TorchModel, choice: str | None) -> CamLayer:
    """The Grad-CAM layer of ``model`` at its input size (:func:`select_cam_layer`), logged, with
    a warning when its map is coarse."""
    info = model.info
    layer = select_cam_layer(model.net, info.channels, info.size, choice)
    log.info("Grad-CAM at %s", layer.describe())
    warning = layer.warning()
    if warning:
        log.warning("%s", warning)
    return layer


class _CamWriter:
    """Runs Grad-CAM on batches and writes ``<image name>_<class>.png`` overlays (unique names),
    each labelled with its class and probability."""

    def __init__(self, model: TorchModel | OnnxModel, request: CamRequest) -> None:
        if not isinstance(model, TorchModel):
            raise ConfigError(
                "--cam needs the PyTorch checkpoint: Grad-CAM uses gradients, which the ONNX "
                "file cannot give"
            )
        self.model = model
        self.request = request
        self.layer = cam_layer_of(model, request.layer)
        self.used: set[str] = set()
        request.out_dir.mkdir(parents=True, exist_ok=True)

    def _stem(self, path: Path) -> str:
        base, n = _display_stem(path), 1
        stem = base
        while stem in self.used:
            n += 1
            stem = f"{base}-{n}"
        self.used.add(stem)
        return stem

    def __call__(
        self, x: torch.Tensor, items: Sequence[tuple[Prediction, Path, np.ndarray]]
    ) -> torch.Tensor:
        """Probabilities (B, K) of ``x``; writes the overlays of each item and records them."""
        model, classes = self.model, self.model.info.classes
        result = grad_cam(model.net, x.to(model.device), self.request.targets, self.layer.module)
        probs = probabilities(result.logits, model.info.task).cpu()
        for (row, path, pixels), p, targets, maps in zip(items, probs, result.targets, result.maps):
            stem = self._stem(path)
            for c, cam_map in zip(targets.tolist(), maps):
                out = self.request.out_dir / f"{stem}_{_UNSAFE_NAME.sub('_', classes[c])}.png"
                cam = cam_map.cpu().numpy()
                empty = "" if cam.max() > 0 else ", no positive evidence"  # a flat overlay
                label = f"{classes[c]}  p = {float(p[c]):.3f}  ({self.layer.name}{empty})"
                save_overlay(out, pixels, cam, label)
                row.cams.append(str(out))
        return probs


def predict_files(
    model: TorchModel | OnnxModel,
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
    cam: CamRequest | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Probabilities for every file of ``paths`` (an error row for each unreadable one).

    With ``cam`` (PyTorch models only) Grad-CAM overlays are written on the original images.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    info = model.info
    transform = info.transform()
    cam_writer = None if cam is None else _CamWriter(model, cam)
    results: list[Prediction] = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            items, inputs = [], []
            for path in chunk:
                row = Prediction(str(path))
                results.append(row)
                pixels = decode_image(path, info.channels)
                if isinstance(pixels, str):
                    row.error = pixels
                    continue
                inputs.append(resize_square(pixels, info.size))
                items.append((row, path, pixels if cam_writer is not None else None))
            if items:
                x = model_input(inputs, transform)
                probs = model(x) if cam_writer is None else cam_writer(x, items)
                for (row, _, _), p in zip(items, probs.numpy()):
                    row.probabilities = p
            bar.update(len(chunk))
    return results


def _top_class(pred: Prediction, info: ModelInfo) -> str:
    if info.task != "multiclass" or pred.probabilities is None:
        return ""
    return info.classes[int(np.argmax(pred.probabilities))]


def write_predictions(
    predictions: Sequence[Prediction], info: ModelInfo, out: Path, model: str | Path
) -> None:
    """Write the rows to ``out`` atomically (.csv or .json; the module docstring shows the
    layout)."""
    with_cams = any(p.cams for p in predictions)
    if out.suffix.lower() == ".json":
        rows = [
            {
                "path": p.path,
                "probabilities": None
                if p.probabilities is None
                else dict(zip(info.classes, map(float, p.probabilities))),
                **({"top_class": _top_class(p, info) or None} if info.task == "multiclass" else {}),
                **({"cams": p.cams} if with_cams else {}),
                "error": p.error,
            }
            for p in predictions
        ]
        doc = {"model": str(model), "task": info.task, "classes": info.classes, "predictions": rows}
        write_text_atomic(out, json.dumps(doc, indent=2) + "\n")
        return
    header = ["path", *info.classes]
    header += ["top_class"] if info.task == "multiclass" else []
    header += ["cam"] if with_cams else []
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([*header, "error"])
    for p in predictions:
        probs = (
            [""] * len(info.classes)
            if p.probabilities is None
            else [f"{v:.6g}" for v in p.probabilities]
        )
        row = [p.path, *probs]
        row += [_top_class(p, info)] if info.task == "multiclass" else []
        row += [";".join(p.cams)] if with_cams else []
        writer.writerow([*row, p.error or ""])
    write_text_atomic(out, text.getvalue())


@dataclass
class PredictResult:
    """What ``run_predict`` did: the rows, the results file and the overlay folder."""

    predictions: list[Prediction]
    out: Path
    cam_dir: Path | None = None

    @property
    def all_failed(self) -> bool:
        """True when no input could be read (the CLI then exits with status 1)."""
        return all(p.error is not None for p in self.predictions)

    def summary(self) -> str:
        errors = sum(p.error is not None for p in self.predictions)
        cams = sum(len(p.cams) for p in self.predictions)
        text = f"wrote {len(self.predictions)} rows to {self.out}"
        if errors:
            text += f"; {errors} file(s) could not be read (see the error column)"
        if self.cam_dir is not None:
            text += f"; {cams} Grad-CAM overlay(s) in {self.cam_dir}"
        return text


def _cam_request(
    info: ModelInfo, out_dir: Path, classes: Sequence[str] | None, top_k: int, layer: str | None
) -> CamRequest:
    if classes:
        unknown = [c for c in classes if c not in info.classes]
        if unknown:
            raise ConfigError(
                f"--classes: {', '.join(unknown)} not among the model's classes {info.classes}"
            )
        indices = tuple(info.classes.index(c) for c in classes)
        return CamRequest(out_dir, classes=indices, layer=layer)
    if not 1 <= top_k <= len(info.classes):
        raise ConfigError(f"--top-k must lie in 1..{len(info.classes)}, got {top_k}")
    return CamRequest(out_dir, top_k=top_k, layer=layer)


def run_predict(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    *,
    out: str | Path = "predictions.csv",
    cam_dir: str | Path | None = None,
    cam_classes: Sequence[str] | None = None,
    top_k: int = 1,
    cam_layer: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> PredictResult:
    """``s2mts2 predict``: load the model, expand ``inputs``, predict, write ``out``.

    ``cam_dir``: Grad-CAM overlays (PNG of the original image, enlarged when under 256 px, under
    a band naming the class, its probability and the layer) for ``cam_classes`` or else the
    ``top_k`` most probable classes of each image, at ``cam_layer`` (default: the deepest layer
    whose map is at least 7x7, :func:`~s2mts2.infer.gradcam.select_cam_layer`).
    """
    out = Path(out)
    if out.suffix.lower() not in RESULT_SUFFIXES:
        raise ConfigError(f"--out {out}: expected a file name ending in .csv or .json")
    if cam_classes and cam_dir is None:
        raise ConfigError("--classes chooses the Grad-CAM classes: add --cam DIR")
    if cam_layer is not None and cam_dir is None:
        raise ConfigError("--cam-layer chooses the Grad-CAM layer: add --cam DIR")
    model = load_model(model_path, device)
    cam = (
        None
        if cam_dir is None
        else _cam_request(model.info, Path(cam_dir), cam_classes, top_k, cam_layer)
    )
    paths = expand_inputs(inputs)
    predictions = predict_files(model, paths, batch_size=batch_size, cam=cam, progress=progress)
    write_predictions(predictions, model.info, out, model_path)
    return PredictResult(predictions, out, None if cam is None else cam.out_dir)
