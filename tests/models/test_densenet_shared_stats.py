"""DenseNet training forward with shared batch statistics == torchvision's forward.

Checked against torchvision's own training-mode BatchNorm (outputs, gradients of the input and
every parameter, running statistics) in float64, against numerical gradients, and in bf16.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from state_dicts import max_diff
from toolchain import compiles
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from s2mts2.config import load_config
from s2mts2.errors import ConfigError
from s2mts2.models import densenet_shared_stats as shared
from s2mts2.models.backbones import DenseNetFeatures, build_backbone

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _densenet(drop_rate: float = 0.0, dtype=torch.float64) -> tvm.DenseNet:
    """A small torchvision DenseNet (3 blocks, 2 transitions, norm5) with non-trivial BN affines."""
    torch.manual_seed(0)
    net = tvm.DenseNet(
        growth_rate=6, block_config=(2, 3, 2), num_init_features=8, bn_size=2, drop_rate=drop_rate
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-1, 1)
    return net.to(dtype).train()


def _forward_backward(features: nn.Module, x: torch.Tensor, fast: bool, seed: int = 1):
    """Output, input gradient and parameter gradients of a weighted sum of ``features(x)``."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # dropout draws the same masks in both forwards
    y = shared.forward_shared_stats(features, x) if fast else features(x)
    weights = torch.linspace(-1, 2, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    (y.float() * weights.float()).sum().backward()
    grads = {n: p.grad for n, p in features.named_parameters()}
    return y, x.grad, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
def test_training_forward_equals_torchvision_in_float64(drop_rate, device):
    net = _densenet(drop_rate).to(device)
    ref = copy.deepcopy(net)
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64, device=device) * 2 + 0.5
    assert shared.uses_shared_stats(net.features, x)
    y, gx, grads = _forward_backward(net.features, x, fast=True)
    y_ref, gx_ref, grads_ref = _forward_backward(ref.features, x, fast=False)
    assert y.shape == y_ref.shape
    assert (y - y_ref).abs().max() < 1e-10 * y_ref.abs().max()
    assert (gx - gx_ref).abs().max() < 1e-10 * gx_ref.abs().max()
    assert max_diff(grads, grads_ref) < 1e-10 * max(
        g.abs().max().item() for g in grads_ref.values()
    )
    # running means and variances (unbiased) and num_batches_tracked of every BatchNorm
    assert max_diff(net.state_dict(), ref.state_dict()) < 1e-12
    assert all(b.item() == 1 for k, b in net.state_dict().items() if k.endswith("tracked"))


@compiles
def test_compiles_to_one_graph_that_equals_torchvision_in_float64():
    """``compile: true`` with ``model.shared_bn_stats``: Dynamo traces the whole forward, the
    custom autograd functions and the running-statistics update included (fullgraph: a graph
    break is an error; one did break it, a ``no_grad``-decorated method)."""
    torch._dynamo.reset()
    net = _densenet()
    ref = copy.deepcopy(net)
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64) * 2 + 0.5
    compiled = torch.compile(shared.forward_shared_stats, fullgraph=True, dynamic=False)
    xg = x.clone().requires_grad_()
    y = compiled(net.features, xg)
    weights = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)
    (y.float() * weights.float()).sum().backward()
    y_ref, gx_ref, grads_ref = _forward_backward(ref.features, x, fast=False)
    assert (y - y_ref).abs().max() < 1e-10 * y_ref.abs().max()
    assert (xg.grad - gx_ref).abs().max() < 1e-6 * gx_ref.abs().max()  # fp32 loss, as above
    grads = {n: p.grad for n, p in net.features.named_parameters()}
    assert max_diff(grads, grads_ref) < 1e-6 * max(g.abs().max().item() for g in grads_ref.values())
    assert max_diff(net.state_dict(), ref.state_dict()) < 1e-12
    assert all(b.item() == 1 for k, b in net.state_dict().items() if k.endswith("tracked"))
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_forward_without_autograd_equals_torchvision_in_float64(device, layout):
    """A teacher's forward: training-mode statistics, no graph."""
    net = _densenet().to(device).to(memory_format=layout)
    ref = copy.deepcopy(net)
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64, device=device)
    x = x.contiguous(memory_format=layout)
    with torch.no_grad():
        y, y_ref = shared.forward_shared_stats(net.features, x), ref.features(x)
    assert (y - y_ref).abs().max() < 1e-10 * y_ref.abs().max()
    assert max_diff(net.state_dict(), ref.state_dict()) < 1e-12


