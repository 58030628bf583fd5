"""Supervised loss on labelled batches, with unknown (NaN) labels masked out."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from s2mts2.task import Task

MAX_POSITIVE_WEIGHT = 100.0


def supervised_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised loss of (N, C) logits against (N, C) float targets, NaN = unknown.

    - ``multilabel``: binary cross-entropy with logits, averaged over the known entries only
      (0, still attached to the graph, when no entry is known). ``pos_weight`` (C,) scales the
      positive term per class, as in ``F.binary_cross_entropy_with_logits``.
    - ``multiclass``: cross-entropy with the class index argmax of each one-hot row; rows with
      any NaN are ignored. ``pos_weight`` is not accepted.

    Returns a scalar in float32 (float64 for float64 logits).
    """
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"logits and targets must both be (N, C), got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}"
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = targets.to(logits.dtype)
    known = ~torch.isnan(targets)
    if task == "multilabel":
        if pos_weight is not None:
            pos_weight = pos_weight.to(logits)
        per_entry = F.binary_cross_entropy_with_logits(
            logits, targets.nan_to_num(0.0), pos_weight=pos_weight, reduction="none"
        )
        return torch.where(known, per_entry, 0.0).sum() / known.sum().clamp_min(1)
    if task == "multiclass":
        if pos_weight is not None:
            raise ValueError("pos_weight applies to the multilabel task only")
        rows = known.all(dim=1).to(logits.dtype)  # masked mean: no host synchronisation
        per_row = F.cross_entropy(logits, targets.nan_to_num(0.0).argmax(dim=1), reduction="none")
        return (per_row * rows).sum() / rows.sum().clamp_min(1)
    raise ValueError(f"task must be 'multilabel' or 'multiclass', got {task!r}")


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-class BCE positive weights n_neg / n_pos over the known (non-NaN) labels -> (C,).

    Clamped to [1, 100]: positives are never down-weighted, and a class with no known positive
    gets 100 (rare classes cannot blow the loss up). A class with no known label gets 1.
    Positive = label > 0.5, negative = any other known value.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    known = ~np.isnan(labels)
    positives = (known & (np.nan_to_num(labels) > 0.5)).sum(axis=0)
    negatives = known.sum(axis=0) - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = negatives / positives
    ratio = np.where(known.sum(axis=0) == 0, 1.0, ratio)
    return torch.as_tensor(np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT), dtype=torch.float32)
