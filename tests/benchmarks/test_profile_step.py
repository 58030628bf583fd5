"""benchmarks/profile_step.py profiles the stage-1 step and writes its JSON."""

import json


def test_writes_time_per_step_and_the_operator_table(tmp_path, load_benchmark):
    out = tmp_path / "p.json"
    argv = ["--device", "cpu", "--model", "resnet18", "--size", "32", "--batch-size", "4"]
    argv += ["--steps", "2", "--warmup", "1", "--rows", "5", "--json", str(out)]
    assert load_benchmark("profile_step").main(argv) == 0
    result = json.loads(out.read_text())
    assert result["precision"] == "fp32" and result["wall_s_per_step"] > 0
    assert result["img_s_under_profiler"] == 4 / result["wall_s_per_step"]
    assert result["device_busy_s_per_step"] is None  # kernel time is measured on CUDA only
    assert "convolution" in result["table"] and result["table"].count("\n") >= 5
