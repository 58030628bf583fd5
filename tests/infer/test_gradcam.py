import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from spies import spy
from torch import nn

import s2mts2.infer.predict as predict_mod
from s2mts2.config import ModelConfig
from s2mts2.data.imageio import read_image
from s2mts2.engine.builders import classifier_network
from s2mts2.errors import ConfigError
from s2mts2.infer.gradcam import (
    MIN_LABELLED_SIDE,
    grad_cam,
    labelled_overlay,
    overlay,
    resize_cam,
    select_cam_layer,
)
from s2mts2.infer.predict import run_predict
from s2mts2.models.heads import Network

from .conftest import GREY_CLASSES


def tiny_network(conv: nn.Conv2d, head: nn.Linear) -> Network:
    """conv -> ReLU -> global average pool -> linear head; Grad-CAM is taken at the conv output."""
    backbone = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Network(backbone, head).eval()


def test_cam_math_matches_a_manual_computation():
    torch.manual_seed(0)
    conv, head = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4, 3)
    net = tiny_network(conv, head)
    x = torch.randn(2, 2, 5, 6)
    result = grad_cam(net, x, lambda logits: logits.topk(2, dim=1).indices, layer=conv)

    with torch.no_grad():
        a = conv(x)  # (B, F, h, w)
        logits = head(torch.relu(a).mean(dim=(2, 3)))
    h, w = a.shape[2:]
    assert torch.allclose(result.logits, logits, atol=1e-6)
    assert result.maps.shape == (2, 2, h, w)
    for b in range(2):
        order = np.argsort(-logits[b].numpy())[:2]
        assert result.targets[b].tolist() == order.tolist()
        for t, c in enumerate(order):
            # dy_c / dA_k[i, j] = W[c, k] * 1[A_k[i, j] > 0] / (h w)
            grad = head.weight[c].detach()[:, None, None] * (a[b] > 0).float() / (h * w)
            alpha = grad.mean(dim=(1, 2))  # spatial mean of the gradients, (F,)
            expected = torch.relu((alpha[:, None, None] * a[b]).sum(dim=0))
            assert torch.allclose(result.maps[b, t], expected, atol=1e-6)


def test_cam_follows_the_evidence_of_the_chosen_class():
    # channel 0 responds to bright pixels, channel 1 to dark ones; class 0 = bright, 1 = dark
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        head.weight.copy_(torch.eye(2))
    net = tiny_network(conv, head)
    x = -torch.ones(1, 1, 8, 8)
    x[..., 1:3, 5:7] = 2.0  # a bright square on a dark background
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[1:3, 5:7] = True
    result = grad_cam(net, x, lambda logits: torch.tensor([[0, 1]]), layer=conv)
    bright, dark = result.maps[0]
    assert bright.std() > 0 and dark.std() > 0  # not constant
    assert torch.all(bright[square] > 0) and torch.all(bright[~square] == 0)
    assert torch.all(dark[square] == 0) and torch.all(dark[~square] > 0)


def map_shapes(net: Network, size: int) -> dict[str, tuple[int, int]]:
    """Brute force: the (h, w) of every stage's output, read off the module tree."""
    shapes = {}
    names = ("layer1", "layer2", "layer3", "layer4", "denseblock1", "denseblock2", "denseblock3")
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:])))
        for n, m in net.backbone.named_modules()
        if n.split(".")[-1] in (*names, "norm5")
    ]
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    for h in hooks:
        h.remove()
    return {n.split(".")[-1]: s for n, s in shapes.items()}


