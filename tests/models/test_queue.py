"""Negative queue: FIFO writes with wrap-around, B > K, state round trip."""

import pytest
import torch

from s2mts2.models.queue import NegativeQueue


def _reference(
    queue: torch.Tensor, ids: torch.Tensor, ptr: int, keys: torch.Tensor, key_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Write the keys and their image ids one row at a time."""
    queue, ids = queue.clone(), ids.clone()
    for key, key_id in zip(keys, key_ids):
        queue[ptr], ids[ptr] = key, key_id
        ptr = (ptr + 1) % queue.shape[0]
    return queue, ids, ptr


def _ids(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n)


def test_initial_state_is_normalised_and_seeded():
    torch.manual_seed(0)
    a = NegativeQueue(10, 4)
    torch.manual_seed(0)
    b = NegativeQueue(10, 4)
    assert torch.equal(a.queue, b.queue)
    assert torch.allclose(a.queue.norm(dim=1), torch.ones(10))
    assert int(a.ptr) == 0 and a.ptr.dtype == torch.long
    assert (a.ids == -1).all()  # the random initial entries belong to no image


def test_wrap_around_when_batch_does_not_divide_size():
    queue = NegativeQueue(10, 2)
    initial = queue.queue.clone()
    batches = [torch.arange(8.0).view(4, 2) + 100 * (b + 1) for b in range(3)]
    for b, batch in enumerate(batches):
        queue.enqueue(batch, _ids(4, 10 * b))
    b1, b2, b3 = batches
    expected = torch.cat([b3[2:], b1[2:], b2, b3[:2]])
    assert torch.equal(queue.queue, expected)
    assert int(queue.ptr) == 2
    assert not torch.equal(expected, initial)
    assert queue.ids.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]


@pytest.mark.parametrize(("start", "count"), [(0, 13), (7, 13), (3, 10), (9, 25), (5, 1)])
def test_matches_row_by_row_writes(start, count):
    queue = NegativeQueue(10, 3)
    queue.ptr.fill_(start)
    queue.ids.copy_(_ids(10, 1000))
    keys, key_ids = torch.randn(count, 3), _ids(count)
    expected, expected_ids, ptr = _reference(queue.queue, queue.ids, start, keys, key_ids)
    queue.enqueue(keys, key_ids)
    assert torch.equal(queue.queue, expected)
    assert torch.equal(queue.ids, expected_ids)
    assert int(queue.ptr) == ptr == (start + count) % 10


def test_state_dict_round_trip():
    queue = NegativeQueue(10, 3)
    queue.enqueue(torch.randn(4, 3), _ids(4, 7))
    other = NegativeQueue(10, 3)
    other.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"queue", "ids", "ptr"}
    assert torch.equal(other.queue, queue.queue) and int(other.ptr) == 4
    assert torch.equal(other.ids, queue.ids)


def test_a_state_without_image_ids_loads_with_every_entry_unknown():
    queue = NegativeQueue(10, 3)
    queue.enqueue(torch.randn(4, 3), _ids(4))
    state = {k: v for k, v in queue.state_dict().items() if k != "ids"}
    other = NegativeQueue(10, 3)
    other.ids.fill_(5)
    other.load_state_dict(state)
    assert torch.equal(other.queue, queue.queue) and (other.ids == -1).all()


def test_own_entries_mark_the_queries_own_images():
    queue = NegativeQueue(6, 2)
    queue.enqueue(torch.randn(6, 2), torch.tensor([4, 9, 4, 1, 7, 2]))
    mask = queue.own_entries(torch.tensor([4, 3, 2]))
    assert mask.tolist() == [
        [True, False, True, False, False, False],
        [False] * 6,
        [False, False, False, False, False, True],
    ]
    assert not NegativeQueue(6, 2).own_entries(torch.tensor([0, 1])).any()  # initial: nobody's


def test_enqueue_before_backward_is_reported_by_autograd():
    queue = NegativeQueue(8, 3)
    q = torch.randn(2, 3, requires_grad=True)
    loss = (q @ queue.negatives().T).sum()
    queue.enqueue(torch.randn(2, 3), _ids(2))
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_wrong_key_dim_or_id_count():
    with pytest.raises(ValueError, match="keys"):
        NegativeQueue(8, 3).enqueue(torch.randn(2, 4), _ids(2))
    with pytest.raises(ValueError, match="ids"):
        NegativeQueue(8, 3).enqueue(torch.randn(2, 3), _ids(3))
