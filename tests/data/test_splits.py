"""Grouped splits and the per-class labelled-subset protocol, against direct counts."""

import math

import numpy as np
import pytest

from s2mts2.data.splits import (
    grouped_split,
    labelled_file_name,
    labelled_subset,
    load_labelled,
    save_labelled,
)
from s2mts2.data.table import DatasetTable
from s2mts2.errors import ConfigError, DataError


def _multilabel(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6) multi-hot labels with rare and common classes, and (n,) groups of 1-4 images."""
    rng = np.random.default_rng(seed)
    prev = np.array([0.02, 0.05, 0.1, 0.2, 0.4, 0.0])
    labels = (rng.random((n, 6)) < prev).astype(np.float32)
    labels[rng.random((n, 6)) < 0.05] = np.nan
    groups = np.repeat(np.arange(n), rng.integers(1, 5, n))[:n].astype(str)
    return labels, groups


def _onehot(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(5, dtype=np.float32)[rng.choice(5, n, p=[0.5, 0.25, 0.15, 0.07, 0.03])]


def test_grouped_split_keeps_groups_and_balances_classes():
    labels, groups = _multilabel()
    split = grouped_split(groups, labels, seed=3)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    share = {s: (split == s).mean() for s in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2}, abs=0.02)
    pos = np.nan_to_num(labels) == 1
    for c in range(5):
        frac = pos[split == "test", c].sum() / pos[:, c].sum()
        assert frac == pytest.approx(0.2, abs=0.05), c
    assert np.array_equal(split, grouped_split(groups, labels, seed=3))
    assert not np.array_equal(split, grouped_split(groups, labels, seed=4))


def test_rare_classes_are_split_to_within_one_image():
    """Groups carrying a rare class are placed first, while every split still needs them."""
    rng = np.random.default_rng(0)
    n = 3000
    labels = (rng.random((n, 4)) < np.array([0.004, 0.01, 0.3, 0.5])).astype(np.float32)
    groups = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n].astype(str)
    pos = labels == 1
    for seed in range(5):
        split = grouped_split(groups, labels, seed=seed)
        for c in range(4):
            for s, f in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
                assert abs(pos[split == s, c].sum() - f * pos[:, c].sum()) <= 1.0, (seed, c, s)


def test_a_tie_between_splits_goes_to_the_one_needing_most_images():
    # two strata (positive, negative) of two single-image groups each: every order of visits
    # ties val and test on some stratum; only the size tie-break gives each split its share
    labels = np.array([[1.0], [0.0], [0.0], [1.0]])
    for seed in range(20):
        split = grouped_split(np.arange(4), labels, fractions=(0.5, 0.25, 0.25), seed=seed)
        assert [(split == s).sum() for s in ("train", "val", "test")] == [2, 1, 1], seed


def test_a_split_with_share_zero_stays_empty_with_labels():
    labels, groups = _multilabel()
    for fractions in [(0.8, 0.2, 0.0), (0.7, 0.0, 0.3)]:
        split = grouped_split(groups, labels, fractions=fractions, seed=1)
        empty = ("train", "val", "test")[fractions.index(0.0)]
        assert empty not in set(split)


def test_grouped_split_without_labels_and_bad_fractions():
    groups = np.repeat(np.arange(500), 2).astype(str)
    split = grouped_split(groups, None, fractions=(0.8, 0.2, 0.0), seed=0)
    assert set(split) == {"train", "val"}
    assert (split == "val").mean() == pytest.approx(0.2, abs=0.01)
    for bad in [(0.7, 0.2, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5)]:
        with pytest.raises(ConfigError, match="fractions"):
            grouped_split(groups, None, fractions=bad)


def test_fraction_takes_ceil_share_of_each_class_exactly_for_onehot():
    labels = _onehot()
    train = np.arange(0, 2000, 2)  # every second row is training
    idx = labelled_subset(labels, train, fraction=0.1, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and np.isin(idx, train).all()
    for c in range(5):
        n_c = int(labels[train, c].sum())
        assert labels[idx, c].sum() == math.ceil(0.1 * n_c)


def test_fraction_multilabel_union_and_coverage():
    labels, _ = _multilabel()
    train = np.arange(2400)
    idx = labelled_subset(labels, train, fraction=0.05, seed=1)
    pos = np.nan_to_num(labels[train]) == 1
    need = [math.ceil(0.05 * pos[:, c].sum()) for c in range(6) if pos[:, c].any()]
    none = ~pos.any(axis=1)
    need.append(math.ceil(0.05 * none.sum()))
    assert len(idx) <= sum(need)  # a union of the per-class draws
    lab = np.nan_to_num(labels[idx]) == 1
    for c in range(5):  # every class with positives represented, at least its share
        assert lab[:, c].sum() >= math.ceil(0.05 * pos[:, c].sum()) >= 1
    assert (~lab.any(axis=1)).sum() >= math.ceil(0.05 * none.sum())  # all-negative images too
    assert lab[:, 5].sum() == 0  # a class without positives contributes nothing


def test_fraction_is_deterministic_and_seed_dependent(tmp_path):
    labels, groups = _multilabel()
    train = np.arange(2400)
    a = labelled_subset(labels, train, fraction=0.1, seed=7)
    assert np.array_equal(a, labelled_subset(labels, train, fraction=0.1, seed=7))
    assert not np.array_equal(a, labelled_subset(labels, train, fraction=0.1, seed=8))
    assert len(labelled_subset(labels, train, fraction=1.0)) == len(train)


def test_by_group_sampling_keeps_whole_groups():
    labels, groups = _multilabel()
    train = np.arange(2400)
    idx = labelled_subset(labels, train, fraction=0.1, seed=0, groups=groups)
    chosen = set(groups[idx])
    expected = [i for i in train if groups[i] in chosen]
    assert np.array_equal(idx, expected)
    pos = np.nan_to_num(labels) == 1
    for c in range(5):
        assert pos[idx, c].sum() >= math.ceil(0.1 * pos[train, c].sum())


def test_count_takes_the_reachable_size_closest_to_it():
    """Sizes change only where ceil(f x positives) of some stratum steps, at f = k / positives:
    those fractions give every reachable size (ties go to the larger size)."""
    ml, groups = _multilabel(800, seed=2)
    train = np.arange(600)
    positives = [int(p) for p in (np.nan_to_num(ml[train]) == 1).sum(axis=0) if p]
    positives.append(int((~(np.nan_to_num(ml[train]) == 1).any(axis=1)).sum()))
    steps = sorted({k / p for p in positives for k in range(1, p + 1)})
    for g in (None, groups):
        reachable = {len(labelled_subset(ml, train, fraction=f, seed=0, groups=g)) for f in steps}
        for count in (20, 57, 101, 150, 333):
            want = min(reachable, key=lambda size, c=count: (abs(size - c), size < c))
            assert len(labelled_subset(ml, train, count=count, seed=0, groups=g)) == want


def test_rows_are_sorted_for_unsorted_training_indices():
    labels, _ = _multilabel()
    idx = labelled_subset(labels, np.arange(2400)[::-1], fraction=0.1, seed=0)
    assert np.all(np.diff(idx) > 0)


def test_count_reaches_the_requested_number():
    labels = _onehot()
    train = np.arange(1500)
    for count in (5, 60, 700):
        assert len(labelled_subset(labels, train, count=count, seed=2)) == count
    ml, groups = _multilabel()
    idx = labelled_subset(ml, np.arange(2400), count=150, seed=0)
    assert abs(len(idx) - 150) <= 2
    idx = labelled_subset(ml, np.arange(2400), count=150, seed=0, groups=groups)
    assert abs(len(idx) - 150) <= 6


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_names_the_flag(fraction):
    with pytest.raises(ConfigError, match="--labelled "):
        labelled_subset(_onehot(100), np.arange(50), fraction=fraction)


@pytest.mark.parametrize("count", [0, 51])
def test_bad_count_names_the_flag(count):
    with pytest.raises(ConfigError, match=f"--labelled-count.*{count}"):
        labelled_subset(_onehot(100), np.arange(50), count=count)


def test_exactly_one_of_fraction_and_count():
    with pytest.raises(ConfigError):
        labelled_subset(_onehot(100), np.arange(50))
    with pytest.raises(ConfigError):
        labelled_subset(_onehot(100), np.arange(50), fraction=0.1, count=3)


def _table(n: int = 40) -> DatasetTable:
    labels = _onehot(n)
    return DatasetTable(
        name="toy",
        paths=[f"/data/img_{i:03d}.png" for i in range(n)],
        labels=labels,
        classes=list("abcde"),
        task="multiclass",
        groups=np.arange(n),
        split=np.array(["train"] * n),
        channels=1,
    )


def test_labelled_file_roundtrip_and_errors(tmp_path):
    table = _table()
    idx = np.array([30, 2, 7, 2])
    path = tmp_path / "sub" / labelled_file_name(fraction=0.2, seed=0)
    save_labelled(path, table, idx)
    assert path.name == "labelled-f0.2-s0.txt"
    assert path.read_text().splitlines() == [table.paths[i] for i in (2, 7, 30)]
    assert np.array_equal(load_labelled(path, table), [2, 7, 30])
    path.write_text("".join(table.paths[i] + "\n" for i in (30, 2, 7, 2)))  # written by hand
    assert load_labelled(path, table).tolist() == [2, 7, 30]
    path.write_text(f"{table.paths[1]}\n/elsewhere/x.png\n")
    with pytest.raises(DataError, match=r"labelled-f0\.2-s0\.txt, line 2"):
        load_labelled(path, table)
    with pytest.raises(DataError, match="not found"):
        load_labelled(tmp_path / "nope.txt", table)


def test_a_labelled_list_must_stay_inside_its_split(tmp_path):
    table = _table()
    table.split[7] = "test"
    path = tmp_path / "labelled-f0.2-s0.txt"
    save_labelled(path, table, np.array([2, 7, 30]))
    assert np.array_equal(load_labelled(path, table), [2, 7, 30])
    with pytest.raises(DataError, match=r"line 2: image /data/img_007\.png is in the 'test' split"):
        load_labelled(path, table, split="train")


def test_labelled_files_are_identical_for_the_same_seed(tmp_path):
    table = _table(400)
    files = []
    for k, seed in enumerate((0, 0, 1)):
        idx = labelled_subset(table.labels, table.indices("train"), fraction=0.1, seed=seed)
        files.append(tmp_path / f"{k}.txt")
        save_labelled(files[-1], table, idx)
    assert files[0].read_bytes() == files[1].read_bytes() != files[2].read_bytes()


def test_labelled_file_names():
    assert labelled_file_name(count=1400, seed=3) == "labelled-n1400-s3.txt"
    assert labelled_file_name(fraction=0.05, seed=1, by_group=True) == "labelled-f0.05-s1-g.txt"
    with pytest.raises(ConfigError):
        labelled_file_name()
