"""benchmarks/bn_stats_kernels.py: DenseNet-121's batch-norm shapes and the kernels' times."""

import json


def test_densenet121_readers_and_chunks(load_benchmark):
    readers, chunks = load_benchmark("bn_stats_kernels").densenet121_shapes(224)
    assert len(readers) == len(chunks) == 6 + 12 + 24 + 16 + 4
    assert readers[0] == (64, 56, 64, 256) and readers[6] == (256, 56, 64, 256)  # transition1
    assert readers[7] == (128, 28, 128, 512) and readers[-1] == (1024, 7, 512, 1024)  # norm5
    assert chunks[0] == (64, 56) and chunks[1] == (32, 56) and chunks[7] == (128, 28)
    # every reader normalises the chunks of its block so far: channels add up
    assert sum(c for c, _ in chunks[:7]) == readers[6][0]


def test_writes_times_of_every_method(tmp_path, load_benchmark):
    out = tmp_path / "k.json"
    argv = ["--device", "cpu", "--size", "32", "--batch-size", "2", "--repeats", "1"]
    assert load_benchmark("bn_stats_kernels").main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {"train_readers", "apply_readers", "cat_readers", "apply_buffer_views"}
    for method in ("shortcut", "var_mean_fp32", "sums_fp32"):
        names |= {f"{method}_readers", f"{method}_chunks"}
    assert set(result["ms_per_forward"]) == names
    assert all(ms > 0 for ms in result["ms_per_forward"].values())
    assert result["elements"]["readers"] > result["elements"]["chunks"] > 0
