"""Torchvision feature extractors: image (B, C, H, W) -> globally average-pooled features (B, F).

ImageNet weights are read from a local file only (no network): either the ``model.weights`` path
or torchvision's own file in the torch hub cache (``torch.hub.get_dir()/checkpoints``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torchvision.models as tvm
from torch import nn

from s2mts2.errors import ConfigError, DataError
from s2mts2.files import read_torch_file

Init = Literal["random", "imagenet"]


class DenseNetFeatures(nn.Module):
    """DenseNet ``features`` followed by ReLU and global average pooling: (B, C, H, W) -> (B, F).

    Keeps torchvision's ``features.*`` parameter names, so torchvision state_dicts load directly.
    The ReLU is not in-place, so hooks on ``features`` (Grad-CAM) see the unmodified map.
    """

    def __init__(self, densenet: tvm.DenseNet) -> None:
        super().__init__()
        self.features = densenet.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(maps), 1), 1)


def _small_stem(model: tvm.ResNet) -> tvm.ResNet:
    """CIFAR-style stem for 32-64 px inputs: 3x3 stride-1 first conv and no max-pool."""
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# name -> (constructor of the full torchvision model, ImageNet weights enum, feature dim F,
#          name of the first conv in the full model's state_dict)
_SPECS: dict[str, tuple[Callable[[], nn.Module], tvm.WeightsEnum, int, str]] = {
    "densenet121": (tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1, 1024, "features.conv0"),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512, "conv1"),
    "resnet18_small": (
        lambda: _small_stem(tvm.resnet18()),
        tvm.ResNet18_Weights.IMAGENET1K_V1,
        512,
        "conv1",
    ),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, 2048, "conv1"),
}

BACKBONE_NAMES: tuple[str, ...] = tuple(_SPECS)

# Old torchvision DenseNet files name BatchNorm/conv layers "norm.1" instead of "norm1".
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _spec(name: str) -> tuple[Callable[[], nn.Module], tvm.WeightsEnum, int, str]:
    if name not in _SPECS:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; valid: {', '.join(_SPECS)}")
    return _SPECS[name]


def feature_dim(name: str) -> int:
    """Feature dimension F of backbone ``name`` (e.g. 1024 for densenet121)."""
    return _spec(name)[2]


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's ImageNet file for ``name`` lies in the torch hub cache."""
    url = _spec(name)[1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"model.weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise ConfigError(f"model.weights: {path}: not a readable safetensors file: {e}") from e
    try:
        state = read_torch_file(path)
    except DataError as e:
        raise ConfigError(f"model.weights: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights: {path} is not a plain state_dict (name -> tensor)")
    return state


def _imagenet_state_dict(name: str, weights: str | Path | None) -> dict[str, torch.Tensor]:
    if weights is not None:
        return _read_state_dict(Path(weights))
    path = imagenet_weights_path(name)
    if not path.is_file():
        raise ConfigError(
            f"ImageNet weights for backbone {name!r} are not available offline: put torchvision's "
            f"file {path.name} (from {_spec(name)[1].url}) in {path.parent}, or set model.weights "
            f"to a local .pth/.safetensors state_dict, or use model.init: random"
        )
    return _read_state_dict(path)


def _replace_first_conv(model: nn.Module, conv_name: str, in_channels: int) -> None:
    """Swap the first conv for one with ``in_channels`` inputs (same kernel, stride, padding)."""
    parent_name, _, attr = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Conv2d = getattr(parent, attr)
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, attr, new)


_CLASSIFIER = ("fc.", "classifier.")


def _compared(key: str) -> bool:
    """Keys a weights file must match: not the classifier, and not BatchNorm's
    num_batches_tracked (absent from old files; load_state_dict fills it in)."""
    return not key.startswith(_CLASSIFIER) and not key.endswith("num_batches_tracked")