def test_densenet121_equals_torchvision_in_float64():
    torch.manual_seed(0)
    net = tvm.densenet121().double().train()
    ref = copy.deepcopy(net)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)  # 2x2 maps in block 4: 12 values per channel
    y, gx, grads = _forward_backward(net.features, x, fast=True)
    y_ref, gx_ref, grads_ref = _forward_backward(ref.features, x, fast=False)
    assert (y - y_ref).abs().max() < 1e-9 * y_ref.abs().max()
    assert (gx - gx_ref).abs().max() < 1e-9 * gx_ref.abs().max()
    assert max_diff(grads, grads_ref) < 1e-9 * max(g.abs().max().item() for g in grads_ref.values())
    assert max_diff(net.state_dict(), ref.state_dict()) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_statistics_and_normalisation_have_the_numerical_gradient(device):
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(3, 4, 5, 5, **f64)
    weight, bias = torch.rand(4, **f64), torch.randn(4, **f64)

    def normalise(x, weight, bias):
        mean, var = shared._BatchStats.apply(x)
        return shared._NormaliseWithStats.apply(x, mean, var, weight, bias, 1e-5)

    assert torch.autograd.gradcheck(shared._BatchStats.apply, (x,))
    assert torch.autograd.gradcheck(normalise, (x, weight, bias))
    expected = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    assert torch.allclose(normalise(x, weight, bias), expected, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_statistics_of_a_constant_channel(device, dtype):
    x = torch.randn(4, 3, 2, 2, device=device).to(dtype)
    x[:, 1] = 7.0
    mean, var = shared._BatchStats.apply(x)
    assert mean.dtype == var.dtype == torch.float32  # float32 statistics of bf16 input
    assert mean[1] == 7.0 and var[1] == 0.0
    assert torch.allclose(var, x.float().var(dim=(0, 2, 3), unbiased=False))


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_keep_channels_last(device):
    """Every later gradient operation then runs in one layout."""
    x = torch.randn(4, 6, 5, 5, device=device).to(memory_format=torch.channels_last)
    x = x.to(torch.bfloat16).requires_grad_()
    weight = torch.rand(6, device=device, requires_grad=True)
    bias = torch.randn(6, device=device, requires_grad=True)
    mean, var = shared._BatchStats.apply(x)
    y = shared._NormaliseWithStats.apply(x, mean, var, weight, bias, 1e-5)
    grad = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
    (x_grad,) = torch.autograd.grad(y, x, grad)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert x_grad.dtype == torch.bfloat16
    assert x_grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_affine_keeps_dtype_and_layout(device, layout):
    """(x - center) * scale + shift in float32 arithmetic, returned in x's bf16 and layout."""
    x = torch.randn(2, 3, 4, 4, device=device).to(torch.bfloat16).contiguous(memory_format=layout)
    scale, shift, center = (
        torch.tensor(v, device=device) for v in ([1.0, -2.0, 0.5], [0.0, 1.0, -3.0], [0.5, 0, -1])
    )
    y = shared.channel_affine(x, scale, shift, center=center)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=layout)
    per_channel = (1, 3, 1, 1)
    expected = (x.float() - center.view(per_channel)) * scale.view(per_channel)
    expected = (expected + shift.view(per_channel)).to(torch.bfloat16)
    assert (y.float() - expected.float()).abs().max() <= 2**-7 * expected.float().abs().max()


def test_the_backward_kernel_gets_the_statistics():
    """CUDA's BatchNorm backward reads mean and invstd from its save_mean/save_invstd arguments
    and asserts they are given; the CPU's ignores them in inference mode, so the call is recorded
    here (the CPU kernel is correct either way)."""
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.native_batch_norm_backward.default:
                calls.append(args)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mean, var = shared._BatchStats.apply(x)
    y = shared._NormaliseWithStats.apply(x, mean, var, weight, bias, 1e-5)
    with Record():
        y.backward(torch.randn_like(y))
    (args,) = calls
    save_mean, save_invstd = args[5], args[6]
    assert isinstance(save_mean, torch.Tensor) and isinstance(save_invstd, torch.Tensor)
    assert torch.equal(save_mean, mean.detach())
    assert torch.allclose(save_invstd, torch.rsqrt(var.detach() + 1e-5))