# the deepest stage whose map is at least 7x7 (densenet121 at 32 px is slow on a CPU: batch 1)
@pytest.mark.parametrize(
    ("backbone", "size", "layer", "grid"),
    [
        ("resnet18", 32, "layer1", 8),  # layer4 would be 1x1
        ("resnet18", 224, "layer4", 7),
        ("resnet18_small", 32, "layer3", 8),
        ("densenet121", 32, "denseblock1", 8),
    ],
)
def test_default_layer_is_the_deepest_with_a_7x7_map(backbone, size, layer, grid):
    torch.manual_seed(0)
    net = classifier_network(ModelConfig(backbone=backbone), 1, 3).eval()
    chosen = select_cam_layer(net, 1, size)
    shapes = map_shapes(net, size)
    assert chosen.sides == {name: shapes[name][0] for name in chosen.sides}
    deeper = list(chosen.sides)[list(chosen.sides).index(layer) + 1 :]
    assert chosen.name == layer and all(shapes[n][0] < 7 for n in deeper)
    assert chosen.warning() is None
    x = torch.randn(1, 1, size, size)
    result = grad_cam(net, x, lambda logits: logits.argmax(dim=1, keepdim=True))
    assert result.maps.shape == (1, 1, grid, grid)
    assert torch.all(result.maps >= 0)
    with torch.no_grad():
        assert torch.allclose(result.logits, net(x), atol=1e-5)


def test_a_chosen_layer_a_coarse_map_warning_and_an_unknown_name():
    net = classifier_network(ModelConfig(backbone="resnet18"), 1, 3).eval()
    last = select_cam_layer(net, 1, 32, "layer4")
    assert (last.name, last.side) == ("layer4", 1)
    assert last.warning() == (
        "Grad-CAM at layer4 (1x1 map at 32 px): coarser than 7x7, every overlay is one flat "
        "tint; --cam-layer layer1 (8x8), layer2 (4x4), layer3 (2x2) gives a finer map"
    )
    assert "a blur of 2x2 cells" in select_cam_layer(net, 1, 32, "layer3").warning()
    tiny = select_cam_layer(net, 1, 16)  # no stage reaches 7x7: the finest, warned
    assert (tiny.name, tiny.side) == ("layer1", 4)
    assert "a model trained at a larger image size" in tiny.warning()
    with pytest.raises(ConfigError, match="--cam-layer: 'norm5' is not a layer .* layer1, layer2"):
        select_cam_layer(net, 1, 32, "norm5")


def test_the_default_overlay_shows_structure_where_the_last_stage_is_one_flat_tint():
    """resnet18 at 32 px: layer4's 1x1 map tints the whole image alike; the default layer's
    map varies over the image."""
    torch.manual_seed(0)
    net = classifier_network(ModelConfig(backbone="resnet18"), 1, 3).eval()
    x = torch.randn(1, 1, 32, 32)
    image = np.full((32, 32, 1), 128, dtype=np.uint8)
    top = lambda logits: logits.argmax(dim=1, keepdim=True)  # noqa: E731
    flat = grad_cam(net, x, top, select_cam_layer(net, 1, 32, "layer4").module).maps[0, 0]
    fine = grad_cam(net, x, top).maps[0, 0]
    assert len(np.unique(overlay(image, flat.numpy()).reshape(-1, 3), axis=0)) == 1
    assert len(np.unique(overlay(image, fine.numpy()).reshape(-1, 3), axis=0)) > 20


def test_resize_cam_is_bilinear_divided_by_its_peak():
    cam = np.array([[0.0, 1.0, 0.5], [2.0, 4.0, 3.0]], dtype=np.float32) * 0.1
    heat = resize_cam(cam, 7, 9)
    # PIL's bilinear resize of a float image: pixel centres as in align_corners=False
    up = np.asarray(Image.fromarray(cam, mode="F").resize((9, 7), Image.BILINEAR))
    np.testing.assert_allclose(heat, up / up.max(), atol=1e-6)
    assert heat.shape == (7, 9) and heat.max() == pytest.approx(1.0, abs=1e-6)
    assert np.all(resize_cam(np.zeros((2, 2)), 3, 3) == 0)