def _load_imagenet(
    model: nn.Module, name: str, state: dict[str, torch.Tensor], conv_name: str, source: str
) -> None:
    """Load a torchvision state_dict into the full model (its classifier is discarded later).

    A 1-channel first conv gets the sum of the RGB kernels: conv(grey, ΣW_c) == conv([grey]*3, W).
    ``resnet18_small`` keeps its random 3x3 stem (ImageNet's 7x7 stem does not fit it).
    """
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    conv_key = f"{conv_name}.weight"
    target = model.state_dict()
    if conv_key in state and name == "resnet18_small":
        del state[conv_key]
    elif conv_key in state and target[conv_key].shape[1] == 1 and state[conv_key].shape[1] == 3:
        state[conv_key] = state[conv_key].sum(dim=1, keepdim=True)
    wanted = {k for k in target if _compared(k)}
    if name == "resnet18_small":
        wanted.discard(conv_key)
    given = {k for k in state if _compared(k)}
    if wanted != given:
        missing, extra = sorted(wanted - given), sorted(given - wanted)
        raise ConfigError(
            f"model.weights: {source} does not match backbone {name!r}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    bad = [k for k in given if state[k].shape != target[k].shape]
    if bad:
        raise ConfigError(
            f"model.weights: {source} has wrong shapes for backbone {name!r}: "
            + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in bad[:5])
        )
    keep = {k: v for k, v in state.items() if k in target and not k.startswith(_CLASSIFIER)}
    model.load_state_dict(keep, strict=False)


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    init: Init = "random",
    weights: str | Path | None = None,
) -> tuple[nn.Module, int]:
    """Build a pooled feature extractor: (B, in_channels, H, W) -> (B, F).

    Args:
        name: one of ``BACKBONE_NAMES``: ``densenet121`` (F=1024), ``resnet18`` (512),
            ``resnet18_small`` (512; 3x3 stride-1 stem, no max-pool, for 32-64 px inputs),
            ``resnet50`` (2048).
        in_channels: input channels; 1 for grey-scale images (the first conv takes 1 channel).
        init: ``random`` or ``imagenet`` (torchvision's IMAGENET1K_V1 weights, read from
            ``weights`` or from the torch hub cache; never downloaded).
        weights: local .pth / .safetensors torchvision state_dict for ``init="imagenet"``.

    Returns:
        (module, F). The module's parameter names are torchvision's without the classifier.

    Raises:
        ConfigError: unknown name, ImageNet file absent or not matching, bad in_channels.
    """
    build, _, dim, conv_name = _spec(name)
    if init not in ("random", "imagenet"):
        raise ConfigError(f"model.init: expected 'random' or 'imagenet', got {init!r}")
    if in_channels < 1 or (init == "imagenet" and in_channels not in (1, 3)):
        raise ConfigError(
            f"model.in_channels: {in_channels} is not supported with init={init!r} "
            "(ImageNet weights need 1 or 3 channels)"
        )
    model = build()
    if in_channels != 3:
        _replace_first_conv(model, conv_name, in_channels)
    if init == "imagenet":
        source = str(weights) if weights is not None else str(imagenet_weights_path(name))
        _load_imagenet(model, name, _imagenet_state_dict(name, weights), conv_name, source)
    if isinstance(model, tvm.DenseNet):
        return DenseNetFeatures(model), dim
    model.fc = nn.Identity()
    return model, dim


def input_channels(backbone: nn.Module) -> int:
    """Number of input channels the backbone's first convolution expects."""
    first = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def cam_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """The Grad-CAM candidate layers, shallow to deep, by name: the output of each stage.

    ResNet: ``layer1`` .. ``layer4`` (maps of 1/4 .. 1/32 of the input side; ``resnet18_small``
    1 .. 1/8). DenseNet: ``denseblock1`` .. ``denseblock3`` (1/4 .. 1/16) and ``norm5``, the last
    map (1/32, the input of the global pooling).
    """
    if isinstance(backbone, DenseNetFeatures):
        f = backbone.features
        return {
            "denseblock1": f.denseblock1,
            "denseblock2": f.denseblock2,
            "denseblock3": f.denseblock3,
            "norm5": f.norm5,
        }
    if isinstance(backbone, tvm.ResNet):
        return {name: getattr(backbone, name) for name in ("layer1", "layer2", "layer3", "layer4")}
    raise TypeError(f"no Grad-CAM layers known for {type(backbone).__name__}")
