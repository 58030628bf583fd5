"""Using a trained model: predict (PNG/JPEG/DICOM files and folders), Grad-CAM, ONNX export, the
web page; may import engine.evaluate/inference/checkpoint/builders, never a training loop."""

from s2mts2.engine.model_info import ModelInfo
from s2mts2.infer.export import ExportResult, export_model
from s2mts2.infer.gradcam import CamResult, grad_cam
from s2mts2.infer.predict import PredictResult, load_model, run_predict

__all__ = [
    "CamResult",
    "ExportResult",
    "ModelInfo",
    "PredictResult",
    "export_model",
    "grad_cam",
    "load_model",
    "run_predict",
]
