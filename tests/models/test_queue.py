"""Negative queue: FIFO writes with wrap-around, B > K, state round trip."""

import pytest
import torch

from s2mts2.models.queue import NegativeQueue


def _reference(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Write the keys one row at a time."""
    queue = queue.clone()
    for key in keys:
        queue[ptr] = key
        ptr = (ptr + 1) % queue.shape[0]
    return queue, ptr


def test_initial_state_is_normalised_and_seeded():
    torch.manual_seed(0)
    a = NegativeQueue(10, 4)
    torch.manual_seed(0)
    b = NegativeQueue(10, 4)
    assert torch.equal(a.queue, b.queue)
    assert torch.allclose(a.queue.norm(dim=1), torch.ones(10))
    assert int(a.ptr) == 0 and a.ptr.dtype == torch.long


def test_wrap_around_when_batch_does_not_divide_size():
    queue = NegativeQueue(10, 2)
    initial = queue.queue.clone()
    batches = [torch.arange(8.0).view(4, 2) + 100 * (b + 1) for b in range(3)]
    for batch in batches:
        queue.enqueue(batch)
    b1, b2, b3 = batches
    expected = torch.cat([b3[2:], b1[2:], b2, b3[:2]])
    assert torch.equal(queue.queue, expected)
    assert int(queue.ptr) == 2
    assert not torch.equal(expected, initial)


@pytest.mark.parametrize(("start", "count"), [(0, 13), (7, 13), (3, 10), (9, 25), (5, 1)])
def test_matches_row_by_row_writes(start, count):
    queue = NegativeQueue(10, 3)
    queue.ptr.fill_(start)
    keys = torch.randn(count, 3)
    expected, ptr = _reference(queue.queue, start, keys)
    queue.enqueue(keys)
    assert torch.equal(queue.queue, expected)
    assert int(queue.ptr) == ptr == (start + count) % 10


def test_state_dict_round_trip():
    queue = NegativeQueue(10, 3)
    queue.enqueue(torch.randn(4, 3))
    other = NegativeQueue(10, 3)
    other.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"queue", "ptr"}
    assert torch.equal(other.queue, queue.queue) and int(other.ptr) == 4


def test_enqueue_before_backward_is_reported_by_autograd():
    queue = NegativeQueue(8, 3)
    q = torch.randn(2, 3, requires_grad=True)
    loss = (q @ queue.negatives().T).sum()
    queue.enqueue(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_wrong_key_dim():
    with pytest.raises(ValueError, match="keys"):
        NegativeQueue(8, 3).enqueue(torch.randn(2, 4))
