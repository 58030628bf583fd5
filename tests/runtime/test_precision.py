"""Mixed precision of the training steps (bf16 / fp16 + loss scaling / fp32), run on the CPU.

The CUDA path is the same code with another device type: these tests exercise autocast, the
channels-last layout, the loss scaler and its checkpointing where CI can run them, and check
that the steps never wait for the device (no host synchronisation from this package's code).
"""

import contextlib
import sys
from dataclasses import replace

import pytest
import torch
from state_dicts import flat_tensors
from step_settings import DATA, SETTINGS

from s2mts2.bench import contrastive_step, mean_teacher_step
from s2mts2.engine.checkpoint import (
    load_checkpoint,
    resume_training,
    save_checkpoint,
    training_state,
)
from s2mts2.errors import ConfigError
from s2mts2.runtime import device as runtime
from s2mts2.runtime.device import Precision, resolve_precision

CPU = torch.device("cpu")


# --- choosing the precision ---------------------------------------------------------------------


def test_auto_is_fp32_nchw_on_a_cpu():
    p = resolve_precision("auto", CPU)
    assert p.name == "fp32" and p.dtype is None and not p.channels_last
    assert not p.scaler().is_enabled()
    x = torch.randn(2, 3, 4, 4)
    assert p.layout(x) is x


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_with_native_bf16_gets_a_hint_not_a_change(monkeypatch, caplog, native):
    """The hint comes where asked for (a run starting in its folder), once per process."""
    monkeypatch.setattr(runtime, "_cpu_bf16", lambda: native)
    runtime._hint_cpu_bf16.cache_clear()
    with caplog.at_level("INFO", logger="s2mts2"):
        assert resolve_precision("auto", CPU).name == "fp32"  # not asked for: no hint
        assert "--set precision=bf16" not in caplog.text
        for _ in range(2):
            assert resolve_precision("auto", CPU, hint=True).name == "fp32"
    assert caplog.text.count("--set precision=bf16") == int(native)
    runtime._hint_cpu_bf16.cache_clear()


def test_the_device_is_described_by_its_hardware(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_name", lambda: "AMD EPYC 7B13")
    assert runtime.describe_device(CPU) == "cpu (AMD EPYC 7B13)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 #{i}")
    assert runtime.describe_device(torch.device("cuda:1")) == "cuda:1 (NVIDIA H100 #1)"
    assert runtime._cpu_name()  # the real one: never empty


