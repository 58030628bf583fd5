"""The prepared folder: its table, summary and labelled lists; a re-prepare with another split or
other labels draws its subset again."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from s2mts2.config import LabelledDraw
from s2mts2.data.prepared import PreparedData, prepare_dataset
from s2mts2.data.splits import labelled_subset, save_labelled
from s2mts2.errors import DataError


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
    return set(data.table.split[data.labelled(LabelledDraw(0.2))].tolist())


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
        data.labelled(LabelledDraw(0.2))
        assert caplog.text == ""
        data.labelled(LabelledDraw(0.1))
    assert "prepare drew the labelled subset labelled-f0.2-s0.txt" in caplog.text
    assert "this run draws labelled-f0.1-s0.txt" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2mts2"):  # prepare again with another one
        prepare_dataset(
            "synthetic",
            tmp_path / "data",
            tmp_path / "data",
            size=16,
            labelled=0.1,
            progress=False,
            workers=1,
            options={"n": 200, "size": 32, "seed": 0},
        )
    assert "prepare drew" not in caplog.text  # not told about its own draw


def test_a_stale_list_holding_a_non_training_image_is_refused(tmp_path):
    data = _prepare(tmp_path / "data", seed=0)
    t = data.table
    rows = np.concatenate([t.indices("train")[:3], t.indices("val")[:1]])
    save_labelled(tmp_path / "data" / "labelled" / "labelled-f0.3-s0.txt", t, rows)
    with pytest.raises(DataError, match="'val' split"):
        data.labelled(LabelledDraw(0.3))


def test_by_group_draws_whole_groups(tmp_path):
    data = _prepare(tmp_path / "data", seed=0)
    t = data.table
    got = data.labelled(LabelledDraw(0.2, by_group=True))
    want = labelled_subset(t.labels, t.indices("train"), fraction=0.2, groups=t.groups)
    assert np.array_equal(got, want)
    assert not np.array_equal(got, data.labelled(LabelledDraw(0.2)))


def test_an_unreadable_image_is_left_out_not_fatal(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    rows = []
    for k in range(12):
        Image.fromarray(np.full((8, 8), 10 * k, np.uint8)).save(root / f"{k}.png")
        rows.append(f"{k}.png,{'ab'[k % 2]}")
    (root / "5.png").write_text("not an image")
    (root / "labels.csv").write_text("path,dx\n" + "\n".join(rows) + "\n")
    summary = prepare_dataset(
        "csv",
        root,
        tmp_path / "out",
        size=8,
        workers=1,
        progress=False,
        labelled=0.5,
        options={"csv": "labels.csv", "class_column": "dx", "channels": 1},
    )
    assert summary["unreadable_images"] == 1
    data = PreparedData.open(tmp_path / "out", 8)
    assert len(data.table) == 11 and str(root / "5.png") not in data.table.paths


def test_the_summary_counts_labelled_and_unlabelled_training_images(tmp_path):
    data = _prepare(tmp_path / "data", seed=0)
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    n_train = len(data.table.indices("train"))
    assert summary["labelled"] == len(data.labelled(LabelledDraw(0.2))) < n_train
    assert summary["unlabelled"] == n_train - summary["labelled"]
    # without a fraction or count nothing is drawn yet: no count is claimed
    undrawn = prepare_dataset(
        "synthetic",
        tmp_path / "data",
        tmp_path / "data",
        size=16,
        progress=False,
        workers=1,
        options={"n": 200, "size": 32, "seed": 0},
    )
    assert undrawn["labelled"] is None and undrawn["unlabelled"] is None
