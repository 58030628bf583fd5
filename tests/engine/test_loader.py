import numpy as np
import pytest
import torch

from s2mts2.data.loader import BatchLoader, IndexStream


def test_stream_is_seeded_permutations_per_pass():
    rows = np.arange(10, 20)
    s = IndexStream(rows, batch_size=4, seed=3)
    got = np.concatenate([s.batch_rows(i) for i in range(5)])  # 20 = two passes
    assert sorted(got[:10]) == list(rows) and sorted(got[10:]) == list(rows)
    assert not np.array_equal(got[:10], got[10:])  # a new permutation each pass
    again = IndexStream(rows, batch_size=4, seed=3)
    assert np.array_equal(again.batch_rows(3), s.batch_rows(3))  # pure function of (seed, step)
    assert not np.array_equal(IndexStream(rows, 4, seed=4).batch_rows(0), s.batch_rows(0))


def test_stream_smaller_than_batch_fills_batches():
    s = IndexStream(np.arange(3), batch_size=8, seed=0)
    b = s.batch_rows(0)
    assert len(b) == 8 and set(b) == {0, 1, 2}


def test_ranks_split_the_global_batch():
    rows = np.arange(32)
    single = IndexStream(rows, batch_size=8, seed=1)
    r0 = IndexStream(rows, batch_size=4, seed=1, rank=0, world_size=2)
    r1 = IndexStream(rows, batch_size=4, seed=1, rank=1, world_size=2)
    for step in range(6):
        assert np.array_equal(
            np.concatenate([r0.batch_rows(step), r1.batch_rows(step)]), single.batch_rows(step)
        )


def test_loader_fetches_rows_in_order_through_the_row_map():
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(2, axis=2)
    cache_rows = np.array([5, 4, 3, 2, 1, 0])  # table row i lives in cache row 5 - i
    stream = IndexStream(np.arange(6), batch_size=4, seed=0)
    loader = BatchLoader(images, stream, torch.device("cpu"), cache_rows)
    batches = list(loader.steps(0, 3))
    assert len(batches) == 3
    for step, b in enumerate(batches):
        assert np.array_equal(b.rows, stream.batch_rows(step))
        assert b.ids.dtype == torch.int64 and b.ids.tolist() == b.rows.tolist()
        assert b.images.dtype == torch.uint8 and b.images.shape == (4, 1, 2, 1)
        assert torch.equal(b.images[:, 0, 0, 0], torch.from_numpy(5 - b.rows).to(torch.uint8))


def test_loader_stops_early_without_hanging():
    images = np.zeros((100, 1, 2, 2), dtype=np.uint8)
    loader = BatchLoader(images, IndexStream(np.arange(100), 2, 0), torch.device("cpu"), prefetch=1)
    it = loader.steps(0, 50)
    next(it)
    it.close()


def test_a_failing_fetch_is_raised_not_a_short_epoch():
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    cache_rows = np.array([0, 1, 2, 99])  # table row 3 points past the store
    loader = BatchLoader(images, IndexStream(np.arange(4), 2, 0), torch.device("cpu"), cache_rows)
    with pytest.raises(IndexError):
        list(loader.steps(0, 4))