@pytest.mark.parametrize(
    ("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)]
)
def test_auto_on_cuda_is_bf16_where_native_else_fp16(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda device: native_bf16)
    p = resolve_precision("auto", torch.device("cuda"))
    assert p.device_type == "cuda" and p.dtype is expected and p.channels_last


def test_bf16_on_an_old_gpu_is_refused_with_the_gpu_named(monkeypatch):
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100-SXM2-32GB")
    with pytest.raises(ConfigError, match=r"V100.*7\.0.*fp16 or fp32"):
        resolve_precision("bf16", torch.device("cuda"))


def test_unknown_precision_names_the_option():
    with pytest.raises(ConfigError, match=r"precision: 'half'.*'bf16'"):
        resolve_precision("half", CPU)


def test_config_refuses_an_unknown_precision():
    from s2mts2.config import load_config

    with pytest.raises(ConfigError, match="precision"):
        load_config("tiny", ["precision=fp8"])


# --- the stage-1 and stage-2 steps in each precision -------------------------------------------


# The step tests run on the CPU, and on the GPU too where there is one (benchmarks/gpu_check.sh).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


STAGE1_BATCH = 32  # split batch norm in 2 groups of 16 (groups of 4 at 1x1 maps amplify rounding)


def _stage1(precision: str, device: torch.device = CPU):
    torch.manual_seed(0)  # the same network and queue in every precision
    settings = replace(SETTINGS, precision=precision, batch_size=STAGE1_BATCH)
    return contrastive_step(settings, 1, device)


def _stage2(precision: str, device: torch.device = CPU):
    torch.manual_seed(0)
    step, _ = mean_teacher_step(replace(SETTINGS, precision=precision), DATA, device)
    return step


def _stage1_inputs(device: torch.device = CPU):
    """An augmentation generator and (1+M, B, C, S, S) views on ``device``."""
    views = torch.randn(3, STAGE1_BATCH, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    return torch.Generator(device=device).manual_seed(1), views.to(device)


def _stage2_inputs(device: torch.device = CPU):
    g = torch.Generator().manual_seed(2)
    x, u, u2 = (torch.randn(8, 1, 32, 32, generator=g) for _ in range(3))
    y = (torch.rand(8, 3, generator=g) > 0.5).float()
    return tuple(t.to(device) for t in (x, y, u, u2))


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def _first_conv_output_dtype(step) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    conv = next(m for m in step.student.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


# How far one step's figures may lie from fp32. Measured here: losses within 1 % (bf16; the
# consistency term 4 %) and 0.4 % (fp16), gradient cosine 0.88-0.92 / 0.99, gradient norm ratio
# 1.09 / 1.00 -- bf16 keeps 8 significant bits. A real defect (gradients left scaled, zero, of
# another sign, a loss computed in bf16) lies far outside.
TOLERANCE = {  # loss relative error, gradient cosine at least, gradient norm ratio error
    "bf16": (0.1, 0.8, 0.2),
    "fp16": (0.02, 0.97, 0.05),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mixed(step, precision: str):
    if precision == "fp16":  # the default 2^16 overflows the first step or two: skipped steps
        step.scaler = torch.amp.GradScaler(step.precision.device_type, init_scale=256.0)
    return step


def _assert_close_gradients(step, ref, precision: str) -> None:
    _, cosine, norm = TOLERANCE[precision]
    g, g_ref = _grads(step.student), _grads(ref.student)  # the fp16 scaler has unscaled them
    assert torch.cosine_similarity(g, g_ref, dim=0) > cosine
    assert (g.norm() / g_ref.norm()).item() == pytest.approx(1.0, abs=norm)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_stage1_step_in_mixed_precision_matches_fp32(precision, device):
    _, views = _stage1_inputs(device)
    ref = _stage1("fp32", device)
    ref_loss = ref.train(views, 1.0)
    step = _mixed(_stage1(precision, device), precision)
    seen = _first_conv_output_dtype(step)
    loss = step.train(views, 1.0)

    # the student really ran in the reduced precision (on CUDA its graph capture ran it more
    # than once: warm-up passes)
    assert seen and set(seen) == {DTYPES[precision]}
    for net in (step.student, step.teacher):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert conv.weight.dtype == torch.float32  # master weights stay fp32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=TOLERANCE[precision][0])
    _assert_close_gradients(step, ref, precision)
    assert step.queue.queue.dtype == torch.float32
    assert int(step.queue.ptr) == STAGE1_BATCH
    assert (step.queue.queue[:STAGE1_BATCH] - ref.queue.queue[:STAGE1_BATCH]).abs().max() < 0.05
    assert step.teacher.steps == 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_stage2_step_in_mixed_precision_matches_fp32(precision, device):
    x, y, u, u2 = _stage2_inputs(device)
    ref = _stage2("fp32", device)
    ref_losses = ref.train(x, y, u, u2, 5.0)
    step = _mixed(_stage2(precision, device), precision)
    losses = step.train(x, y, u, u2, 5.0)
    for value, expected in zip(losses, ref_losses):
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(expected.item(), rel=TOLERANCE[precision][0])
    assert losses[2].item() > 0  # the consistency term is active
    _assert_close_gradients(step, ref, precision)


def test_fp16_overflow_skips_the_optimiser_step_and_lowers_the_scale(device):
    step = _stage1("fp16", device)
    step.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**100)  # fp16 grads overflow
    before = [p.detach().clone() for p in step.student.parameters()]
    views = _stage1_inputs(device)[1]
    loss = step.train(views, 1.0)
    assert torch.isfinite(loss)
    assert all(torch.equal(a, p) for a, p in zip(before, step.student.parameters()))
    assert step.scaler.get_scale() < 2.0**100
    step.train(views, 1.0)  # a later step at a lower scale goes through
    assert step.scaler.get_scale() < 2.0**99


# --- no host synchronisation inside a step -----------------------------------------------------


@contextlib.contextmanager
def fail_on_host_sync_from_s2mts2(monkeypatch):
    """Make every tensor -> Python value conversion called from this package's code raise.

    On CUDA each of these waits for the GPU to finish all queued work. torch's own internals are
    not checked (e.g. Adam reads its step counters, which it keeps on the host).
    """

    def guard(name):
        real = getattr(torch.Tensor, name)

        def checked(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("s2mts2"):
                raise AssertionError(f"host synchronisation: Tensor.{name} called from {caller}")
            return real(self, *args, **kwargs)

        return checked

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))
    try:
        yield
    finally:
        monkeypatch.undo()


def test_the_guard_catches_a_host_sync(monkeypatch):
    package_code = {"__name__": "s2mts2.example"}
    exec("def read(t):\n    return float(t), t.item()", package_code)
    with fail_on_host_sync_from_s2mts2(monkeypatch), pytest.raises(AssertionError, match="float"):
        package_code["read"](torch.ones(()))
    assert package_code["read"](torch.ones(())) == (1.0, 1.0)  # restored afterwards


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_do_not_synchronise_with_the_host(monkeypatch, precision, device):
    """On CUDA torch's sync debug mode also fails any synchronising op, torch's own included."""
    stage1, stage2 = _stage1(precision, device), _stage2(precision, device)
    gen, _ = _stage1_inputs(device)
    y = _stage2_inputs(device)[1]
    u8 = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8).to(device)
    for first in (True, False):  # torch may sync once creating state (optimiser) lazily
        cuda_check = contextlib.nullcontext() if first else cuda_sync_errors(device)
        with fail_on_host_sync_from_s2mts2(monkeypatch), cuda_check:
            stage1.train(stage1.views(u8, gen), 0.5)
            x, us, ut = stage2.views(u8, u8, gen)
            stage2.train(x, y, us, ut, 1.0)


@contextlib.contextmanager
def cuda_sync_errors(device: torch.device):
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- the loss scaler in checkpoints -------------------------------------------------------------


def _scaler_modules(enabled: bool, scale: float = 2.0**16):
    net = torch.nn.Linear(2, 2)
    return {
        "student": net,
        "scaler": torch.amp.GradScaler("cpu", init_scale=scale, enabled=enabled),
    }


def test_resume_restores_the_loss_scale(tmp_path):
    modules = _scaler_modules(True, scale=1234.0)
    modules["scaler"].scale(torch.ones(()))  # creates the scale tensor, as a training step does
    save_checkpoint(training_state("pretrain", modules, epoch=1), tmp_path / "a.pt")
    fresh = _scaler_modules(True)
    resume_training(tmp_path / "a.pt", "pretrain", fresh)
    assert fresh["scaler"].get_scale() == 1234.0


def _step_modules(step) -> dict:
    return {
        "student": step.student,
        "teacher": step.teacher,
        "queue": step.queue,
        "optimizer": step.optimizer,
        "scaler": step.scaler,
    }


def test_resume_restores_a_step_on_its_device(device, tmp_path):
    """A stage-1 step's whole state comes back equal and on the step's device, the RNGs too.

    On CUDA the file is read onto the CPU first (the RNG states must be CPU tensors); the loss
    scale has resume tests of its own.
    """
    step = _stage1("fp32", device)
    step.train(_stage1_inputs(device)[1], 1.0)  # momentum buffers, a queue slot, EMA steps
    saved = _step_modules(step)
    save_checkpoint(training_state("pretrain", saved, epoch=1), tmp_path / "a.pt")
    saved_rng = load_checkpoint(tmp_path / "a.pt")["rng"]
    fresh = _step_modules(_stage1("fp32", device))  # seeds as the saved step was seeded
    torch.manual_seed(7)  # then every torch RNG (CPU and CUDA) away from the saved states
    assert not torch.equal(torch.get_rng_state(), saved_rng["torch"])
    resume_training(tmp_path / "a.pt", "pretrain", fresh)
    for name in ("student", "teacher", "queue", "optimizer"):
        want, got = (
            flat_tensors(saved[name].state_dict()),
            flat_tensors(fresh[name].state_dict()),
        )
        assert want.keys() == got.keys() and len(want) > 0, name
        for key, tensor in got.items():
            assert tensor.device == want[key].device, (name, key, tensor.device)
            assert torch.equal(tensor, want[key]), (name, key)
    assert any(k.endswith("momentum_buffer") for k in flat_tensors(fresh["optimizer"].state_dict()))
    assert fresh["teacher"].steps == 1
    assert torch.equal(torch.get_rng_state(), saved_rng["torch"])
    if device.type == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(device), saved_rng["cuda"][device.index or 0])


