"""benchmarks/serve_speed.py: its checkpoint serves, and its HTTP timings come from a real server."""

import pytest

pytest.importorskip("uvicorn")


def test_a_served_checkpoint_answers_the_timed_requests(tmp_path, load_benchmark):
    bench = load_benchmark("serve_speed")
    ckpt = bench.write_checkpoint(tmp_path / "best.pt", "resnet18", 32)
    xray = tmp_path / "xray.png"
    bench.write_xray(xray)
    with bench.server(ckpt) as (url, startup):
        assert url.startswith("http://127.0.0.1:") and startup > 0
        upload_ms, cam_ms = bench.api_ms(url, xray.read_bytes())
    assert upload_ms > 0 and cam_ms > 0
