"""``s2mts2 serve`` through Starlette's test client: uploads, Grad-CAM, browsing a split, limits."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from s2mts2.cli import main  # noqa: E402
from s2mts2.data.table import DatasetTable  # noqa: E402
from s2mts2.engine.evaluate import evaluate_checkpoint  # noqa: E402
from s2mts2.errors import DataError  # noqa: E402
from s2mts2.infer.predict import load_model, predict_files  # noqa: E402
from s2mts2.infer.serve import run as serve_run  # noqa: E402
from s2mts2.infer.serve.app import create_app  # noqa: E402
from s2mts2.infer.serve.render import DISPLAY_SIDE  # noqa: E402
from s2mts2.infer.serve.run import build_state  # noqa: E402

from .conftest import GREY_CLASSES, png_bytes, write_checkpoint  # noqa: E402


def client(ckpt: Path, **kwargs) -> TestClient:
    return TestClient(create_app(build_state(ckpt, progress=False, **kwargs)))


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_upload_gives_predicts_probabilities_and_grad_cam(grey_ckpt, tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(png_bytes(700, 600))
    api = client(grey_ckpt)
    info = api.get("/api/info").json()
    assert info["classes"] == list(GREY_CLASSES) and info["cam"] and info["split"] is None
    card = api.post("/api/uploads", params={"name": "scan.png"}, content=image.read_bytes()).json()
    (expected,) = predict_files(load_model(grey_ckpt, "cpu"), [image], progress=False)
    np.testing.assert_allclose(card["probabilities"], expected.probabilities, atol=1e-6)
    assert (card["name"], card["width"], card["height"]) == ("scan.png", 600, 700)
    assert card["cam_class"] == int(np.argmax(expected.probabilities))
    base = f"/api/uploads/{card['id']}"
    shown = api.get(f"{base}/image.png")
    assert png_size(shown.content) == (round(600 * DISPLAY_SIDE / 700), DISPLAY_SIDE)
    for k in range(len(GREY_CLASSES)):  # the top class's map and, on demand, any other class's
        assert png_size(api.get(f"{base}/cam/{k}.png").content) == png_size(shown.content)
    assert api.get(f"{base}/cam/3.png").status_code == 404
    missing = api.get("/api/uploads/nope/image.png")
    assert missing.status_code == 404 and "drop the file again" in missing.json()["error"]


def test_dicom_upload_and_unreadable_files_get_their_own_errors(shared_data, grey_ckpt):
    api = client(grey_ckpt)
    bad = api.post("/api/uploads", params={"name": "notes.png"}, content=b"not an image")
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("notes.png: ")
    assert "BytesIO" not in bad.json()["error"]
    dicom = next((shared_data / "real_samples").glob("*.dcm"))
    for name in (dicom.name, "IM0001"):  # a .dcm name, or the DICM magic under any name
        card = api.post("/api/uploads", params={"name": name}, content=dicom.read_bytes())
        assert card.status_code == 200 and card.json()["error"] is None
        assert sum(card.json()["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_upload_limits(grey_ckpt):
    api = client(grey_ckpt, max_file_mb=0.001, max_files=2)
    too_big = api.post("/api/uploads", params={"name": "big.png"}, content=png_bytes(200, 200))
    assert too_big.status_code == 413
    assert too_big.json()["error"] == (
        "big.png: larger than the 0.0 MB limit per file (s2mts2 serve --max-file-mb)"
    )
    api = client(grey_ckpt, max_files=2)
    tokens = [
        api.post("/api/uploads", params={"name": f"{i}.png"}, content=png_bytes(30 + i)).json()[
            "id"
        ]
        for i in range(3)
    ]
    statuses = [api.get(f"/api/uploads/{t}/image.png").status_code for t in tokens]
    assert statuses == [404, 200, 200]  # the oldest was forgotten


def test_browse_sorts_filters_and_pages(split_ckpt, prepared):
    api = client(split_ckpt, data_dir=prepared)
    table = DatasetTable.load(prepared)
    n = len(table.indices("test"))
    assert api.get("/api/info").json()["split"] == {"name": "test", "images": n}
    everything = api.get("/api/split", params={"per_page": 100}).json()
    assert everything["total"] == n and [i["index"] for i in everything["items"]] == list(range(n))
    items = everything["items"]
    labels = table.labels[table.indices("test")]
    for item in items:
        assert item["labels"] == [c for c, y in zip(table.classes, labels[item["index"]]) if y == 1]
        assert item["predicted"] == [
            c for c, p in zip(table.classes, item["probabilities"]) if p >= 0.5
        ]
    by_loss = api.get("/api/split", params={"sort": "loss", "desc": 1, "per_page": 100}).json()
    losses = [i["loss"] for i in by_loss["items"]]
    assert losses == sorted(losses, reverse=True)
    wrong_first = api.get("/api/split", params={"wrong_first": 1, "per_page": 100}).json()
    flags = [i["misclassified"] for i in wrong_first["items"]]
    assert flags == sorted(flags, reverse=True) and sum(flags) == wrong_first["misclassified"]
    cls = 1
    filtered = api.get("/api/split", params={"true": cls, "pred": cls, "per_page": 100}).json()
    assert all(
        table.classes[cls] in i["labels"] and table.classes[cls] in i["predicted"]
        for i in filtered["items"]
    )
    page = api.get("/api/split", params={"per_page": 5, "page": 1}).json()
    assert page["pages"] == -(-n // 5) and [i["index"] for i in page["items"]] == list(range(5, 10))
    assert png_size(api.get("/api/split/images/0.png").content) == (32, 32)
    assert api.get(f"/api/split/images/{n}.png").status_code == 404
    assert png_size(api.get("/api/split/roc.png").content)[0] > 100
    for query, message in (
        ({"sort": "path"}, "sort: expected one of index, loss, confidence, got 'path'"),
        ({"true": "x"}, "true: expected an integer, got 'x'"),
        ({"pred": 9}, "pred: expected 0..4, got 9"),
    ):
        refused = api.get("/api/split", params=query)
        assert refused.status_code == 400 and refused.json()["error"] == message


def test_a_smaller_model_browses_a_larger_cache(prepared, tmp_path):
    table = DatasetTable.load(prepared)
    ckpt = write_checkpoint(
        tmp_path / "best.pt", table.task, table.channels, table.classes, size=16
    )
    api = client(ckpt, data_dir=prepared)
    assert api.get("/api/info").json()["size"] == 16
    assert api.get("/api/split").json()["total"] == len(table.indices("test"))
    assert png_size(api.get("/api/split/images/0.png").content) == (32, 32)  # the cache's


def test_split_metrics_come_from_evaluate_when_it_scored_this_model(split_ckpt, prepared):
    computed = client(split_ckpt, data_dir=prepared).get("/api/split/metrics").json()
    assert computed["source"].startswith("computed") and computed["metrics"]["n_images"] > 0
    assert computed["metrics"]["mean_auc_ci95"] is None
    evaluate_checkpoint(split_ckpt, data_dir=prepared, n_boot=20, device="cpu")
    stored = client(split_ckpt, data_dir=prepared).get("/api/split/metrics").json()
    assert stored["source"].startswith("s2mts2 evaluate") and "eval-test" in stored["source"]
    assert stored["metrics"]["mean_auc"] == pytest.approx(computed["metrics"]["mean_auc"])
    assert stored["metrics"]["mean_auc_ci95"] is not None
    metrics_file = split_ckpt.parent / "eval-test" / "metrics.json"
    other = {**json.loads(metrics_file.read_text()), "mean_auc": 0.123}
    metrics_file.write_text(json.dumps(other))  # another model's evaluation
    again = client(split_ckpt, data_dir=prepared).get("/api/split/metrics").json()
    assert again["source"].startswith("computed")


def test_data_must_match_the_model(grey_ckpt, prepared):
    with pytest.raises(DataError, match=r"^--data .*: classes .* differ from the model's"):
        build_state(grey_ckpt, data_dir=prepared, progress=False)


def test_page_and_static_files_are_local_and_fixed(grey_ckpt):
    api = client(grey_ckpt)
    page = api.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("serve.js", "serve.css"):
        asset = api.get(f"/static/{name}")
        assert asset.status_code == 200
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing external
    assert "http" not in page.text.replace("http-equiv", "")
    for path in ("/static/app.py", "/static/..%2F..%2Fapp.py", "/api/split"):
        assert api.get(path).status_code == 404
    assert api.get("/api/uploads").status_code == 405  # POST only


def test_loopback_page_refuses_other_host_names(grey_ckpt):
    app = create_app(build_state(grey_ckpt, progress=False), allowed_hosts=["127.0.0.1"])
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/").status_code == 400


def test_onnx_model_gives_probabilities_only(grey_ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    from s2mts2.infer.export import export_model

    onnx = tmp_path / "model.onnx"
    export_model(grey_ckpt, onnx)
    api = client(onnx)
    info = api.get("/api/info").json()
    assert info["cam"] is False and "ONNX" in info["cam_reason"]
    card = api.post("/api/uploads", params={"name": "a.png"}, content=png_bytes(50, 40)).json()
    from_ckpt = client(grey_ckpt).post(
        "/api/uploads", params={"name": "a.png"}, content=png_bytes(50, 40)
    )
    np.testing.assert_allclose(card["probabilities"], from_ckpt.json()["probabilities"], atol=1e-4)
    assert card["cam_class"] is None
    refused = api.get(f"/api/uploads/{card['id']}/cam/0.png")
    assert refused.status_code == 409 and "ONNX" in refused.json()["error"]


def test_cli_binds_the_loopback_and_warns_for_other_hosts(grey_ckpt, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(kw))
    assert main(["serve", str(grey_ckpt), "--no-progress"]) == 0
    assert calls[-1] == {"host": "127.0.0.1", "port": 8000, "log_level": "warning"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert main(["serve", str(grey_ckpt), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 8123
    assert "reachable from other machines" in caplog.text


def test_cli_names_the_pip_command_without_the_extra(grey_ckpt, monkeypatch, capsys):
    real = serve_run.importlib.util.find_spec
    monkeypatch.setattr(
        serve_run.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvicorn" else real(name, *a),
    )
    assert main(["serve", str(grey_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "s2mts2 serve: error: s2mts2 serve needs uvicorn: pip install 's2mts2[serve]'" in err


def test_cli_checks_its_options(grey_ckpt, capsys):
    assert main(["serve", str(grey_ckpt), "--max-files", "0"]) == 2
    assert "--max-files must be at least 1, got 0" in capsys.readouterr().err
    assert main(["serve", str(grey_ckpt), "--cam-layer", "layer9"]) == 2
    assert "--cam-layer: 'layer9' is not a layer of this network" in capsys.readouterr().err


def test_the_page_maps_come_from_the_chosen_layer(grey_ckpt, caplog):
    """resnet18_small at 32 px: layer3's 8x8 map by default; layer4's 4x4 on request, warned."""
    squashed = np.zeros((32, 32, 1), dtype=np.uint8)
    default = build_state(grey_ckpt, progress=False).analyst
    assert default.layer.name == "layer3" and default.cam(squashed, 0).shape == (8, 8)
    assert "coarser than" not in caplog.text
    coarse = build_state(grey_ckpt, cam_layer="layer4", progress=False).analyst
    assert coarse.cam(squashed, 1).shape == (4, 4)
    assert "Grad-CAM at layer4 (4x4 map at 32 px): coarser than 7x7" in caplog.text
