"""EMA teacher: update math, buffer policies, no gradients, state round trip."""

import pytest
import torch
from torch import nn

from s2mts2.models.ema import EmaTeacher


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


def test_update_is_exponential_moving_average():
    torch.manual_seed(0)
    student = _net()
    teacher = EmaTeacher(student, ema=0.9)
    for _ in range(3):
        old = [p.clone() for p in teacher.module.parameters()]
        _perturb(student)
        teacher.update(student)
        for t, o, s in zip(teacher.module.parameters(), old, student.parameters()):
            assert torch.allclose(t, 0.9 * o + 0.1 * s, rtol=1e-12, atol=1e-14)
    assert teacher.steps == 3
    old = [p.clone() for p in teacher.module.parameters()]
    _perturb(student)
    teacher.update(student, ema=0.5)
    for t, o, s in zip(teacher.module.parameters(), old, student.parameters()):
        assert torch.allclose(t, 0.5 * o + 0.5 * s, rtol=1e-12, atol=1e-14)


def test_warmup_momentum():
    teacher = EmaTeacher(_net(), ema=0.999, warmup=True)
    assert teacher.current_ema() == pytest.approx(1 / 10)
    teacher.steps = 10
    assert teacher.current_ema() == pytest.approx(11 / 20)
    teacher.steps = 100_000
    assert teacher.current_ema() == 0.999
    assert EmaTeacher(_net(), ema=0.99).current_ema() == 0.99


def _run_student_and_teacher(policy: str):
    torch.manual_seed(1)
    student = _net()
    teacher = EmaTeacher(student, ema=0.75, buffers=policy)
    student.train()
    teacher.train()
    for _ in range(2):  # the student's BN has counted 2 batches, the teacher's 1
        student(torch.randn(8, 4, dtype=torch.float64) + 3.0)
    teacher(torch.randn(8, 4, dtype=torch.float64) - 3.0)
    bn_t, bn_s = teacher.module[1], student[1]
    before = (bn_t.running_mean.clone(), bn_t.num_batches_tracked.clone())
    teacher.update(student)
    return bn_t, bn_s, before


def test_buffers_own():
    bn_t, bn_s, (mean_before, count_before) = _run_student_and_teacher("own")
    assert torch.equal(bn_t.running_mean, mean_before)
    assert not torch.allclose(bn_t.running_mean, bn_s.running_mean)
    assert torch.equal(bn_t.num_batches_tracked, count_before)


def test_buffers_copy():
    bn_t, bn_s, _ = _run_student_and_teacher("copy")
    assert torch.equal(bn_t.running_mean, bn_s.running_mean)
    assert torch.equal(bn_t.running_var, bn_s.running_var)
    assert bn_t.num_batches_tracked == bn_s.num_batches_tracked == 2
    bn_s.running_mean.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(bn_t.running_mean, bn_s.running_mean)


def test_buffers_ema():
    torch.manual_seed(2)
    bn_t, bn_s, (mean_before, _) = _run_student_and_teacher("ema")
    expected = 0.75 * mean_before + 0.25 * bn_s.running_mean
    assert torch.allclose(bn_t.running_mean, expected, rtol=1e-12)
    assert bn_t.num_batches_tracked == bn_s.num_batches_tracked == 2  # an integer: copied


def test_teacher_gets_no_gradient():
    torch.manual_seed(3)
    student = _net()
    teacher = EmaTeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    x = torch.randn(4, 4, dtype=torch.float64)
    loss = ((student(x) - teacher(x)) ** 2).sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    teacher.update(student)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(4)
    student = _net()
    teacher = EmaTeacher(student, ema=0.5)
    _perturb(student)
    teacher.update(student)
    teacher.update(student)
    restored = EmaTeacher(_net(), ema=0.5)
    restored.load_state_dict(teacher.state_dict())
    assert restored.steps == 2
    for a, b in zip(restored.state_dict().values(), teacher.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="policy"):
        EmaTeacher(_net(), buffers="mean")
    with pytest.raises(ValueError, match="momentum"):
        EmaTeacher(_net(), ema=1.5)
