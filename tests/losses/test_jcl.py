"""JCL / InfoNCE against independent float64 computations."""

import math

import pytest
import torch
from torch.nn import functional as F

from s2mts2.losses import infonce_loss, jcl_loss


def _unit(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def _direct_jcl(q, keys, negatives, tau: float, lam: float) -> float:
    """Per-sample formula of docs/method.md with an explicit D×D covariance."""
    total = 0.0
    for i in range(q.shape[0]):
        mu = keys[i].mean(0)
        centred = keys[i] - mu
        sigma = sum(torch.outer(d, d) for d in centred) / keys.shape[1]
        c = lam * float(q[i] @ sigma @ q[i]) / (2 * tau**2)
        a = float(q[i] @ mu) / tau + c
        neg = sum(math.exp(float(q[i] @ n) / tau) for n in negatives)
        total += -math.log(math.exp(a) / (math.exp(a) + neg)) + c
    return total / q.shape[0]


def test_matches_direct_formula():
    torch.manual_seed(0)
    q, keys, negatives = _unit(6, 8), _unit(6, 4, 8), _unit(20, 8)
    for tau, lam in [(0.07, 2.0), (0.2, 0.25), (0.5, 1.0)]:
        got = jcl_loss(q, keys, negatives, temperature=tau, lam=lam)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(_direct_jcl(q, keys, negatives, tau, lam), rel=1e-10)


def test_infonce_matches_direct_formula():
    torch.manual_seed(1)
    q, k, negatives = _unit(5, 8), _unit(5, 8), _unit(12, 8)
    expected = _direct_jcl(q, k[:, None], negatives, 0.1, 0.0)
    assert infonce_loss(q, k, negatives, 0.1).item() == pytest.approx(expected, rel=1e-10)


def test_reduces_to_infonce_with_mean_key():
    torch.manual_seed(2)
    q, keys, negatives = _unit(7, 16, dtype=torch.float32), _unit(7, 3, 16), _unit(30, 16)
    keys, negatives = keys.float(), negatives.float()
    at_zero = jcl_loss(q, keys, negatives, 0.07, lam=0.0)
    assert torch.equal(at_zero, infonce_loss(q, keys.mean(1), negatives, 0.07))
    one = keys[:, :1]
    assert torch.equal(
        jcl_loss(q, one, negatives, 0.07, 2.0), infonce_loss(q, one[:, 0], negatives, 0.07)
    )
    assert jcl_loss(q, keys, negatives, 0.07, 2.0) > at_zero


def test_an_excluded_negative_counts_as_if_it_were_not_in_the_queue():
    """Query i's own stale entry, excluded, gives the loss of a queue without that entry (the
    JCL formula over the remaining negatives: per query, since each leaves out its own)."""
    torch.manual_seed(3)
    q, keys, negatives = _unit(4, 8), _unit(4, 3, 8), _unit(10, 8)
    negatives[7] = keys[1].mean(0)  # query 1's own earlier mean key: a near-positive
    negatives[2] = keys[3].mean(0)
    exclude = torch.zeros(4, 10, dtype=torch.bool)
    exclude[1, 7] = exclude[3, 2] = True
    got = jcl_loss(q, keys, negatives, 0.1, 1.5, exclude=exclude)
    per_query = [
        _direct_jcl(q[i : i + 1], keys[i : i + 1], negatives[~exclude[i]], 0.1, 1.5)
        for i in range(4)
    ]
    assert got.item() == pytest.approx(sum(per_query) / 4, rel=1e-10)
    assert got < jcl_loss(q, keys, negatives, 0.1, 1.5)  # the own entry was a false negative
    assert infonce_loss(q, keys[:, 0], negatives, 0.1, exclude=exclude).item() == pytest.approx(
        sum(
            _direct_jcl(q[i : i + 1], keys[i : i + 1, :1], negatives[~exclude[i]], 0.1, 0.0)
            for i in range(4)
        )
        / 4,
        rel=1e-10,
    )
    gradient_check = q.clone().requires_grad_()
    jcl_loss(gradient_check, keys, negatives, 0.1, 1.5, exclude=exclude).backward()
    assert torch.isfinite(gradient_check.grad).all()  # -inf logits give no NaN gradient


def test_exclude_must_match_queries_by_negatives():
    with pytest.raises(ValueError, match="exclude"):
        jcl_loss(_unit(4, 8), _unit(4, 2, 8), _unit(10, 8), exclude=torch.zeros(4, 9, dtype=bool))


def test_upper_bounds_monte_carlo_infonce_and_is_tight():
    torch.manual_seed(0)
    n, m, d, draws, tau, lam = 4, 5, 8, 20_000, 0.2, 1.0
    centre = _unit(n, 1, d)
    keys = F.normalize(centre + 0.5 * torch.randn(n, m, d, dtype=torch.float64), dim=2)
    q = F.normalize(centre[:, 0] + 0.5 * torch.randn(n, d, dtype=torch.float64), dim=1)
    negatives = _unit(32, d)
    mu = keys.mean(1)
    # k = μ + sqrt(λ/M) Σ_m z_m (k_m − μ), z ~ N(0, I): covariance λΣ (Σ biased over the M keys)
    z = torch.randn(draws, n, m, dtype=torch.float64)
    samples = mu + math.sqrt(lam / m) * torch.einsum("snm,nmd->snd", z, keys - mu[:, None])
    pos = torch.einsum("nd,snd->sn", q, samples) / tau
    neg = torch.logsumexp(q @ negatives.T / tau, dim=1)
    per_draw = (torch.logaddexp(pos, neg) - pos).mean(1)  # InfoNCE of each draw (mean over n)
    mc_mean = per_draw.mean().item()
    mc_error = per_draw.std().item() / math.sqrt(draws)
    bound = jcl_loss(q, keys, negatives, tau, lam).item()
    at_mean = infonce_loss(q, mu, negatives, tau).item()
    assert mc_mean > at_mean + 3 * mc_error  # the Gaussian positives do change the expectation
    assert mc_mean <= bound + 4 * mc_error
    assert bound - mc_mean < 0.05 * bound  # the bound is tight, not trivially loose


def test_gradient_reaches_query_only():
    torch.manual_seed(4)
    q = _unit(4, 8).requires_grad_()
    keys = _unit(4, 3, 8).requires_grad_()
    negatives = _unit(10, 8).requires_grad_()
    jcl_loss(q, keys, negatives).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert keys.grad is None and negatives.grad is None


def test_bf16_close_to_float32():
    torch.manual_seed(5)
    q, keys, negatives = _unit(32, 64), _unit(32, 5, 64), _unit(256, 64)
    ref = jcl_loss(q.float(), keys.float(), negatives.float())
    got = jcl_loss(q.bfloat16(), keys.bfloat16(), negatives.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_float32_inside_autocast():
    torch.manual_seed(7)
    q, keys, negatives = _unit(8, 32).float(), _unit(8, 3, 32).float(), _unit(64, 32).float()
    ref = jcl_loss(q, keys, negatives)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = jcl_loss(q, keys, negatives)
        nce = infonce_loss(q, keys[:, 0], negatives)
    assert got.dtype == nce.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-6)
    assert torch.allclose(nce, infonce_loss(q, keys[:, 0], negatives), rtol=1e-6)


def test_moderate_sizes_run():
    torch.manual_seed(6)
    q = _unit(256, 128, dtype=torch.float32).requires_grad_()
    loss = jcl_loss(q, _unit(256, 5, 128).float(), _unit(4096, 128).float())
    loss.backward()
    assert torch.isfinite(loss) and q.grad.shape == (256, 128)


def test_shape_errors():
    with pytest.raises(ValueError, match="keys"):
        jcl_loss(_unit(4, 8), _unit(4, 8), _unit(10, 8))
    with pytest.raises(ValueError, match="negatives"):
        jcl_loss(_unit(4, 8), _unit(4, 2, 8), _unit(10, 6))
