"""Contrastive losses against a queue of negatives: MoCo's InfoNCE and JCL (Cai et al. 2020).

All embeddings are L2-normalised. Keys and negatives are constants: gradients reach ``q`` only.
``exclude`` (N, K) bool, optional, removes negative j from query i's sum (a false negative such as
an earlier key of the query's own image): the loss is then the loss over the other negatives.
Computation runs in at least float32, also inside an autocast region (bf16/fp16 inputs are
upcast and autocast is switched off here); the result is a scalar in that dtype (float32, or
float64 for float64 inputs).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def _nce(
    positive: torch.Tensor,
    q: torch.Tensor,
    negatives: torch.Tensor,
    tau: float,
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """mean_i −log(exp(p_i) / (exp(p_i) + Σ_{j not excluded} exp(q_iᵀn_j/τ))), p (N,)."""
    if negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"negatives must be (K, {q.shape[1]}), got {tuple(negatives.shape)}")
    with torch.autocast(q.device.type, enabled=False):
        negative = q @ negatives.detach().to(q.dtype).T / tau
    if exclude is not None:
        if exclude.shape != negative.shape:
            raise ValueError(f"exclude must be {tuple(negative.shape)}, got {tuple(exclude.shape)}")
        negative = negative.masked_fill(exclude, float("-inf"))
    logits = torch.cat([positive[:, None], negative], dim=1)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def infonce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo InfoNCE with one positive per query.

    Args:
        q: (N, D) queries (student).
        k: (N, D) positive keys (teacher), treated as constants.
        negatives: (K, D) queue entries, treated as constants.
        temperature: τ.
        exclude: (N, K) bool, negatives left out of query i's sum (None: none).

    Returns:
        Scalar: mean_i −log(exp(q_iᵀk_i/τ) / (exp(q_iᵀk_i/τ) + Σ_j exp(q_iᵀn_j/τ))).
    """
    if q.ndim != 2 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (N, D), got {tuple(q.shape)}, {tuple(k.shape)}")
    q = q.to(_compute_dtype(q))
    positive = (q * k.detach().to(q.dtype)).sum(dim=1) / temperature
    return _nce(positive, q, negatives, temperature, exclude)


def jcl_loss(
    q: torch.Tensor,
    keys: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.07,
    lam: float = 2.0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """JCL: upper bound of the expected InfoNCE over Gaussian positives N(μ_i, λΣ_i).

    With μ_i = mean_m k_im and Σ_i = (1/M) Σ_m (k_im − μ_i)(k_im − μ_i)ᵀ (biased):

        c_i = λ q_iᵀΣ_i q_i / (2τ²) = λ/(2τ²M) Σ_m (q_iᵀ(k_im − μ_i))²
        a_i = q_iᵀμ_i / τ + c_i
        L   = mean_i [ −log(exp(a_i) / (exp(a_i) + Σ_j exp(q_iᵀn_j/τ))) + c_i ]

    Computed as cross-entropy over [a_i, q_iᵀn_j/τ] (stable); no D×D matrix is formed.
    λ = 0 or M = 1 gives exactly ``infonce_loss(q, keys.mean(1), negatives, temperature)``.

    Args:
        q: (N, D) queries (student), L2-normalised.
        keys: (N, M, D) key views per query (teacher), L2-normalised, treated as constants.
        negatives: (K, D) queue entries, treated as constants.
        temperature: τ (0.07 in S²MTS²).
        lam: λ, the covariance scale (ramped to 2.0 in S²MTS²).
        exclude: (N, K) bool, negatives left out of query i's sum (None: none).

    Example:
        >>> q = F.normalize(torch.randn(4, 8), dim=1)
        >>> keys = F.normalize(torch.randn(4, 3, 8), dim=2)
        >>> negatives = F.normalize(torch.randn(16, 8), dim=1)
        >>> jcl_loss(q, keys, negatives).shape
        torch.Size([])
    """
    if q.ndim != 2 or keys.ndim != 3 or keys.shape[0] != q.shape[0] or keys.shape[2] != q.shape[1]:
        raise ValueError(
            f"q must be (N, D) and keys (N, M, D), got {tuple(q.shape)}, {tuple(keys.shape)}"
        )
    q = q.to(_compute_dtype(q))
    keys = keys.detach().to(q.dtype)
    mean = keys.mean(dim=1)
    with torch.autocast(q.device.type, enabled=False):
        spread = torch.einsum("nd,nmd->nm", q, keys - mean[:, None])
    c = lam / (2 * temperature**2 * keys.shape[1]) * spread.square().sum(dim=1)
    positive = (q * mean).sum(dim=1) / temperature + c
    return _nce(positive, q, negatives, temperature, exclude) + c.mean()
