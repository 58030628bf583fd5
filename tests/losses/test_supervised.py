"""Supervised loss: masking of unknown labels, positive weights, multi-class cross-entropy."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from s2mts2.losses import supervised_loss
from s2mts2.losses.supervised import positive_weights

NAN = float("nan")


def test_multilabel_masks_unknown_entries():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, NAN, 0], [NAN, NAN, 1], [0, 1, NAN]], dtype=torch.float64)
    loss = supervised_loss(logits, targets, "multilabel")
    known = ~torch.isnan(targets)
    expected = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)


def test_multilabel_nothing_known_is_zero_with_graph():
    logits = torch.randn(2, 3, requires_grad=True)
    loss = supervised_loss(logits, torch.full((2, 3), NAN), "multilabel")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_multilabel_pos_weight_matches_manual():
    torch.manual_seed(1)
    logits = torch.randn(4, 2, dtype=torch.float64)
    targets = torch.tensor([[1, 0], [0, NAN], [1, 1], [0, 0]], dtype=torch.float64)
    weight = torch.tensor([3.0, 0.5])
    total, count = 0.0, 0
    for i in range(4):
        for c in range(2):
            y, x = float(targets[i, c]), float(logits[i, c])
            if math.isnan(y):
                continue
            p = 1 / (1 + math.exp(-x))
            total += -(float(weight[c]) * y * math.log(p) + (1 - y) * math.log(1 - p))
            count += 1
    got = supervised_loss(logits, targets, "multilabel", pos_weight=weight)
    assert got.item() == pytest.approx(total / count, rel=1e-10)


def test_multiclass_is_cross_entropy_on_known_rows():
    torch.manual_seed(2)
    logits = torch.randn(5, 3)
    targets = torch.tensor(
        [[0, 1, 0], [1, 0, 0], [NAN, NAN, NAN], [0, 0, 1], [NAN, 1, 0]], dtype=torch.float32
    )  # rows 2 and 4 are not fully known: left out
    expected = F.cross_entropy(logits[[0, 1, 3]], torch.tensor([1, 0, 2]))
    assert torch.allclose(supervised_loss(logits, targets, "multiclass"), expected)
    logits = logits[:4]
    empty = supervised_loss(logits.requires_grad_(), torch.full((4, 3), NAN), "multiclass")
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="pos_weight"):
        supervised_loss(logits, targets[:4], "multiclass", pos_weight=torch.ones(3))


def test_bf16_logits_give_float32():
    loss = supervised_loss(torch.randn(2, 3).bfloat16(), torch.ones(2, 3), "multilabel")
    assert loss.dtype == torch.float32


def test_positive_weights():
    labels = np.array(
        [
            [1, 0, NAN, 1, 0],
            [0, 0, NAN, 1, 0],
            [0, 0, NAN, 1, 1],
            [0, 1, NAN, 0, NAN],
        ]
    )
    # class 0: 3 neg / 1 pos; 1: 3/1; 2: nothing known -> 1; 3: 1/3 -> clamped to 1; 4: 2/1
    assert positive_weights(labels).tolist() == [3.0, 3.0, 1.0, 1.0, 2.0]
    assert positive_weights(np.zeros((5, 1))).item() == 100.0  # no positive: capped
