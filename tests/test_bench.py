"""`s2mts2 bench` on tiny settings: every key is measured and written (no timing assertions)."""

import json
import logging
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from spies import spy

from s2mts2 import bench
from s2mts2.bench import (
    QUICK_CPU,
    RESULT_KEYS,
    BenchSettings,
    ReferenceViews,
    format_table,
    prepared_data,
    reference_schedule,
    reference_transform,
    resolve_settings,
    run_bench,
)
from s2mts2.cli import main
from s2mts2.data.imageio import load_preprocessed
from s2mts2.data.prepared import prepare_dataset
from s2mts2.data.table import DatasetTable
from s2mts2.engine.builders import build_augment
from s2mts2.errors import ConfigError, DataError
from s2mts2.runtime import device as runtime

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
    for key in (
        *RESULT_KEYS,
        "pretrain_augment_img_s",
        "pretrain_augment_share",
        "prepare_parallel_img_s",
    ):
        assert math.isfinite(tiny_result[key]) and tiny_result[key] > 0, key
    assert tiny_result["prepare_single_workers"] == 1
    assert tiny_result["prepare_parallel_workers"] == os.cpu_count()
    # Stage 2 counts labelled + unlabelled images (unlabelled_ratio 1 by default).
    assert tiny_result["finetune_images_per_step"] == 8
    assert tiny_result["device"] == "cpu" and tiny_result["device_name"]
    assert tiny_result["torch_version"] == torch.__version__
    assert tiny_result["settings"]["model"] == "resnet18"
    assert tiny_result["settings"]["source_size"] == 18  # 16 * 8 / 7 rounded
    assert tiny_result["command"] == "test"
    assert tiny_result["reference_schedule"] == {"workers": 1, "warmup": 3, "steps": 4}
    assert math.isclose(
        tiny_result["pretrain_end_to_end_fraction"],
        tiny_result["pretrain_end_to_end_img_s"] / tiny_result["pretrain_model_only_img_s"],
    )
    table = format_table(tiny_result)
    assert "stage 1 end-to-end" in table and "reference pipeline" in table
    assert "torch.compile" not in table
    compiled = {**tiny_result, "settings": {**tiny_result["settings"], "compile": True}}
    assert ", torch.compile," in format_table(compiled)


def test_every_figure_comes_from_its_own_timings(monkeypatch, caplog):
    """Scripted seconds per measurement, two rounds: each speed is the images per step over the
    fastest round, each ratio the median over rounds of two figures timed back to back, and the
    reference runs its own (longer) schedule. Stage 1's figures are logged before stage 2 runs
    (a long run that is stopped keeps them in its log)."""
    script = [
        # stage 1, per round: model-only, augmentation, end-to-end, reference
        *(0.5, 0.05, 0.6, 1.2),
        *(0.4, 0.03, 0.5, 1.6),
        # stage 2, per round: model-only, end-to-end
        *(0.8, 1.0),
        *(1.0, 1.1),
    ]
    calls = []
    logged_before_stage2 = []

    def scripted(step, warmup, steps, device):
        step()  # the real step runs once, so the measured code path is exercised
        calls.append((warmup, steps))
        if len(calls) == 9:
            logged_before_stage2.extend(r.getMessage() for r in caplog.records)
        return script[len(calls) - 1]

    monkeypatch.setattr(bench, "time_steps", scripted)
    built = spy(monkeypatch, bench, "contrastive_step")
    views1 = spy(monkeypatch, bench.ContrastiveStep, "views")
    views2 = spy(monkeypatch, bench.MeanTeacherStep, "views")
    settings = BenchSettings(**{**TINY, "repeats": 2, "steps": 2, "warmup": 1})
    caplog.set_level(logging.INFO, logger="s2mts2")
    r = run_bench(settings, command="test")
    assert len(calls) == len(script)
    assert (
        "stage 1 (fastest of 2 rounds): model-only 10.0, end-to-end 8.0, reference 3.3 img/s"
        in logged_before_stage2
    )
    # the engine's step, and the reference: what users run today, fp32 NCHW, never compiled
    assert [kwargs.get("engine", True) for _, kwargs in built] == [True, False]
    # views made once for model-only, then per call: the augmentation alone and end-to-end
    assert len(views1) == 1 + 2 * 2
    # stage 2: once for model-only, then end-to-end, from the labelled and the unlabelled loader
    assert len(views2) == 1 + 2 and all(args[1] is not args[2] for args, _ in views2)
    reference = (1 + 2, 4)  # warm-up + the 2 prefetched batches of 1 worker; 2 x 2 timed
    assert calls[:8] == [(1, 2), (1, 2), (1, 2), reference] * 2
    assert calls[8:] == [(1, 2)] * 4
    b, fine_b = 4, 8
    assert r["pretrain_model_only_img_s"] == pytest.approx(b / 0.4)
    assert r["pretrain_augment_img_s"] == pytest.approx(b / 0.03)
    assert r["pretrain_end_to_end_img_s"] == pytest.approx(b / 0.5)
    assert r["reference_pipeline_img_s"] == pytest.approx(b / 1.2)
    assert r["finetune_model_only_img_s"] == pytest.approx(fine_b / 0.8)
    assert r["finetune_end_to_end_img_s"] == pytest.approx(fine_b / 1.0)
    assert r["pretrain_end_to_end_fraction"] == pytest.approx((0.5 / 0.6 + 0.4 / 0.5) / 2)
    assert r["finetune_end_to_end_fraction"] == pytest.approx((0.8 / 1.0 + 1.0 / 1.1) / 2)
    assert r["end_to_end_vs_reference"] == pytest.approx((1.2 / 0.6 + 1.6 / 0.5) / 2)
    assert r["pretrain_augment_share"] == pytest.approx((0.05 / 0.5 + 0.03 / 0.4) / 2)


