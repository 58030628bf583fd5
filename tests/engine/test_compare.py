"""``s2mts2 compare``: inputs found, table and plots written, paired differences only on the same
images (checked against a direct paired bootstrap)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from spies import spy, stub

import s2mts2.engine.compare as compare_mod
from s2mts2.cli import main
from s2mts2.data.table import DatasetTable
from s2mts2.engine.compare import compare_runs, evaluation_folder, run_names
from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import evaluate_predictions, paired_auc_difference
from s2mts2.eval.predictions import ImagePredictions, write_predictions_csv

CLASSES = ["a", "b", "c"]


def evaluation(
    folder: Path, probs: np.ndarray, labels: np.ndarray, *, split: str = "test", csv: bool = True
) -> Path:
    """An evaluation folder as ``s2mts2 evaluate`` writes it: metrics.json and predictions.csv."""
    n = len(probs)
    groups = np.array([f"p{i // 2}" for i in range(n)])
    metrics = evaluate_predictions(probs, labels, classes=CLASSES, groups=groups, n_boot=50)
    metrics["split"] = split
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if csv:
        images = ImagePredictions(
            [f"img{i}.png" for i in range(n)], groups, labels, probs, CLASSES, CLASSES, "multilabel"
        )
        write_predictions_csv(folder / "predictions.csv", images)
    return folder


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (80, 3)).astype(float)
    noise = rng.normal(size=(3, 80, 3))
    probs = [
        (1 / (1 + np.exp(-(n + s * labels)))).astype(np.float32)
        for n, s in zip(noise, (1.0, 2.0, 1.5))
    ]
    return labels, probs


def test_paired_differences_to_the_first_run_on_the_same_images(tmp_path, data):
    labels, (p_ref, p_good, p_other) = data
    ref = evaluation(tmp_path / "ref" / "eval-test", p_ref, labels)
    good = evaluation(tmp_path / "good" / "eval-test", p_good, labels)
    other = evaluation(tmp_path / "other" / "eval-val", p_other, labels, split="val")
    result = compare_runs([ref, good / "metrics.json", other], tmp_path / "cmp", n_boot=200)
    assert list(result["runs"]) == ["ref", "good", "other"] and result["reference"] == "ref"
    groups = np.array([f"p{i // 2}" for i in range(80)])
    paths, split = [f"{i}" for i in range(80)], np.array(["test"] * 80)
    table = DatasetTable("t", paths, labels, CLASSES, "multilabel", groups, split, 1)
    expected = paired_auc_difference(p_good, p_ref, labels, table, groups=groups, n_boot=200)
    got = result["paired"]["good - ref"]
    assert got["difference"] == pytest.approx(expected["difference"])
    np.testing.assert_allclose(got["difference_ci95"], expected["difference_ci95"])
    saved = json.loads((tmp_path / "good" / "eval-test" / "metrics.json").read_text())
    assert got["mean_auc_a"] == pytest.approx(saved["mean_auc"])  # the CSV holds what was scored
    assert result["not_paired"] == {"other": "another split or other classes"}
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert md.splitlines()[2].startswith("| run | mean_auc | mean_auc_ci95 |")
    assert f"| good | {saved['mean_auc']:.4f} |" in md
    assert "| good - ref | " in md and "- other: not paired: another split" in md
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["paired"] == {
        "good - ref": got
    }
    for name in ("comparison.png", "differences.png"):
        assert (tmp_path / "cmp" / name).read_bytes()[:4] == b"\x89PNG"


def test_images_in_another_order_are_aligned_and_other_images_are_not_paired(tmp_path, data):
    labels, (p_ref, p_good, _) = data
    ref = evaluation(tmp_path / "ref" / "eval-test", p_ref, labels)
    order = np.random.default_rng(1).permutation(80)
    shuffled = evaluation(tmp_path / "shuffled" / "eval-test", p_good, labels)
    csv_path = shuffled / "predictions.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], *(lines[1 + i] for i in order)]) + "\n")
    fewer = evaluation(tmp_path / "fewer" / "eval-test", p_good[:60], labels[:60])
    relabelled = labels.copy()
    relabelled[0, 0] = 1 - relabelled[0, 0]
    other_labels = evaluation(tmp_path / "relabelled" / "eval-test", p_good, relabelled)
    no_csv = evaluation(tmp_path / "old" / "eval-test", p_good, labels, csv=False)
    result = compare_runs([ref, shuffled, fewer, other_labels, no_csv], tmp_path / "cmp", n_boot=20)
    direct = compare_runs([ref, tmp_path / "shuffled" / "eval-test"], tmp_path / "c2", n_boot=20)
    assert result["paired"]["shuffled - ref"] == direct["paired"]["shuffled - ref"]
    assert result["not_paired"] == {
        "fewer": "other images",
        "relabelled": "the same images with other labels",
        "old": f"{no_csv} has no predictions.csv (evaluate it again)",
    }


def test_checkpoints_and_run_folders_are_evaluated_unless_evaluated_since(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights")
    calls = stub(monkeypatch, compare_mod, "evaluate_checkpoint", None)
    assert evaluation_folder(run, split="val", n_boot=7, device="cpu") == run / "eval-val"
    assert calls == [
        ((run / "best.pt",), {"split": "val", "model": "teacher", "n_boot": 7, "device": "cpu"})
    ]
    (run / "eval-val").mkdir()
    (run / "eval-val" / "metrics.json").write_text("{}")
    assert evaluation_folder(run / "best.pt", split="val") == run / "eval-val"
    assert len(calls) == 1  # evaluated after the checkpoint was written: reused
    os.utime(run / "eval-val" / "metrics.json", (0, 0))  # older than the checkpoint
    evaluation_folder(run / "best.pt", split="val", model="student")
    assert calls[-1][1]["model"] == "student" and len(calls) == 2
    with pytest.raises(DataError, match=r"expected a run folder \(with best.pt\), a checkpoint"):
        evaluation_folder(tmp_path / "nothing")


def test_names_and_errors(tmp_path, data):
    folders = [Path("x/ft/eval-test"), Path("y/ft/eval-test"), Path("x/mt/eval-test")]
    assert run_names(folders[::2]) == ["ft", "mt"]
    assert run_names(folders[:2]) == ["x/ft/eval-test", "y/ft/eval-test"]
    assert run_names([Path("ft/eval-test"), Path("ft/eval-test-student")]) == [
        "ft/eval-test",
        "ft/eval-test-student",
    ]
    labels, (p_ref, p_good, _) = data
    ref = evaluation(tmp_path / "ref" / "eval-test", p_ref, labels)
    good = evaluation(tmp_path / "good" / "eval-test", p_good, labels)
    result = compare_runs([good, ref], tmp_path / "c", names=["B", "A"], n_boot=10)
    assert list(result["paired"]) == ["A - B"]
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([ref], tmp_path / "c")
    with pytest.raises(ConfigError, match="--names: 1 names for 2 runs"):
        compare_runs([ref, good], tmp_path / "c", names=["A"])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not a readable metrics JSON"):
        compare_runs([ref, tmp_path / "broken.json"], tmp_path / "c")


def test_cli_compare(tmp_path, data, capsys, monkeypatch):
    calls = spy(monkeypatch, compare_mod, "compare_runs")
    labels, (p_ref, p_good, _) = data
    ref = evaluation(tmp_path / "ref" / "eval-test", p_ref, labels)
    good = evaluation(tmp_path / "good" / "eval-test", p_good, labels)
    argv = ["compare", str(ref), str(good), "--out", str(tmp_path / "c"), "--names", "r", "g"]
    assert main([*argv, "--bootstrap", "30", "--split", "val", "--device", "cpu"]) == 0
    ((args, kwargs),) = calls
    assert args == ([ref, good], tmp_path / "c")
    assert kwargs == {
        "names": ["r", "g"],
        "split": "val",
        "model": "teacher",
        "n_boot": 30,
        "device": "cpu",
    }
    assert "| g - r |" in capsys.readouterr().out
    assert main(["compare", str(ref), str(tmp_path / "none"), "--out", str(tmp_path / "d")]) == 2
    assert "none: expected a run folder" in capsys.readouterr().err