def test_overlay_blends_45_percent_heat_and_keeps_the_orientation():
    grey = np.full((20, 30, 1), 100, dtype=np.uint8)
    cold = overlay(grey, np.zeros((2, 3), np.float32))
    jet0 = np.asarray(matplotlib.colormaps["jet"](0.0)[:3])
    expected = np.rint((0.55 * 100 / 255 + 0.45 * jet0) * 255).astype(np.uint8)
    assert cold.shape == (20, 30, 3) and cold.dtype == np.uint8 and (cold == expected).all()
    cam = np.zeros((2, 3), np.float32)
    cam[0, 2] = 1.0  # hot top-right corner
    out = overlay(grey, cam).astype(int)
    assert (
        out[0, -1, 0] > out[0, -1, 2] and out[-1, 0, 2] > out[-1, 0, 0]
    )  # red there, blue opposite


def test_labelled_overlay_is_the_overlay_under_a_band_holding_the_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    cam = rng.random((8, 8)).astype(np.float32)
    out = labelled_overlay(image, cam, "MEL  p = 0.812  (layer1)")
    band = out.shape[0] - 300
    assert out.shape[1:] == (400, 3) and 15 < band < 60
    np.testing.assert_array_equal(out[band:], overlay(image, cam))
    assert (out[:band] < 128).any() and (out[:band] == 255).mean() > 0.7  # dark text on white
    blank = labelled_overlay(image, cam, "")
    assert (blank[:band] == 255).all()
    # a small image is enlarged by a whole factor, its pixels kept as blocks
    small = rng.integers(0, 256, (40, 30, 1), dtype=np.uint8)
    big = labelled_overlay(small, cam, "Effusion  p = 0.5")
    factor = -(-MIN_LABELLED_SIDE // 40)
    assert big.shape[1] == 30 * factor and big.shape[0] > 40 * factor
    enlarged = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    np.testing.assert_array_equal(big[-40 * factor :], overlay(enlarged, cam))


def test_predict_writes_labelled_overlays_of_the_input_size(
    shared_data, grey_ckpt, tmp_path, monkeypatch
):
    images = sorted((shared_data / "real_samples").iterdir())
    cams = tmp_path / "cams"
    out = tmp_path / "r.json"
    saved = spy(monkeypatch, predict_mod, "save_overlay")
    result = run_predict(
        grey_ckpt,
        images,
        out=out,
        cam_dir=cams,
        cam_classes=["nodule", "normal"],
        progress=False,
    )
    assert "8 Grad-CAM overlay(s)" in result.summary()
    doc = json.loads(out.read_text())
    for row in doc["predictions"]:
        height, width = read_image(row["path"], 1).shape[:2]
        assert [Path(c).name for c in row["cams"]] == [
            f"{Path(row['path']).name.removesuffix(Path(row['path']).suffix)}_{c}.png"
            for c in ("nodule", "normal")
        ]
        for cam in row["cams"]:
            with Image.open(cam) as img:  # the image, under a band holding its label
                assert img.size[0] == width and height < img.size[1] < height * 1.2
                assert img.mode == "RGB"
    # each label: the class, its probability (as in the results), the layer, and whether the
    # map is empty (zero everywhere: no positive evidence, a flat overlay)
    expected = [
        f"{c}  p = {row['probabilities'][c]:.3f}  (layer3"
        for row in doc["predictions"]
        for c in ("nodule", "normal")
    ]
    for (args, _), start in zip(saved, expected, strict=True):
        empty = "" if args[2].max() > 0 else ", no positive evidence"
        assert args[3] == f"{start}{empty})"
    # the top class by default; probabilities are the same as without Grad-CAM
    top = run_predict(grey_ckpt, images[:1], out=tmp_path / "t.json", cam_dir=cams, progress=False)
    for pred, row in zip(top.predictions, doc["predictions"]):
        assert pred.path == row["path"]
        np.testing.assert_allclose(
            pred.probabilities, list(row["probabilities"].values()), atol=1e-6
        )
        top_class = GREY_CLASSES[int(np.argmax(pred.probabilities))]
        assert len(pred.cams) == 1 and pred.cams[0].endswith(f"_{top_class}.png")
