"""predictions.csv: written, read back unchanged, readable by the csv module, bad files refused."""

import csv

import numpy as np
import pytest

from s2mts2.errors import DataError
from s2mts2.eval.predictions import ImagePredictions, read_predictions_csv, write_predictions_csv


def images(task: str, n: int = 12, seed: int = 0) -> ImagePredictions:
    rng = np.random.default_rng(seed)
    classes = ["No Finding", "a,b", "Mass"]  # a space and a comma in class names
    if task == "multiclass":
        labels = np.eye(3)[rng.integers(0, 3, n)]
        logits = rng.normal(size=(n, 3))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        labels = rng.integers(0, 2, (n, 3)).astype(float)
        labels[::4, 1] = np.nan  # unknown
        probs = rng.random((n, 3))
    return ImagePredictions(
        paths=[f"/data/img {i},x.png" for i in range(n)],
        groups=np.array([f"p{i // 2}" for i in range(n)]),
        labels=labels,
        probs=probs.astype(np.float32),
        classes=classes,
        eval_classes=classes[1:],
        task=task,
    )


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_round_trip_keeps_every_value(tmp_path, task):
    written = images(task)
    path = write_predictions_csv(tmp_path / "predictions.csv", written)
    read = read_predictions_csv(path, task=task, eval_classes=written.eval_classes)
    assert read.paths == written.paths and read.classes == written.classes
    assert read.groups.tolist() == written.groups.tolist()
    np.testing.assert_array_equal(read.labels, written.labels)  # NaN where unknown
    np.testing.assert_array_equal(read.probs, written.probs)  # float32, exactly
    assert read.eval_classes == written.eval_classes and read.task == task


def test_columns_hold_the_labels_probabilities_and_predicted_class(tmp_path):
    written = images("multiclass")
    path = write_predictions_csv(tmp_path / "p.csv", written)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path",
        "group",
        "label:No Finding",
        "label:a,b",
        "label:Mass",
        "p:No Finding",
        "p:a,b",
        "p:Mass",
        "true_class",
        "predicted_class",
    ]
    for row, y, p in zip(rows, written.labels, written.probs):
        assert row["true_class"] == written.classes[int(np.argmax(y))]
        assert row["predicted_class"] == written.classes[int(np.argmax(p))]
        assert float(row["p:Mass"]) == pytest.approx(float(p[2]), rel=1e-6)


def test_multilabel_thresholds_list_the_predicted_classes(tmp_path):
    written = images("multilabel")
    thresholds = [0.5, None, 0.2]  # the second class has no threshold: never listed
    path = write_predictions_csv(tmp_path / "p.csv", written, thresholds)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row, p in zip(rows, written.probs):
        expected = [c for c, t, v in zip(written.classes, thresholds, p) if t and v >= t]
        assert row["predicted"].split(";") == (expected or [""])
    assert rows[0]["label:a,b"] == ""  # an unknown label stays empty
    assert "predicted" not in read_first_row(write_predictions_csv(tmp_path / "q.csv", written))


def read_first_row(path):
    with open(path, newline="") as f:
        return next(csv.DictReader(f))


def test_bad_files_are_refused_naming_the_file_and_line(tmp_path):
    path = write_predictions_csv(tmp_path / "p.csv", images("multilabel", n=3))
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace(",", ";", 3)]) + "\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: .* cells for 8 columns"):
        read_predictions_csv(bad, task="multilabel")
    bad.write_text(lines[0] + "\n" + lines[1].rsplit(",", 1)[0] + ",high\n")
    with pytest.raises(DataError, match=r"bad.csv, line 2: .*expected numbers"):
        read_predictions_csv(bad, task="multilabel")
    bad.write_text("image,p\nx.png,0.3\n")
    with pytest.raises(DataError, match="not a predictions.csv of s2mts2 evaluate"):
        read_predictions_csv(bad, task="multilabel")
    with pytest.raises(DataError, match="labels .* probabilities"):
        ImagePredictions(["a"], ["g"], np.zeros((1, 2)), np.zeros((2, 2)), ["x", "y"], [], "x")
