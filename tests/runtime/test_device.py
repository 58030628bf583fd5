"""Device, thread and divergence settings shared by the training loops."""

import math

import pytest
import torch

from s2mts2.engine.checkpoint import check_finite
from s2mts2.errors import ConfigError, DivergenceError
from s2mts2.runtime.device import resolve_device, setup_threads


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"'{name}' requested but CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        resolve_device("gpu")


def test_threads_setting_is_applied_and_zero_keeps_the_default():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        setup_threads(1)
        assert torch.get_num_threads() == 1
        setup_threads(0)
        assert torch.get_num_threads() == 1  # 0: left as it is
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_epoch_loss_stops_the_run(tmp_path, bad):
    check_finite({"loss": 1.0, "jcl": 0.5}, "pretrain", 3, tmp_path / "last.pt")
    with pytest.raises(DivergenceError, match=f"pretrain epoch 3: jcl {bad}.*no checkpoint"):
        check_finite({"loss": 1.0, "jcl": bad}, "pretrain", 3, tmp_path / "last.pt")
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(DivergenceError, match=r"still holds the last finished epoch \(2\)"):
        check_finite({"loss": bad}, "pretrain", 3, tmp_path / "last.pt")
