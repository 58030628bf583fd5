"""benchmarks/stage1_knn.py reproduces the kNN scores that `s2mts2 pretrain` logged."""

import csv
import json
from pathlib import Path

import pytest

from s2mts2.config import load_config
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.checkpoint import save_checkpoint
from s2mts2.engine.pretrain import pretrain


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("stage1_knn")


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("knn-pre")
    cfg = load_config("tiny", [f"data.dir={tiny_data}", "pretrain.knn_k=5"])
    return pretrain(cfg, out, progress=False)


def test_scores_match_the_run_log(script, run):
    with (run.parent / "metrics.csv").open() as f:
        logged = [float(r["knn_mean_auc"]) for r in csv.DictReader(f) if r["knn_mean_auc"]]
    result = script.compare(run, n_boot=50)
    assert result["knn_mean_auc_random_init"] == pytest.approx(logged[0], abs=1e-6)
    assert result["knn_mean_auc_random_init_logged"] == pytest.approx(logged[0])
    assert result["knn_mean_auc_trained"] == pytest.approx(logged[-1], abs=1e-6)
    assert result["knn_mean_auc_trained"] != pytest.approx(logged[0], abs=1e-9)  # weights moved
    low, high = result["difference_ci95"]
    assert low <= result["difference"] <= high
    assert result["n_fit"] > 0 and result["n_scored"] > 0 and result["k"] == 5


def test_cli_writes_json_and_scores_unlabelled_images(script, run, tiny_data, tmp_path, capsys):
    out = tmp_path / "knn.json"
    argv = [str(run), "--scored", "unlabelled", "--n-boot", "20", "--json", str(out)]
    assert script.main(argv) == 0
    result = json.loads(out.read_text())
    n_train = len(PreparedData.open(tiny_data, 16).table.indices("train"))
    assert result["scored"] == "unlabelled"
    assert result["n_scored"] + result["n_fit"] == n_train
    assert "difference" in capsys.readouterr().out
    unseen = script.compare(run, n_boot=10, scored="unlabelled", unseen_groups=True)
    assert 0 < unseen["n_scored"] < result["n_scored"]  # patients with a labelled image left out


def test_refuses_what_is_not_a_stage1_checkpoint(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    save_checkpoint({"kind": "finetune", "epoch": 1}, tmp_path / "ft.pt")
    assert script.main([str(tmp_path / "ft.pt")]) == 2
    assert "not a stage-1 checkpoint" in capsys.readouterr().err
