"""``compile: true``: the training steps run their networks through torch.compile (TorchInductor).

A compiled step must take the same step as the eager one (up to float rounding: Inductor fuses
and reorders the arithmetic), mutate the same parameters, BatchNorm statistics and queue, and
leave checkpoints as they are. Each test compiles for real: about 30 s per stage on a 2-core CPU
the first time, seconds once Inductor has cached the kernels on disk.
"""

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from spies import spy
from state_dicts import flat_tensors
from step_settings import DATA, SETTINGS
from toolchain import compiles

import s2mts2.engine.finetune as finetune_mod
import s2mts2.engine.pretrain as pretrain_mod
from s2mts2.bench import contrastive_step, mean_teacher_step
from s2mts2.config import load_config
from s2mts2.engine.builders import pretrain_network
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.finetune import finetune
from s2mts2.engine.pretrain import pretrain
from s2mts2.errors import ConfigError
from s2mts2.runtime import device as runtime

CPU = torch.device("cpu")
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code of one test must not serve another (Dynamo caches per code object), and
    the graph counts are this test's."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _captured_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _state(step) -> dict[str, torch.Tensor]:
    """Everything a step changes: student and teacher (parameters, BN statistics), queue."""
    state = {
        "student": step.student.state_dict(),
        "teacher": step.teacher.module.state_dict(),
    }
    if hasattr(step, "queue"):
        state["queue"] = step.queue.state_dict()
    return flat_tensors(state)


def _float64(step):
    """The step's networks in float64 (the losses stay fp32, as the steps compute them).

    In fp32 the two would not agree to rounding: at random initialisation a channel of these
    tiny maps can be constant over the batch, so BatchNorm divides rounding noise by
    sqrt(eps) and a ReLU flips on its sign (eager fp32 against float64: 7 % on ResNet-18's
    layer3.0.conv1 gradient at 32 px). In float64 that noise is 1e-16.
    """
    step.student.double()
    step.teacher.double()
    return step


def _assert_same_step(compiled_step, eager_step) -> None:
    """The student's gradients and everything the step changed equal the eager step's."""
    for p, ref in zip(compiled_step.student.parameters(), eager_step.student.parameters()):
        assert torch.allclose(p.grad, ref.grad, rtol=1e-5, atol=1e-8)
    a, b = _state(compiled_step), _state(eager_step)
    assert a.keys() == b.keys()
    for key, value in a.items():
        if value.is_floating_point():
            assert torch.allclose(value, b[key], rtol=1e-5, atol=1e-8), key
        else:
            assert torch.equal(value, b[key]), key  # num_batches_tracked, queue pointer


