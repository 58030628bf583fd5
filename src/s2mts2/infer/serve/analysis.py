"""The model behind the page: probabilities and Grad-CAM maps of one image, one call at a time."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from s2mts2.data.imageio import resize_square
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError
from s2mts2.infer.gradcam import grad_cam
from s2mts2.infer.predict import OnnxModel, TorchModel, cam_layer_of, model_input
from s2mts2.losses.consistency import probabilities

ONNX_NO_CAM = (
    "Grad-CAM needs gradients, which an ONNX model cannot give: serve the PyTorch checkpoint "
    "(best.pt) to see heatmaps"
)


@dataclass
class Analysis:
    """``probabilities`` (K,) of one image; ``cams`` {class index: (h, w) CAM} computed so far."""

    probabilities: np.ndarray
    cams: dict[int, np.ndarray]


class Analyst:
    """Runs ``model`` on uint8 images preprocessed as ``s2mts2 predict`` does; thread-safe.
    Grad-CAM maps come from ``cam_layer`` (None: the default of
    :func:`~s2mts2.infer.gradcam.select_cam_layer`)."""

    def __init__(self, model: TorchModel | OnnxModel, cam_layer: str | None = None) -> None:
        self.model = model
        self.info: ModelInfo = model.info
        self.transform = model.info.transform()
        self.lock = threading.Lock()  # one forward at a time: the threads share the CPU cores
        if cam_layer is not None and not isinstance(model, TorchModel):
            raise ConfigError(f"--cam-layer: {ONNX_NO_CAM}")
        self.layer = cam_layer_of(model, cam_layer) if isinstance(model, TorchModel) else None

    @property
    def explains(self) -> bool:
        """True when Grad-CAM maps can be computed (PyTorch checkpoints)."""
        return isinstance(self.model, TorchModel)

    def squash(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) -> the model's uint8 (size, size, C) input pixels."""
        return resize_square(pixels, self.info.size)

    def analyse(self, squashed: np.ndarray) -> Analysis:
        """Probabilities of one squashed image, and the top class's CAM when the model explains."""
        x = model_input([squashed], self.transform)
        with self.lock:
            if not self.explains:
                return Analysis(self.model(x)[0].numpy(), {})
            result = grad_cam(self.model.net, x.to(self.model.device), _top_class, self._module())
        probs = probabilities(result.logits, self.info.task)[0].cpu().numpy()
        top = int(result.targets[0, 0])
        return Analysis(probs, {top: result.maps[0, 0].cpu().numpy()})

    def cam(self, squashed: np.ndarray, class_index: int) -> np.ndarray:
        """(h, w) Grad-CAM map of ``class_index`` for one squashed image (PyTorch models only)."""
        if not self.explains:
            raise TypeError(ONNX_NO_CAM)
        x = model_input([squashed], self.transform).to(self.model.device)
        with self.lock:
            result = grad_cam(
                self.model.net, x, lambda logits: _fixed(logits, class_index), self._module()
            )
        return result.maps[0, 0].cpu().numpy()

    def _module(self) -> torch.nn.Module:
        assert self.layer is not None  # a PyTorch model: explains
        return self.layer.module


def _top_class(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, 1): the most probable class (σ and softmax keep the order of the logits)."""
    return logits.topk(1, dim=1).indices


def _fixed(logits: torch.Tensor, class_index: int) -> torch.Tensor:
    return torch.full((len(logits), 1), class_index, dtype=torch.long, device=logits.device)