def test_time_steps_times_only_the_steps_after_the_warm_up(monkeypatch):
    events = []
    clock = iter([10.0, 16.0])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: events.append("t") or next(clock))
    seconds = bench.time_steps(lambda: events.append("s"), 2, 3, torch.device("cpu"))
    assert seconds == 2.0
    assert events == ["s", "s", "t", "s", "s", "s", "t"]


def test_cli_writes_json_and_prints_table(tmp_path, monkeypatch, capsys, tiny_result):
    seen = {}

    def fake_run(settings, *, quick, command):
        seen.update(settings=settings, quick=quick, command=command)
        return tiny_result

    monkeypatch.setattr(bench, "run_bench", fake_run)
    out = tmp_path / "results" / "speed.json"
    argv = ["bench", "--device", "cpu", "--model", "resnet18", "--size", "32", "--views", "3"]
    argv += ["--batch-size", "8", "--quick", "--compile", "--json", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())["pretrain_model_only_img_s"] > 0
    assert "stage 2 end-to-end" in capsys.readouterr().out
    s = seen["settings"]
    assert (s.device, s.model, s.size, s.views, s.batch_size) == ("cpu", "resnet18", 32, 3, 8)
    assert s.steps is None and s.data is None and seen["quick"] and s.compile
    assert seen["command"].startswith("s2mts2 bench")


@pytest.mark.parametrize(
    "load, preset, expected",
    [(0.1, None, None), (2.5, None, "PASSIVE"), (2.5, "ACTIVE", "ACTIVE")],
)
def test_cli_waits_passively_on_a_busy_cpu(
    tmp_path, monkeypatch, tiny_result, load, preset, expected
):
    monkeypatch.setattr(bench, "run_bench", lambda settings, **kwargs: tiny_result)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "recorded")  # restored after the test
    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY")
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    assert main(["bench", "--json", str(tmp_path / "r.json")]) == 0
    assert os.environ.get("OMP_WAIT_POLICY") == expected


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
    # The reference drains its workers' prefetch buffer (2 batches each) before timing.
    schedule = reference_schedule(replace(full, reference_workers=3, steps=5, warmup=1))
    assert schedule == (3, 1 + 6, 12)
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_settings(BenchSettings(batch_size=0), False, cpu)
    with pytest.raises(ConfigError, match="channels"):
        resolve_settings(BenchSettings(channels=2), False, cpu)
    with pytest.raises(ConfigError, match="images"):
        resolve_settings(BenchSettings(images=5), False, cpu)


def test_bench_compile_is_checked_like_the_training_setting(monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    checks = spy(monkeypatch, bench, "check_compile")
    cpu = torch.device("cpu")
    assert resolve_settings(BenchSettings(compile=True), False, cpu).compile
    resolve_settings(BenchSettings(), False, cpu)
    assert [args for args, _ in checks] == [(True,), (False,)]


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


def test_prepared_folder_supplies_files_cache_and_train_rows(tmp_path):
    data = tmp_path / "data"
    options = {"n": 24, "size": 20}
    prepare_dataset("synthetic", data, data, size=16, workers=1, progress=False, options=options)
    got = prepared_data(str(data), 16)
    table = DatasetTable.load(data)
    assert got.paths == table.paths and got.channels == 1 and got.task == table.task
    assert np.array_equal(got.train, table.indices("train"))
    assert got.images.shape == (24, 1, 16, 16) and got.images.dtype == np.uint8
    first = load_preprocessed(table.paths[5], 16, 1).transpose(2, 0, 1)
    assert np.array_equal(got.images[got.rows[5]], first)
    with pytest.raises(DataError, match="cache"):
        prepared_data(str(data), 32)
