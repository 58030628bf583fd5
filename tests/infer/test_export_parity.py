"""The ONNX parity check itself: it must see a PyTorch side that differs at any of its batch sizes."""

import json

import torch

from s2mts2.engine.model_info import ModelInfo
from s2mts2.infer import export
from s2mts2.infer.export import PARITY_TOLERANCE
from s2mts2.models.heads import Network


def test_parity_check_sees_a_difference_at_every_batch_size(tmp_path):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    model = export.ProbabilityModel(Network(backbone, torch.nn.Linear(4, 2)).eval(), "multiclass")
    info = ModelInfo(["a", "b"], "multiclass", 1, 8, (0.5,), (0.25,))
    export.export_onnx(model, info, tmp_path / "m.onnx")
    assert export.onnx_parity(model, info, tmp_path / "m.onnx") < PARITY_TOLERANCE
    for bad_batch in export.PARITY_BATCHES:  # a PyTorch side that differs at one batch size only

        def off(x, b=bad_batch):
            return model(x) + (0.5 if len(x) == b else 0.0)

        assert export.onnx_parity(off, info, tmp_path / "m.onnx") >= 0.5 - 1e-6, bad_batch
    assert export.PARITY_BATCHES == (1, 4)


def test_card_records_the_best_validation_score(grey_ckpt, tmp_path):
    export.export_model(grey_ckpt, tmp_path / "m.onnx")
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["training"]["best_val_mean_auc"] == 0.5 and card["training"]["epochs"] == 3


def test_a_model_in_training_mode_is_exported_and_compared_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),  # batch statistics in training mode
        torch.nn.Dropout(0.5),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    net = Network(backbone, torch.nn.Linear(4, 2))
    net.backbone[1].running_mean.fill_(0.3)
    model = export.ProbabilityModel(net.train(), "multiclass")
    info = ModelInfo(["a", "b"], "multiclass", 1, 8, (0.5,), (0.25,))
    export.export_onnx(model, info, tmp_path / "m.onnx")
    assert not model.training and not net.training
    assert export.onnx_parity(model, info, tmp_path / "m.onnx") < PARITY_TOLERANCE