@compiles
def test_a_compiled_stage1_step_takes_the_eager_step():
    torch.manual_seed(0)
    eager = _float64(contrastive_step(SETTINGS, 1, CPU))
    torch.manual_seed(0)
    fast = _float64(contrastive_step(replace(SETTINGS, compile=True), 1, CPU))
    views = torch.randn(3, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    for lam in (0.5, 1.0):  # two steps: the second runs the compiled code on updated weights
        assert fast.train(views, lam).item() == pytest.approx(
            eager.train(views, lam).item(), rel=1e-6
        )
        _assert_same_step(fast, eager)
    assert _captured_graphs() >= 2  # the student's and the teacher's forward were compiled
    assert int(fast.queue.ptr) == 16 and fast.teacher.steps == 2


@compiles
def test_a_compiled_stage2_step_takes_the_eager_step():
    g = torch.Generator().manual_seed(2)
    x, u, u2 = (torch.randn(8, 1, 32, 32, generator=g).double() for _ in range(3))
    y = (torch.rand(8, 3, generator=g) > 0.5).float()
    torch.manual_seed(0)
    eager = _float64(mean_teacher_step(SETTINGS, DATA, CPU)[0])
    torch.manual_seed(0)
    fast = _float64(mean_teacher_step(replace(SETTINGS, compile=True), DATA, CPU)[0])
    for _ in range(2):
        losses = fast.train(x, y, u, u2, 5.0)
        expected = eager.train(x, y, u, u2, 5.0)
        for value, ref in zip(losses, expected):
            assert value.item() == pytest.approx(ref.item(), rel=1e-6)
        _assert_same_step(fast, eager)
    assert losses[2].item() > 0  # the consistency term, from the compiled teacher
    assert _captured_graphs() >= 2


def test_only_the_engine_steps_of_the_bench_are_compiled():
    s = replace(SETTINGS, compile=True)
    engine = contrastive_step(s, 1, CPU)
    assert (
        engine.runner._student is not engine.student
        and engine.runner._teacher is not engine.teacher
    )
    reference = contrastive_step(s, 1, CPU, engine=False)
    assert (
        reference.runner._student is reference.student
        and reference.runner._teacher is reference.teacher
    )
    plain = mean_teacher_step(SETTINGS, DATA, CPU)[0]
    assert plain.runner._student is plain.student and plain.runner._teacher is plain.teacher
    fast = mean_teacher_step(s, DATA, CPU)[0]
    assert fast.runner._student is not fast.student and fast.runner._teacher is not fast.teacher


def test_compile_without_a_compiler_stops_with_the_option_named(monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    runtime.check_compile(False)  # nothing to check
    with pytest.raises(ConfigError, match=r"compile: true needs a C/C\+\+ compiler.*compile=false"):
        runtime.check_compile(True)
    monkeypatch.setattr(
        runtime.shutil, "which", lambda name: "/opt/bin/cc" if name == "cc" else None
    )
    runtime.check_compile(True)
    monkeypatch.setenv("CXX", "/opt/gcc-14/bin/g++")
    monkeypatch.setattr(
        runtime.shutil, "which", lambda name: name if name.startswith("/opt") else None
    )
    runtime.check_compile(True)


@compiles
def test_both_stages_train_compiled_and_resume_either_way(tiny_data, tmp_path, monkeypatch):
    """``--set compile=true`` through both stages: plain checkpoints (no ``_orig_mod.`` keys),
    finite losses, and a compiled run resumes eagerly (compile may change on resume)."""
    checks = {m: spy(monkeypatch, m, "check_compile") for m in (pretrain_mod, finetune_mod)}
    base = ["finetune.method=s2mts2", f"data.dir={tiny_data}", "compile=true"]
    pre = pretrain(load_config("tiny", base), tmp_path / "pre", progress=False)
    assert _captured_graphs() >= 2
    state = load_checkpoint(pre)
    cfg = load_config("tiny", base)
    assert state["student"].keys() == pretrain_network(cfg.model, 1).state_dict().keys()
    assert state["epoch"] == 2
    assert state["config"]["compile"] is True
    assert all(math.isfinite(r["loss"]) for r in state["history"][1:])
    before = Path(pre).read_bytes()
    copy = tmp_path / "pre-eager"
    shutil.copytree(tmp_path / "pre", copy)
    eager_cfg = load_config("tiny", [*base[:2], "compile=false"])
    pretrain(eager_cfg, copy, resume=True, progress=False)  # finished: nothing left to do
    assert (copy / "last.pt").read_bytes() == before

    ft = load_config("tiny", [*base, f"finetune.pretrained={pre}", "finetune.epochs=1"])
    graphs = _captured_graphs()
    finetune(ft, tmp_path / "ft", progress=False)
    best = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert _captured_graphs() >= graphs + 2  # stage 2's student and teacher
    assert [args for args, _ in checks[pretrain_mod]] == [(True,), (False,)]
    assert [args for args, _ in checks[finetune_mod]] == [(True,)]
    teacher_keys = [k for k in best["teacher"] if k != "_extra_state"]  # EmaTeacher's steps
    assert teacher_keys == [f"module.{k}" for k in best["student"]]
    assert not any("_orig_mod" in k for k in best["student"])
    row = best["history"][-1]
    assert math.isfinite(row["loss"]) and row["consistency"] > 0
