"""Both training steps move the teacher as docs/method.md says: after the student's optimiser step,
θ' ← m·θ' + (1−m)·θ with the updated student θ, and no gradient reaches the teacher."""

import torch
from step_settings import DATA, SETTINGS

from s2mts2.bench import contrastive_step, mean_teacher_step

CPU = torch.device("cpu")


def _check_ema(step, run_step) -> None:
    # m = 0.5 and a teacher away from the student: the default m = 0.999 would hide the
    # difference between the student before and after its step in rounding
    step.teacher.ema = m = 0.5
    with torch.no_grad():
        for p in step.teacher.module.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    teacher_before = [p.detach().clone() for p in step.teacher.module.parameters()]
    student_before = [p.detach().clone() for p in step.student.parameters()]
    run_step()
    student_after = [p.detach() for p in step.student.parameters()]
    moved = [not torch.equal(a, b) for a, b in zip(student_before, student_after)]
    assert sum(moved) > len(moved) // 2  # the student trained
    for t0, s1, t1 in zip(teacher_before, student_after, step.teacher.module.parameters()):
        assert t1.grad is None
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1, rtol=1e-5, atol=1e-7)
    assert step.teacher.steps == 1


def test_stage1_teacher_is_the_ema_of_the_updated_student():
    torch.manual_seed(0)
    step = contrastive_step(SETTINGS, 1, CPU)
    views = torch.randn(
        1 + step.cfg.views, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3)
    )
    _check_ema(step, lambda: step.train(views, 1.0))


def test_stage2_teacher_is_the_ema_of_the_updated_student():
    torch.manual_seed(0)
    step, _ = mean_teacher_step(SETTINGS, DATA, CPU)
    g = torch.Generator().manual_seed(2)
    x, u, u2 = (torch.randn(8, 1, 32, 32, generator=g) for _ in range(3))
    y = (torch.rand(8, 3, generator=g) > 0.5).float()
    _check_ema(step, lambda: step.train(x, y, u, u2, 1.0))
