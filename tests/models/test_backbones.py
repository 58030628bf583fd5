"""Backbones: shapes, grey-scale folding of ImageNet weights, offline weight loading."""

import re

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

from s2mts2.errors import ConfigError
from s2mts2.models.backbones import (
    BACKBONE_NAMES,
    build_backbone,
    cam_layers,
    feature_dim,
    imagenet_weights_path,
    input_channels,
)

DIMS = {"densenet121": 1024, "resnet18": 512, "resnet18_small": 512, "resnet50": 2048}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_forward_shapes(name, in_channels):
    model, dim = build_backbone(name, in_channels=in_channels)
    assert dim == DIMS[name] == feature_dim(name)
    assert input_channels(model) == in_channels
    model.eval()
    with torch.no_grad():
        for size in (32, 64) if name == "resnet18_small" else (32,):
            assert model(torch.randn(2, in_channels, size, size)).shape == (2, dim)


def _last_map_size(name: str) -> int:
    model, _ = build_backbone(name)
    maps = []
    list(cam_layers(model).values())[-1].register_forward_hook(lambda m, i, o: maps.append(o.shape))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    return maps[0][-1]


def test_small_stem_keeps_resolution():
    assert _last_map_size("resnet18") == 1
    assert _last_map_size("resnet18_small") == 4
    model, _ = build_backbone("resnet18_small")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory) -> tuple[dict, object]:
    """A random torchvision resnet18 state_dict and the .pth file holding it."""
    torch.manual_seed(1)
    state = tvm.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(state, path)
    return state, path


def _old_densenet_keys(state: dict) -> dict:
    """Rename keys as in torchvision's original DenseNet files (norm1 -> norm.1)."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {pattern.sub(r"\1.\2.", k): v for k, v in state.items()}


def test_grey_folding_equals_replicated_input(tmp_path):
    torch.manual_seed(0)
    full = tvm.resnet18()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in full.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "weights.pth"
    torch.save(full.state_dict(), path)
    rgb, _ = build_backbone("resnet18", in_channels=3, init="imagenet", weights=path)
    grey, _ = build_backbone("resnet18", in_channels=1, init="imagenet", weights=path)
    assert torch.allclose(grey.conv1.weight, full.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            grey.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5
        )


def test_densenet_loads_old_torchvision_keys_into_grey_model(tmp_path):
    torch.manual_seed(0)
    state = tvm.densenet121().state_dict()
    old = _old_densenet_keys(state)
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet.pth")
    grey, _ = build_backbone(
        "densenet121", in_channels=1, init="imagenet", weights=tmp_path / "densenet.pth"
    )
    loaded = grey.state_dict()
    key = "features.denseblock4.denselayer16.norm2.running_var"
    assert torch.equal(loaded[key], state[key])
    folded = state["features.conv0.weight"].sum(1, keepdim=True)
    assert torch.allclose(loaded["features.conv0.weight"], folded)


def test_imagenet_without_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", init="imagenet")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "checkpoints") in message and "model.weights" in message
    assert "not available offline" in message and "model.init: random" in message


def test_imagenet_from_hub_cache_and_safetensors(tmp_path, monkeypatch, resnet18_state):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    state = resnet18_state[0]
    path = imagenet_weights_path("resnet18")
    assert path.parent == tmp_path / "checkpoints"
    path.parent.mkdir()
    torch.save(state, path)
    model, _ = build_backbone("resnet18", init="imagenet")
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert not hasattr(model.fc, "weight")
    safe = tmp_path / "w.safetensors"
    save_file(state, str(safe))
    model, _ = build_backbone("resnet18", init="imagenet", weights=safe)
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])


def test_small_stem_loads_all_but_the_stem(resnet18_state):
    state, path = resnet18_state
    model, _ = build_backbone("resnet18_small", in_channels=1, init="imagenet", weights=path)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.conv1.weight.shape == (64, 1, 3, 3)


def test_errors(tmp_path, resnet18_state):
    path = resnet18_state[1]
    with pytest.raises(ConfigError, match="densenet121, resnet18, resnet18_small, resnet50"):
        build_backbone("vgg16")
    with pytest.raises(ConfigError, match="does not match backbone 'resnet50'"):
        build_backbone("resnet50", init="imagenet", weights=path)
    with pytest.raises(ConfigError, match="in_channels"):
        build_backbone("resnet18", in_channels=2, init="imagenet", weights=path)
    with pytest.raises(ConfigError, match="not found"):
        build_backbone("resnet18", init="imagenet", weights=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="model.init"):
        build_backbone("resnet18", init="scratch")
    state = resnet18_state[0]
    variants = {
        "extra.pth": (state | {"extra.weight": torch.zeros(1)}, r"unexpected \['extra.weight'\]"),
        "shape.pth": (state | {"bn1.weight": torch.ones(3)}, r"wrong shapes.*bn1.weight \(3,\)"),
        "mixed.pth": ({"conv1.weight": torch.zeros(1), "note": 1}, "not a plain state_dict"),
    }
    for name, (bad, message) in variants.items():
        torch.save(bad, tmp_path / name)
        with pytest.raises(ConfigError, match=message):
            build_backbone("resnet18", init="imagenet", weights=tmp_path / name)
    # files that are no weights at all: the option and the file named, no traceback
    (tmp_path / "labels.pth").write_text("path,label\na.png,0\n")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00")
    unreadable = {"labels.pth": "not a PyTorch checkpoint", "cut.safetensors": "not a readable"}
    for name, message in unreadable.items():
        with pytest.raises(ConfigError, match=f"model.weights: {tmp_path / name}: {message}"):
            build_backbone("resnet18", init="imagenet", weights=tmp_path / name)
