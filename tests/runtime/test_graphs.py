"""CUDA graphs of the stage-1 step (``cuda_graphs``): replayed steps are the eager steps.

The graph tests need a GPU (``benchmarks/gpu_check.sh`` runs them); on a CPU the setting is
checked to change nothing.
"""

from dataclasses import replace

import pytest
import torch
from state_dicts import flat_tensors
from step_settings import SETTINGS, with_runner

from s2mts2.bench import contrastive_step
from s2mts2.config import RunConfig
from s2mts2.engine.checkpoint import RESUME_MAY_CHANGE
from s2mts2.runtime.graphs import uses_cuda_graphs

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _step(precision: str, graphs: bool, device: torch.device = CUDA):
    torch.manual_seed(0)  # the same network and queue for both
    step = contrastive_step(replace(SETTINGS, precision=precision, cuda_graphs=graphs), 1, device)
    if precision == "fp16":  # a scale that does not overflow the first steps
        step.scaler = torch.amp.GradScaler(device.type, init_scale=256.0)
    return step


def _state(step) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": t.detach().double()
        for name, module in (("student", step.student), ("teacher", step.teacher))
        for key, t in flat_tensors(module.state_dict()).items()
    } | {"queue": step.queue.queue.double()}


def _views(seed: int, device: torch.device = CUDA) -> torch.Tensor:
    return torch.randn(3, 8, 1, 32, 32, generator=torch.Generator().manual_seed(seed)).to(device)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_graphed_steps_are_the_eager_steps(precision, monkeypatch):
    # fp32: no TF32 and deterministic cuDNN, so that eager and replayed kernels (plans may
    # differ with the buffers' alignment) differ by rounding only
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    eager, graphed = _step(precision, False), _step(precision, True)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    start = _state(graphed)
    for i in range(3):
        views = _views(i)
        want, got = eager.train(views, 0.5), graphed.train(views, 0.5)
        assert got.item() == pytest.approx(want.item(), rel=1e-3), f"loss of step {i}"
    want, got = _state(eager), _state(graphed)
    assert want.keys() == got.keys()
    for key, value in got.items():
        # capture's warm-up passes left the BatchNorm statistics and counts as they were
        tolerance = 1e-3 * want[key].abs().max().item() + 1e-6
        assert (value - want[key]).abs().max().item() <= tolerance, key
    moved = [k for k in start if not torch.equal(start[k], got[k])]
    assert any(k.endswith("running_mean") for k in moved) and "queue" in moved
    assert any(k.startswith("student.") and k.endswith("weight") for k in moved)
    assert got["student.backbone.bn1.num_batches_tracked"].item() == 3


@needs_cuda
def test_a_graphed_step_does_not_synchronise_and_refuses_another_shape():
    step = _step("bf16", True)
    step.train(_views(0), 0.5)  # captures (may synchronise)
    views = _views(1)  # a copy from pageable host memory synchronises: made before
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step.train(views, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match=r"captured for \(3, 8, 1, 32, 32\)"):
        step.train(_views(2)[:, :4], 0.5)


def test_cuda_graphs_take_effect_on_one_cuda_process_without_compile():
    cpu = torch.device("cpu")
    assert RunConfig().cuda_graphs  # the default
    assert uses_cuda_graphs(True, False, CUDA, 1)
    assert not uses_cuda_graphs(False, False, CUDA, 1)
    assert not uses_cuda_graphs(True, True, CUDA, 1)  # torch.compile has its own
    assert not uses_cuda_graphs(True, False, CUDA, 2)  # DDP: launches its own collectives
    assert not uses_cuda_graphs(True, False, cpu, 1)
    assert not _step("fp32", True, cpu).runner.cuda_graphs  # the bench's builder asks the same
    assert "cuda_graphs" in RESUME_MAY_CHANGE  # how a run launches kernels, not what it computes


def test_graphs_refuse_shuffled_batch_norm_and_compile():
    step = _step("fp32", False, torch.device("cpu"))
    for change in ({"shuffle_bn": True}, {"compile": True}):
        with pytest.raises(ValueError, match="cuda_graphs"):
            with_runner(step, cuda_graphs=True, **change)
