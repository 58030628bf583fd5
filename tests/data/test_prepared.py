"""The prepared folder: a re-prepare with another split or other labels draws its subset again."""

import logging

import numpy as np

from s2mts2.data.prepared import PreparedData, prepare_dataset


def _prepare(out, seed: int) -> PreparedData:
    prepare_dataset(
        "synthetic",
        out,
        out,
        size=16,
        labelled=0.2,
        progress=False,
        workers=1,
        options={"n": 200, "size": 32, "seed": seed},
    )
    return PreparedData.open(out, 16)


def _labelled_splits(data: PreparedData) -> set[str]:
    return set(data.table.split[data.labelled(0.2)].tolist())


def test_reprepare_with_another_split_draws_the_labelled_subset_again(tmp_path, caplog):
    out = tmp_path / "data"
    first = _prepare(out, seed=0)
    assert _labelled_splits(first) == {"train"}
    listed = out / "labelled" / "labelled-f0.2-s0.txt"
    stamp = listed.stat().st_mtime_ns
    _prepare(out, seed=0)  # same inputs: the list is kept
    assert listed.stat().st_mtime_ns == stamp
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        second = _prepare(out, seed=1)  # other images and split: the old list would leak
    assert not np.array_equal(first.table.split, second.table.split)
    assert _labelled_splits(second) == {"train"}
    assert "labelled-f0.2-s0.txt" in caplog.text


def test_a_run_drawing_another_subset_than_prepare_is_told(tmp_path, caplog):
    data = _prepare(tmp_path / "data", seed=0)
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        data.labelled(0.2)
        assert caplog.text == ""
        data.labelled(0.1)
    assert "prepare drew the labelled subset labelled-f0.2-s0.txt" in caplog.text
    assert "this run draws labelled-f0.1-s0.txt" in caplog.text
