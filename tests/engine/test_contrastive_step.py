"""The stage-1 step's bookkeeping: what the negative queue receives (METHOD.md: the μ of a batch)."""

import copy

import pytest
import torch
from step_settings import SETTINGS

from s2mts2.engine.bench import contrastive_step


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
