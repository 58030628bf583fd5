"""Per-epoch history: metrics.csv holds every row with the union of their columns."""

import csv

from s2mts2.engine.history import History


def test_metrics_csv_keeps_every_row_and_column_and_copies_the_resumed_rows(tmp_path):
    resumed = [{"epoch": 0, "knn": 0.5}]  # rows restored from a checkpoint
    history = History(tmp_path, resumed)
    history.add({"epoch": 1, "loss": 2.0})
    assert resumed == [{"epoch": 0, "knn": 0.5}]  # the checkpoint's list is left as it was
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "0", "knn": "0.5", "loss": ""},
        {"epoch": "1", "knn": "", "loss": "2.0"},
    ]
    assert history.rows == [{"epoch": 0, "knn": 0.5}, {"epoch": 1, "loss": 2.0}]
