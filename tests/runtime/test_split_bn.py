"""Split batch norm against BatchNorm run on each group alone; the key regrouping's invariant."""

import copy
import math

import pytest
import torch
from toolchain import compiles
from torch import nn

from s2mts2.runtime.split_bn import (
    SplitBatchNorm2d,
    default_bn_groups,
    key_group_order,
    set_bn_groups,
    split_batchnorm,
)


def _layers(groups: int, momentum: float | None = 0.1) -> tuple[nn.BatchNorm2d, SplitBatchNorm2d]:
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
        plain.running_mean.uniform_(-1, 1)
        plain.running_var.uniform_(0.5, 2)
    split = split_batchnorm(copy.deepcopy(plain))
    set_bn_groups(split, groups)
    return plain, split


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("groups", "momentum"), [(2, 0.1), (4, 0.1), (4, None)])
def test_each_group_is_normalised_as_if_run_alone(groups, momentum, channels_last):
    """Output and input gradient equal BatchNorm2d on each strided group {n : n mod G = g} alone;
    the running statistics move to the mean of the G single-group updates; one batch counted."""
    plain, split = _layers(groups, momentum)
    x = torch.randn(8, 3, 5, 4, dtype=torch.float64) * 2 + 1
    plain, split = plain.double(), split.double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = split(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    weights = torch.randn_like(y)
    (y * weights).sum().backward()

    expected = torch.empty_like(y)
    grad = torch.empty_like(x)
    means, variances = [], []
    for g in range(groups):
        alone = copy.deepcopy(plain)
        part = x.detach()[g::groups].clone().requires_grad_()
        out = alone(part)
        (out * weights[g::groups]).sum().backward()
        expected[g::groups] = out.detach()
        grad[g::groups] = part.grad
        means.append(alone.running_mean)
        variances.append(alone.running_var)
    torch.testing.assert_close(y.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    assert int(split.num_batches_tracked) == 1


def test_the_whole_batch_is_not_what_a_group_sees():
    """The test above could pass for a layer ignoring the groups only if the groups' statistics
    happened to equal the batch's: they do not."""
    plain, split = _layers(2)
    x = torch.randn(8, 3, 5, 4)
    x[::2] += 3.0  # group 0 shifted
    assert not torch.allclose(split(x), plain(x), atol=1e-3)


def test_evaluation_mode_and_one_group_are_plain_batch_norm():
    plain, split = _layers(4)
    x = torch.randn(8, 3, 5, 4)
    plain.eval(), split.eval()
    torch.testing.assert_close(split(x), plain(x), rtol=0, atol=0)
    plain.train(), split.train()
    set_bn_groups(split, 1)
    torch.testing.assert_close(split(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(split.running_mean, plain.running_mean, rtol=0, atol=0)


def test_bf16_autocast_matches_the_groups_alone():
    plain, split = _layers(2)
    x = torch.randn(8, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 3, 1).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = split(conv(x))
        want = torch.empty_like(got)
        for g in range(2):
            want[g::2] = copy.deepcopy(plain)(conv(x[g::2]))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_conversion_keeps_the_state_dict_and_refuses_uneven_batches():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    keys = list(net.state_dict())
    split_batchnorm(net)
    assert list(net.state_dict()) == keys
    assert all(type(m) is SplitBatchNorm2d for m in (net[1], net[3]))
    set_bn_groups(net, 3)
    with pytest.raises(ValueError, match="does not split into 3 groups"):
        net(torch.randn(4, 1, 5, 5))


@pytest.mark.parametrize(
    ("batch", "groups"), [(64, 4), (128, 8), (256, 8), (48, 3), (8, 2), (12, 3), (6, 1), (7, 1)]
)
def test_default_groups(batch, groups):
    assert default_bn_groups(batch) == groups


@pytest.mark.parametrize(
    ("batch", "views", "groups"), [(64, 2, 4), (8, 2, 4), (12, 5, 3), (16, 1, 2), (6, 3, 2)]
)
def test_no_key_is_normalised_with_its_querys_companions(batch, views, groups):
    """The invariant of the regrouping, checked by brute force over every key view: teacher
    groups hold M·s key views; each takes ⌈s/G⌉ or ⌊s/G⌋ images of every query group per view
    index; so a key's group never holds exactly its query's companions."""
    order = key_group_order(batch, views, groups).tolist()
    assert sorted(order) == list(range(views * batch))  # a permutation of the key views
    s = batch // groups
    query_group = {i: i % groups for i in range(batch)}  # the student's strided groups
    teacher_group = {e: p % groups for p, e in enumerate(order)}  # key view e = m·B + i
    for h in range(groups):
        members = [e for e, t in teacher_group.items() if t == h]
        assert len(members) == views * s
        for m in range(views):
            for g in range(groups):
                from_g = [e for e in members if e // batch == m and query_group[e % batch] == g]
                assert len(from_g) in (s // groups, math.ceil(s / groups))
    for e, h in teacher_group.items():
        i = e % batch
        companions = {j for j in range(batch) if query_group[j] == query_group[i]}
        key_companions = {f % batch for f, t in teacher_group.items() if t == h}
        assert key_companions != companions


@compiles
def test_compiled_split_batch_norm_matches_eager():
    net = split_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    set_bn_groups(net, 2)
    reference = copy.deepcopy(net)
    x = torch.randn(8, 1, 9, 9)
    torch.testing.assert_close(torch.compile(net)(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_mean, reference[1].running_mean)