def test_resume_keeps_this_devices_optimiser_kernels(tmp_path):
    """A checkpoint written on a CPU (foreach) resumes fused on a GPU, and the other way round."""
    net = torch.nn.Linear(2, 2)
    for saved_kernel, kernel in (("foreach", "fused"), ("fused", "foreach")):
        saved = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, **{saved_kernel: True})
        net(torch.ones(1, 2)).sum().backward()
        saved.step()
        save_checkpoint(
            training_state("pretrain", {"optimizer": saved}, epoch=1), tmp_path / "a.pt"
        )
        fresh = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, **{kernel: True})
        resume_training(tmp_path / "a.pt", "pretrain", {"optimizer": fresh})
        assert fresh.param_groups[0][kernel] and not fresh.param_groups[0][saved_kernel]
        assert torch.equal(
            fresh.state[net.weight]["momentum_buffer"], saved.state[net.weight]["momentum_buffer"]
        )


def test_resume_in_fp16_from_a_bf16_or_old_checkpoint_keeps_a_fresh_scale(tmp_path):
    save_checkpoint(training_state("pretrain", _scaler_modules(False), epoch=1), tmp_path / "a.pt")
    old = training_state("pretrain", {"student": torch.nn.Linear(2, 2)}, epoch=1)
    save_checkpoint(old, tmp_path / "old.pt")
    for path in ("a.pt", "old.pt"):
        fresh = _scaler_modules(True, scale=512.0)
        resume_training(tmp_path / path, "pretrain", fresh)
        assert fresh["scaler"].get_scale() == 512.0


def test_only_fp16_scales_the_loss():
    assert Precision("cpu", torch.float16).scaler().is_enabled()
    assert not Precision("cpu", torch.bfloat16).scaler().is_enabled()
    names = [Precision("cpu", d).name for d in (torch.bfloat16, torch.float16, None)]
    assert names == ["bf16", "fp16", "fp32"]
