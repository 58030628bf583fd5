"""benchmarks/precision_steps.py times both steps per precision and writes its JSON."""

import json

import torch


def test_writes_speeds_and_ratios_per_precision(tmp_path, load_benchmark):
    module = load_benchmark("precision_steps")
    out = tmp_path / "r.json"
    argv = [
        "--size",
        "32",
        "--batch-size",
        "4",
        "--rounds",
        "2",
        "--steps",
        "1",
        "--json",
        str(out),
    ]
    assert module.main(argv) == 0
    result = json.loads(out.read_text())
    for p in ("fp32", "bf16"):
        for stage in ("stage1", "stage2"):
            speeds = result["img_s"][p][stage]
            assert len(speeds["rounds"]) == 2 and speeds["fastest"] == max(speeds["rounds"]) > 0
    assert set(result["ratio_to_fp32"]) == {"bf16"}
    assert result["ratio_to_fp32"]["bf16"]["stage1"] > 0
    assert result["settings"]["stage2_images_per_step"] == 4 + 4  # unlabelled_ratio 1 default


def test_compile_as_a_variant(tmp_path, load_benchmark, monkeypatch):
    """``--compile both``: each precision eager, then compiled (compilation itself is tested in
    tests/engine/test_compile.py; here torch.compile only records which networks it was given)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or module)
    module = load_benchmark("precision_steps")
    out = tmp_path / "r.json"
    argv = ["--precisions", "fp32", "--compile", "both", "--size", "32", "--batch-size", "2"]
    assert module.main([*argv, "--rounds", "1", "--steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["img_s"]) == {"fp32", "fp32+compile"}
    assert set(result["ratio_to_fp32"]) == {"fp32+compile"}
    assert result["ratio_to_fp32"]["fp32+compile"]["stage2"] > 0
    assert len(compiled) == 4  # the compiled variant's student and teacher, stage 1 and stage 2
