"""``s2mts2 evaluate``'s files for a user: predictions.csv, per-class thresholds of a multi-label
task chosen on validation, the confusion matrix of a multi-class task (untrained checkpoints on
prepared synthetic data: the numbers are checked, not their quality)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score

from s2mts2.data.prepared import prepare_dataset
from s2mts2.data.table import DatasetTable
from s2mts2.engine.evaluate import evaluate_checkpoint, split_predictions, threshold_predictions
from s2mts2.eval.metrics import youden_thresholds
from s2mts2.eval.predictions import read_predictions_csv

from .conftest import SIZE, write_checkpoint


@pytest.fixture(scope="module")
def multiclass_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mc") / "data"
    options = {"n": 90, "size": 40, "task": "multiclass"}
    prepare_dataset("synthetic", out, out, size=SIZE, progress=False, options=options, workers=1)
    return out


def test_multilabel_predictions_csv_and_thresholds_chosen_on_val(split_ckpt, prepared, tmp_path):
    metrics = evaluate_checkpoint(
        split_ckpt, data_dir=prepared, out_dir=tmp_path / "ev", n_boot=0, device="cpu"
    )
    test = split_predictions(split_ckpt, "test", data_dir=prepared, device="cpu")
    val = split_predictions(split_ckpt, "val", data_dir=prepared, device="cpu")
    table = test.data.table
    read = read_predictions_csv(tmp_path / "ev" / "predictions.csv", task=table.task)
    assert read.paths == [table.paths[i] for i in test.rows]
    assert read.groups.tolist() == table.groups[test.rows].tolist()
    np.testing.assert_array_equal(read.labels, test.labels)
    np.testing.assert_array_equal(read.probs, test.probs.astype(np.float32))

    thresholds = metrics["thresholds"]
    assert (thresholds["chosen_on"], thresholds["held_out"]) == ("val", True)
    assert thresholds["note"].startswith(f"chosen on the val split ({len(val.rows)} images)")
    chosen = youden_thresholds(val.probs, val.labels)
    for c, name in enumerate(table.classes):
        entry = thresholds["per_class"][name]
        assert entry["threshold"] == pytest.approx(chosen[c])
        if chosen[c] is not None:  # scored on the test split at the val threshold
            y, pred = test.labels[:, c], test.probs[:, c] >= chosen[c]
            assert entry["sensitivity"] == pytest.approx(recall_score(y, pred, zero_division=0))
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["thresholds"] == thresholds and saved["data"] == str(prepared)
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Per-class thresholds (Youden's J): chosen on the val split" in report
    assert not (tmp_path / "ev" / "confusion.png").exists() and "confusion_matrix" not in saved

    on_val = evaluate_checkpoint(
        split_ckpt, split="val", data_dir=prepared, out_dir=tmp_path / "v", n_boot=0, device="cpu"
    )
    assert on_val["thresholds"]["held_out"] is False
    assert "in-sample, so optimistic" in on_val["thresholds"]["note"]


def test_without_a_validation_split_the_thresholds_are_chosen_on_the_split_itself():
    table = SimpleNamespace(task="multilabel", indices=lambda split: np.array([], dtype=int))
    pred = SimpleNamespace(data=SimpleNamespace(table=table), split="test")
    assert threshold_predictions(Path("unused.pt"), pred) is pred
    pred.data.table = SimpleNamespace(task="multiclass")
    assert threshold_predictions(Path("unused.pt"), pred) is None


def test_without_a_validation_split_the_report_says_so(split_ckpt, prepared, tmp_path):
    data = tmp_path / "data"  # the same data, its val images moved to train
    data.mkdir()
    for item in prepared.iterdir():
        (data / item.name).symlink_to(item)
    table = DatasetTable.load(prepared)
    table.split[table.split == "val"] = "train"
    (data / "table.csv").unlink()
    (data / "table.json").unlink()
    table.save(data)
    metrics = evaluate_checkpoint(split_ckpt, data_dir=data, out_dir=tmp_path / "ev", n_boot=0)
    note = metrics["thresholds"]["note"]
    assert metrics["thresholds"]["chosen_on"] == "test" and not metrics["thresholds"]["held_out"]
    assert note.startswith("this dataset has no validation split, so they were chosen on the test")


def test_multiclass_confusion_matrix_and_predicted_class(multiclass_data, tmp_path):
    table = DatasetTable.load(multiclass_data)
    ckpt = write_checkpoint(tmp_path / "best.pt", "multiclass", 1, table.classes, seed=3)
    metrics = evaluate_checkpoint(ckpt, data_dir=multiclass_data, n_boot=0, device="cpu")
    folder = tmp_path / "eval-test"
    read = read_predictions_csv(folder / "predictions.csv", task="multiclass")
    truth, pred = read.labels.argmax(axis=1), read.probs.argmax(axis=1)
    expected = confusion_matrix(truth, pred, labels=range(len(table.classes)))
    assert metrics["confusion_matrix"] == expected.tolist()
    assert (folder / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "src_mt" not in metrics and "thresholds" not in metrics  # not the ISIC2018 classes
    assert "confusion.png" in metrics["report_markdown"]
