"""The stage-1 step against a direct computation: its loss and gradient, and what the negative
queue receives (METHOD.md: the μ of a batch)."""

import copy

import pytest
import torch
from spies import spy
from step_settings import SETTINGS

from s2mts2.engine.bench import contrastive_step
from s2mts2.losses.jcl import jcl_loss


@pytest.mark.parametrize("entries", ["mean", "normalised_mean"])
def test_the_queue_receives_each_images_mean_key(entries):
    torch.manual_seed(0)
    step = contrastive_step(SETTINGS, 1, torch.device("cpu"))
    step.cfg.queue_entries = entries
    views = torch.randn(
        1 + step.cfg.views, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():  # the teacher before the step's EMA update, on the key views
        keys = copy.deepcopy(step.teacher)(views[1:].flatten(0, 1)).view(step.cfg.views, 8, -1)
    mu = keys.mean(dim=0)  # (B, D)
    assert (mu.norm(dim=1) < 0.999).all()  # the M key views differ, so |μ| < 1
    if entries == "normalised_mean":
        mu = mu / mu.norm(dim=1, keepdim=True)
    before = step.queue.queue.clone()
    step.train(views, 1.0)
    assert int(step.queue.ptr) == 8
    torch.testing.assert_close(step.queue.queue[:8], mu, rtol=1e-5, atol=1e-6)
    assert torch.equal(step.queue.queue[8:], before[8:])


def test_the_step_scores_the_students_query_against_each_images_own_teacher_keys():
    """Loss and student gradient of one step equal JCL computed from copies of the networks:
    q from the student on view 0, the M keys of image i from the teacher on views 1..M of image
    i, the queue as it was before the step, the configured τ and the given λ."""
    torch.manual_seed(0)
    step = contrastive_step(SETTINGS, 1, torch.device("cpu"))
    step.cfg.temperature = 0.2
    m = step.cfg.views
    assert m > 1  # with one key view per image, a mix-up of images and views would not show
    views = torch.randn(1 + m, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    student, teacher = copy.deepcopy(step.student), copy.deepcopy(step.teacher)
    negatives = step.queue.negatives().clone()
    q = student(views[0])
    with torch.no_grad():  # one teacher batch of all M·B key views (its BN statistics)
        flat = teacher(views[1:].flatten(0, 1))  # rows j·B .. j·B + B - 1: key view j
    keys = torch.stack([flat[j * 8 : (j + 1) * 8] for j in range(m)], dim=1)  # (B, M, D)
    expected = jcl_loss(q, keys, negatives, temperature=0.2, lam=0.7)
    expected.backward()
    loss = step.train(views, 0.7)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), ref in zip(step.student.named_parameters(), student.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_shuffled_bn_draws_a_new_permutation_every_step(monkeypatch):
    import s2mts2.engine.pretrain as pretrain_mod

    calls = spy(monkeypatch, pretrain_mod, "shuffled_forward")
    step = contrastive_step(SETTINGS, 1, torch.device("cpu"))
    step.shuffle_bn, step.seed = True, 5
    views = torch.randn(
        1 + step.cfg.views, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3)
    )
    step.train(views, 1.0)
    step.train(views, 1.0)
    assert [args[2] for args, _ in calls] == [
        5 * 1_000_003,
        5 * 1_000_003 + 1,
    ]  # (seed, teacher updates so far)
