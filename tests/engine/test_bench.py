"""`s2mts2 bench` on tiny settings: every key is measured and written (no timing assertions)."""

import json
import math
from dataclasses import replace

import pytest
import torch

from s2mts2.cli import main
from s2mts2.data.prepared import prepare_dataset
from s2mts2.engine import bench
from s2mts2.engine.bench import (
    QUICK_CPU,
    RESULT_KEYS,
    BenchSettings,
    ReferenceViews,
    format_table,
    reference_transform,
    resolve_settings,
    run_bench,
)
from s2mts2.engine.builders import build_augment
from s2mts2.errors import ConfigError

TINY = dict(
    device="cpu",
    model="resnet18",
    size=16,
    views=2,
    batch_size=4,
    steps=1,
    warmup=1,
    repeats=1,
    images=12,
    prepare_images=6,
    prepare_source_size=32,
    reference_workers=1,
    threads=1,
)


@pytest.fixture(scope="module")
def tiny_result():
    return run_bench(BenchSettings(**TINY), command="test")


def test_tiny_bench_measures_every_key(tiny_result):
    for key in (*RESULT_KEYS, "pretrain_augment_img_s", "prepare_parallel_img_s"):
        assert math.isfinite(tiny_result[key]) and tiny_result[key] > 0, key
    assert tiny_result["prepare_single_workers"] == 1
    # Stage 2 counts labelled + unlabelled images (unlabelled_ratio 1 by default).
    assert tiny_result["finetune_images_per_step"] == 8
    assert tiny_result["device"] == "cpu" and tiny_result["device_name"]
    assert tiny_result["torch_version"] == torch.__version__
    assert tiny_result["settings"]["model"] == "resnet18"
    assert tiny_result["settings"]["source_size"] == 18  # 16 * 8 / 7 rounded
    assert tiny_result["command"] == "test"
    assert math.isclose(
        tiny_result["pretrain_end_to_end_fraction"],
        tiny_result["pretrain_end_to_end_img_s"] / tiny_result["pretrain_model_only_img_s"],
    )
    table = format_table(tiny_result)
    assert "stage 1 end-to-end" in table and "reference pipeline" in table


def test_cli_writes_json_and_prints_table(tmp_path, monkeypatch, capsys, tiny_result):
    seen = {}

    def fake_run(settings, *, quick, command):
        seen.update(settings=settings, quick=quick, command=command)
        return tiny_result

    monkeypatch.setattr(bench, "run_bench", fake_run)
    out = tmp_path / "results" / "speed.json"
    argv = ["bench", "--device", "cpu", "--model", "resnet18", "--size", "32", "--views", "3"]
    argv += ["--batch-size", "8", "--quick", "--json", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["pretrain_model_only_img_s"] > 0
    assert "stage 2 end-to-end" in capsys.readouterr().out
    s = seen["settings"]
    assert (s.device, s.model, s.size, s.views, s.batch_size) == ("cpu", "resnet18", 32, 3, 8)
    assert s.steps is None and s.data is None and seen["quick"]
    assert seen["command"].startswith("s2mts2 bench")


def test_settings_quick_defaults_and_validation():
    cpu = torch.device("cpu")
    quick = resolve_settings(BenchSettings(), True, cpu)
    assert (quick.model, quick.size, quick.batch_size) == (
        QUICK_CPU["model"],
        QUICK_CPU["size"],
        QUICK_CPU["batch_size"],
    )
    full = resolve_settings(BenchSettings(size=112), False, cpu)
    assert (full.model, full.size, full.source_size) == ("densenet121", 112, 128)
    explicit = resolve_settings(BenchSettings(model="resnet50", size=96), True, cpu)
    assert (explicit.model, explicit.size, explicit.batch_size) == ("resnet50", 96, 16)
    with pytest.raises(ConfigError, match="batch-size"):
        resolve_settings(BenchSettings(batch_size=0), False, cpu)
    with pytest.raises(ConfigError, match="channels"):
        resolve_settings(BenchSettings(channels=2), False, cpu)
    with pytest.raises(ConfigError, match="images"):
        resolve_settings(BenchSettings(images=5), False, cpu)


def test_reference_views_follow_the_augmentation_config(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("L", (40, 30), 128).save(path)
    strong = build_augment("strong", 1, 24).config
    views = ReferenceViews([str(path)], 1, reference_transform(strong, 24), 3)[0]
    assert views.shape == (3, 1, 24, 24) and views.dtype == torch.float32
    # Geometry only: a flat image stays flat, normalised with the config's statistics.
    flat = replace(strong, rotate_p=0.0, jitter_p=0.0, blur_p=0.0, erase_p=0.0)
    views = ReferenceViews([str(path)], 1, reference_transform(flat, 24), 2)[0]
    expected = (128 / 255 - strong.mean[0]) / strong.std[0]
    torch.testing.assert_close(views, torch.full((2, 1, 24, 24), expected), atol=1e-6, rtol=0)


def test_bench_on_a_prepared_folder(tmp_path):
    data = tmp_path / "data"
    prepare_dataset(
        "synthetic", data, data, size=16, workers=1, progress=False, options={"n": 24, "size": 20}
    )
    settings = BenchSettings(**{**TINY, "data": str(data), "prepare_images": 4})
    result = run_bench(settings)
    assert all(result[key] > 0 for key in RESULT_KEYS)
    assert result["settings"]["channels"] == 1 and result["settings"]["data"] == str(data)
