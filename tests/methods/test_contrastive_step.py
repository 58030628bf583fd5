"""The stage-1 step against a direct computation: its loss and gradient, and what the negative
queue receives (docs/method.md: the μ of a batch)."""

import copy
import dataclasses

import pytest
import torch
from spies import spy
from step_settings import SETTINGS, with_runner

from s2mts2.bench import contrastive_step
from s2mts2.losses.jcl import jcl_loss
from s2mts2.runtime.split_bn import set_bn_groups


@pytest.mark.parametrize("entries", ["mean", "normalised_mean"])
def test_the_queue_receives_each_images_mean_key(entries):
    torch.manual_seed(0)
    step = with_runner(contrastive_step(SETTINGS, 1, torch.device("cpu")), bn_groups=1)
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
    step.train(views, 1.0, torch.arange(100, 108))
    assert int(step.queue.ptr) == 8
    torch.testing.assert_close(step.queue.queue[:8], mu, rtol=1e-5, atol=1e-6)
    assert torch.equal(step.queue.queue[8:], before[8:])
    assert step.queue.ids[:8].tolist() == list(range(100, 108))


def _grouped(net, x: torch.Tensor, group_of: list[int], groups: int) -> torch.Tensor:
    """net (training mode: BN batch statistics) on each group of the rows of x alone."""
    out = [None] * len(x)
    for g in range(groups):
        rows = [r for r in range(len(x)) if group_of[r] == g]
        for r, y in zip(rows, net(x[rows])):
            out[r] = y
    return torch.stack(out)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_the_step_scores_the_students_query_against_each_images_own_teacher_keys(groups):
    """Loss and student gradient of one step equal JCL computed from copies of the networks:
    q from the student on view 0, the M keys of image i from the teacher on views 1..M of image
    i, the queue as it was before the step less the entries of the query's own image, the
    configured τ and the given λ. With split batch norm (G groups) query i is normalised with
    the images i' ≡ i (mod G), and key view m of image i with the key views that the documented
    rule, (i mod G + i // G + m + 1) mod G, sends to the same group."""
    torch.manual_seed(0)
    step = with_runner(contrastive_step(SETTINGS, 1, torch.device("cpu")), bn_groups=groups)
    step.cfg.temperature = 0.2
    m, b = step.cfg.views, 8
    assert m > 1  # with one key view per image, a mix-up of images and views would not show
    views = torch.randn(1 + m, b, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = torch.arange(50, 50 + b)
    step.queue.ids[:5] = torch.tensor([52, 57, 3, 52, 9])  # stale entries of images 52 and 57
    student, teacher = copy.deepcopy(step.student), copy.deepcopy(step.teacher)
    for net in (student, teacher):
        set_bn_groups(net, 1)  # plain batch norm, run on each group alone
    negatives = step.queue.negatives().clone()
    q = _grouped(student, views[0], [i % groups for i in range(b)], groups)
    key_group = [(i % groups + i // groups + j + 1) % groups for j in range(m) for i in range(b)]
    with torch.no_grad():
        flat = _grouped(teacher, views[1:].flatten(0, 1), key_group, groups)  # row j·B + i
    keys = torch.stack([flat[j * b : (j + 1) * b] for j in range(m)], dim=1)  # (B, M, D)
    exclude = torch.zeros(b, len(negatives), dtype=torch.bool)
    exclude[2, 0] = exclude[2, 3] = exclude[7, 1] = True
    expected = jcl_loss(q, keys, negatives, temperature=0.2, lam=0.7, exclude=exclude)
    expected.backward()
    loss = step.train(views, 0.7, ids)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), ref in zip(step.student.named_parameters(), student.parameters()):
        scale = ref.grad.abs().max().item()  # float32 sums in another order: relative to it
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


def test_own_keys_are_negatives_only_when_asked():
    torch.manual_seed(0)
    step = contrastive_step(SETTINGS, 1, torch.device("cpu"))
    views = torch.randn(1 + step.cfg.views, 8, 1, 32, 32)
    step.queue.ids[:8] = torch.arange(8)
    kept = dataclasses.replace(copy.deepcopy(step), exclude_own_keys=False)
    assert step.train(views, 0.5, torch.arange(8)) < kept.train(views, 0.5, torch.arange(8))


def test_shuffled_bn_draws_a_new_permutation_every_step(monkeypatch):
    import s2mts2.runtime.runner as runner_mod

    calls = spy(monkeypatch, runner_mod, "shuffled_forward")
    step = contrastive_step(SETTINGS, 1, torch.device("cpu"))
    step = with_runner(step, shuffle_bn=True, seed=5, bn_groups=1)
    views = torch.randn(
        1 + step.cfg.views, 8, 1, 32, 32, generator=torch.Generator().manual_seed(3)
    )
    step.train(views, 1.0)
    step.train(views, 1.0)
    assert [args[2] for args, _ in calls] == [
        5 * 1_000_003,
        5 * 1_000_003 + 1,
    ]  # (seed, teacher updates so far)