def _relative_error(a: torch.Tensor, truth: torch.Tensor) -> float:
    return ((a.double() - truth).norm() / truth.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_channels_last_is_as_accurate_as_torchvision(device):
    """bf16 autocast, channels-last: both forwards' errors against a float64 torchvision run."""
    net = _densenet(dtype=torch.float32).to(device).to(memory_format=torch.channels_last)
    truth = copy.deepcopy(net).double()
    x = torch.randn(8, 3, 48, 48, device=device).contiguous(memory_format=torch.channels_last)
    y_t, gx_t, grads_t = _forward_backward(truth.features, x.double(), fast=False)
    stats_t = torch.cat([b.flatten() for k, b in truth.state_dict().items() if "running" in k])
    grads_t = torch.cat([g.flatten() for g in grads_t.values()])
    errors = {}
    for fast in (False, True):
        copied = copy.deepcopy(net)
        with torch.autocast(device, dtype=torch.bfloat16):
            y, gx, grads = _forward_backward(copied.features, x, fast=fast)
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        stats = torch.cat([b.flatten() for k, b in copied.state_dict().items() if "running" in k])
        errors[fast] = [
            _relative_error(y, y_t),
            _relative_error(gx, gx_t),
            _relative_error(torch.cat([g.flatten() for g in grads.values()]), grads_t),
            _relative_error(stats, stats_t),
        ]
    # bf16 itself is far from float64 here (gradients ~30 %); the shortcut adds nothing to that
    for fast_error, torchvision_error in zip(errors[True], errors[False]):
        assert fast_error <= 1.1 * torchvision_error + 1e-3, errors


def test_a_block_without_successor_returns_its_concatenation():
    net = _densenet()
    features = net.features[:5]  # conv0 norm0 relu0 pool0 denseblock1
    ref = copy.deepcopy(features)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y, y_ref = shared.forward_shared_stats(features, x), ref(x)
    assert y.shape == y_ref.shape == (2, 8 + 2 * 6, 8, 8)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert max_diff(features.state_dict(), ref.state_dict()) < 1e-12


def test_torchvision_forward_where_the_shortcut_does_not_apply():
    net = _densenet()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert shared.uses_shared_stats(net.features, x)
    assert not shared.uses_shared_stats(net.features, x[:1])  # torchvision checks 1x1 maps
    net.features.norm5.momentum = None  # cumulative average
    assert not shared.uses_shared_stats(net.features, x)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(_densenet())  # statistics across processes
    assert not shared.uses_shared_stats(sync.features, x)
    assert not shared.uses_shared_stats(_densenet().eval().features, x)
    frozen = _densenet()
    frozen.features.denseblock2.denselayer1.norm1.eval()  # a frozen BatchNorm uses running stats
    assert not shared.uses_shared_stats(frozen.features, x)
    other = _densenet()
    other.features.transition1 = nn.Identity()  # not torchvision's layout after a block
    assert not shared.uses_shared_stats(other.features, x)


def test_backbone_option_switches_the_training_forward(monkeypatch):
    calls = []
    real = shared.forward_shared_stats

    def spy(features, x):
        calls.append(x.shape)
        return real(features, x)

    monkeypatch.setattr("s2mts2.models.backbones.forward_shared_stats", spy)
    torch.manual_seed(0)
    fast, dim = build_backbone("densenet121", shared_bn_stats=True)
    torch.manual_seed(0)
    plain, _ = build_backbone("densenet121")
    assert isinstance(fast, DenseNetFeatures) and fast.shared_bn_stats and dim == 1024
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(fast(x), plain(x), atol=1e-4)
    assert calls == [x.shape]
    fast.eval(), plain.eval()
    assert torch.allclose(fast(x), plain(x), atol=1e-4)  # running statistics of the forward above
    assert calls == [x.shape]  # evaluation: torchvision's forward


def test_the_option_is_for_densenets_only():
    with pytest.raises(ConfigError, match="model.shared_bn_stats.*resnet18"):
        build_backbone("resnet18", shared_bn_stats=True)
    assert load_config("tiny", ["model.shared_bn_stats=true"]).model.shared_bn_stats


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_synchronisation_on_cuda():
    net = _densenet(dtype=torch.float32).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 48, 48, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # warm-up of the checked step's kernels
        _forward_backward(net.features, x, fast=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = shared.forward_shared_stats(net.features, x)
        y.float().square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
