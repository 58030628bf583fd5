"""Weighted k-nearest-neighbour classifier on embeddings (the stage-1 representation check)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of each query from its k most cosine-similar training samples.

    Args:
        train_feats: (N, F) features; train_labels: (N, C) 0/1 (NaN = unknown, counted as 0).
        query_feats: (Q, F).
    Returns:
        (Q, C) scores in [0, 1]: the similarity-weighted (exp(sim/T), as in InstDisc/MoCo kNN)
        mean of the neighbours' labels. Multi-label and one-hot multi-class alike.
    """
    train = F.normalize(train_feats.float(), dim=1)
    labels = torch.nan_to_num(train_labels.float(), nan=0.0)
    k = min(k, len(train))
    out = []
    for start in range(0, len(query_feats), chunk):
        q = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        w = (sim / temperature).softmax(dim=1)
        out.append(torch.einsum("qk,qkc->qc", w, labels[idx]))
    return torch.cat(out)
