import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from s2mts2.cli import main
from s2mts2.config import ModelConfig
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.evaluate import load_classifier
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError, DataError, S2MTS2Error
from s2mts2.files import ordinary_file_mode
from s2mts2.infer import export
from s2mts2.infer.export import PARITY_TOLERANCE
from s2mts2.infer.predict import run_predict
from s2mts2.models.heads import Network

from .conftest import GREY_CLASSES, SIZE, teacher_weights


@pytest.fixture(scope="module")
def exported(grey_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``s2mts2 export`` of the grey checkpoint (with evaluations next to it): (onnx, stdout)."""
    run = grey_ckpt.parent
    (run / "eval-test").mkdir(exist_ok=True)
    (run / "eval-test" / "metrics.json").write_text(
        json.dumps({"checkpoint": str(grey_ckpt), "split": "test", "mean_auc": 0.75})
    )
    (run / "eval-last").mkdir(exist_ok=True)  # an evaluation of another checkpoint: left out
    (run / "eval-last" / "metrics.json").write_text(
        json.dumps({"checkpoint": str(run / "last.pt"), "split": "test", "mean_auc": 0.5})
    )
    onnx_path = tmp_path_factory.mktemp("export") / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(grey_ckpt), "--onnx", str(onnx_path)]) == 0
    return onnx_path, stdout.getvalue()


def test_export_writes_the_three_files_and_reports_parity(exported):
    onnx_path, stdout = exported
    for suffix in (".onnx", ".safetensors", ".json"):
        assert onnx_path.with_suffix(suffix).is_file()
        mode = onnx_path.with_suffix(suffix).stat().st_mode & 0o777
        assert mode == ordinary_file_mode(), suffix  # readable like any file the user writes
    assert "ONNX parity" in stdout and "max abs diff" in stdout
    assert not onnx_path.with_suffix(".onnx.data").exists()  # the weights are inside the file


def test_model_card(exported, grey_ckpt):
    onnx_path, _ = exported
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    meta = load_checkpoint(grey_ckpt)["meta"]
    for key in ("classes", "task", "channels", "size", "mean", "std"):
        assert card[key] == meta[key]
    assert card["input"]["name"] == "image" and card["input"]["shape"] == ["batch", 1, SIZE, SIZE]
    assert card["output"] == {
        "name": "probabilities",
        "shape": ["batch", len(GREY_CLASSES)],
        "activation": "softmax",
    }
    assert card["model"]["backbone"] == "resnet18_small"
    assert card["training"]["labelled_images"] == 10 and card["training"]["epochs"] == 3
    assert set(card["metrics"]) == {"eval-test"}
    assert card["metrics"]["eval-test"]["mean_auc"] == 0.75
    assert card["parity"]["max_abs_diff"] < PARITY_TOLERANCE
    assert card["files"]["safetensors"] == "model.safetensors"


def test_onnx_runs_with_a_dynamic_batch_and_matches_pytorch(exported, grey_ckpt):
    onnx_path, _ = exported
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (
        inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1:] == [1, SIZE, SIZE]
    )
    assert out.name == "probabilities"
    net = load_classifier(load_checkpoint(grey_ckpt))
    for batch in (1, 3):
        x = torch.randn(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        (probs,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = torch.softmax(net(x), dim=1).numpy()
        assert probs.shape == (batch, len(GREY_CLASSES))
        assert np.abs(probs - expected).max() < PARITY_TOLERANCE


def test_safetensors_weights_rebuild_the_teacher(exported, grey_ckpt):
    onnx_path, _ = exported
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    cfg = ModelConfig(backbone=card["model"]["backbone"], head_hidden=card["model"]["head_hidden"])
    net = classifier_network(cfg, card["channels"], len(card["classes"]))
    net.load_state_dict(load_file(str(onnx_path.with_suffix(".safetensors"))))
    teacher = teacher_weights(grey_ckpt)
    assert net.state_dict().keys() == teacher.keys()
    for name, value in teacher.items():
        assert torch.equal(net.state_dict()[name], value), name


def test_predict_from_onnx_equals_predict_from_checkpoint(
    exported, grey_ckpt, shared_data, tmp_path
):
    onnx_path, _ = exported
    images = [shared_data / "real_samples"]
    from_ckpt = run_predict(grey_ckpt, images, out=tmp_path / "a.json", progress=False)
    from_onnx = run_predict(onnx_path, images, out=tmp_path / "b.json", progress=False)
    assert len(from_onnx.predictions) == 4
    for a, b in zip(from_ckpt.predictions, from_onnx.predictions):
        assert a.path == b.path and b.error is None
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["classes"] == list(GREY_CLASSES) and doc["model"] == str(onnx_path)


def test_onnx_needs_its_model_card_and_cannot_give_grad_cam(exported, tmp_path):
    onnx_path, _ = exported
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    alone = tmp_path / "alone.onnx"
    shutil.copy(onnx_path, alone)
    with pytest.raises(DataError, match="model card"):
        run_predict(alone, [image], out=tmp_path / "r.csv", progress=False)
    (tmp_path / "alone.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not an s2mts2 model card"):
        run_predict(alone, [image], out=tmp_path / "r.csv", progress=False)
    with pytest.raises(ConfigError, match="PyTorch checkpoint"):
        run_predict(onnx_path, [image], out=tmp_path / "r.csv", cam_dir=tmp_path / "c")


def test_failed_parity_stops_the_export(grey_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "export_onnx", lambda model, info, path: path.write_bytes(b""))
    monkeypatch.setattr(export, "onnx_parity", lambda model, info, path: 3e-4)
    with pytest.raises(S2MTS2Error, match="parity check failed"):
        export.export_model(grey_ckpt, tmp_path / "m.onnx")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.safetensors").exists()
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export.export_model(grey_ckpt, tmp_path / "m.bin")


def test_multilabel_rgb_export_ends_with_a_sigmoid(tmp_path):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    net = Network(backbone, torch.nn.Linear(4, 2)).eval()
    info = ModelInfo(["mel", "nv"], "multilabel", 3, 8, (0.5,) * 3, (0.25,) * 3)
    model = export.ProbabilityModel(net, info.task)
    export.export_onnx(model, info, tmp_path / "m.onnx")
    assert export.onnx_parity(model, info, tmp_path / "m.onnx") < PARITY_TOLERANCE
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 8, 8)
    (probs,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = torch.sigmoid(net(x)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent per class, not a softmax
