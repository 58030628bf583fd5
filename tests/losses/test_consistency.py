"""Consistency loss and ramp-up weights against manual computations."""

import math

import pytest
import torch

from s2mts2.losses import consistency_loss
from s2mts2.losses.consistency import consistency_weight


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_gradient_to_student_only(task):
    torch.manual_seed(0)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 4, requires_grad=True)
    loss = consistency_loss(student, teacher, task)
    loss.backward()
    assert loss.item() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_zero_when_equal(task):
    logits = torch.randn(5, 3, requires_grad=True)
    loss = consistency_loss(logits, logits.detach().clone(), task)
    assert loss.item() == 0.0


def test_matches_manual():
    torch.manual_seed(1)
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
    manual_ml = sum((sig(s[i, c]) - sig(t[i, c])) ** 2 for i in range(4) for c in range(3)) / 12
    assert consistency_loss(s, t, "multilabel").item() == pytest.approx(float(manual_ml), rel=1e-12)
    soft = lambda x: torch.exp(x) / torch.exp(x).sum(1, keepdim=True)  # noqa: E731
    manual_mc = ((soft(s) - soft(t)) ** 2).sum() / 12
    assert consistency_loss(s, t, "multiclass").item() == pytest.approx(float(manual_mc), rel=1e-12)


def test_bf16_logits_give_float32():
    s, t = torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16()
    assert consistency_loss(s, t, "multilabel").dtype == torch.float32


def test_bad_task():
    with pytest.raises(ValueError, match="task"):
        consistency_loss(torch.zeros(2, 2), torch.zeros(2, 2), "regression")


def test_ramps():
    linear = dict(max_weight=10.0, ramp_epochs=4.0, kind="linear")
    assert consistency_weight(0.0, **linear) == 0.0
    assert consistency_weight(1.0, **linear) == pytest.approx(2.5)
    assert consistency_weight(4.0, **linear) == 10.0
    assert consistency_weight(9.0, **linear) == 10.0
    sigmoid = dict(max_weight=10.0, ramp_epochs=4.0, kind="sigmoid")
    assert consistency_weight(0.0, **sigmoid) == pytest.approx(10 * math.exp(-5))
    assert consistency_weight(2.0, **sigmoid) == pytest.approx(10 * math.exp(-1.25))
    assert consistency_weight(5.0, **sigmoid) == 10.0
    assert consistency_weight(-1.0, **linear) == 0.0  # t < 0 counts as 0
    assert consistency_weight(-1.0, **sigmoid) == pytest.approx(10 * math.exp(-5))
    for kind in ("linear", "sigmoid"):
        assert consistency_weight(0.0, max_weight=3.0, ramp_epochs=0, kind=kind) == 3.0
    with pytest.raises(ValueError, match="kind"):
        consistency_weight(1.0, max_weight=1.0, ramp_epochs=1.0, kind="cosine")
