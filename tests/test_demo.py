"""``s2mts2 demo`` (``make demo``): the whole pipeline, shortened to one epoch per stage."""

import json
from pathlib import Path

import pytest
import torch
from spies import spy

import s2mts2.demo as demo
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.errors import ConfigError

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_stage_and_reports_each_method(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", ("pretrain.epochs=1", "finetune.epochs=1", "device=cpu"))
    writes = spy(monkeypatch, demo, "write_text_atomic")
    out = tmp_path / "demo"
    for stage in ("pretrain", "s2mts2"):  # an earlier demo's runs: replaced, not refused
        (out / stage).mkdir(parents=True)
        torch.save({"kind": "stale"}, out / stage / "last.pt")
        (out / stage / "run.json").write_text(json.dumps({"command": "s2mts2 demo"}))

    results = demo.run_demo(out, quick=True, progress=False)

    assert set(results["methods"]) == set(demo.METHODS) and results["quick"] is True
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"] == json.loads(json.dumps(results["methods"], default=str))
    pretrained = results["checkpoints"]["pretrain"]
    assert load_checkpoint(pretrained)["kind"] == "pretrain"
    report = (out / "report.md").read_text()
    for method in demo.METHODS:
        state = load_checkpoint(results["checkpoints"][method])
        assert state["config"]["finetune"]["method"] == method and state["epoch"] == 1
        # stage 1 of this demo, for the method that uses it
        used = pretrained if method == "s2mts2" else ""
        assert state["config"]["finetune"]["pretrained"] == used
        metrics = json.loads((out / method / "eval-test" / "metrics.json").read_text())
        assert metrics["split"] == "test"
        assert metrics["mean_auc"] == pytest.approx(results["methods"][method]["mean_auc"])
        assert 0.0 <= metrics["mean_auc"] <= 1.0
        assert f"| {method} | {metrics['mean_auc']:.4f}" in report
    for a, b in demo.PAIRS:  # paired differences, recomputed from the per-method AUCs
        d = results["paired"][f"{a} - {b}"]
        assert d["difference"] == pytest.approx(
            results["methods"][a]["mean_auc"] - results["methods"][b]["mean_auc"]
        )
        low, high = d["difference_ci95"]
        assert low <= high
        assert f"| {a} - {b} | {d['difference']:+.4f} | {low:+.4f} .. {high:+.4f} |" in report
    assert saved["paired"] == results["paired"]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert [Path(args[0]).name for args, _ in writes] == ["report.md", "results.json"]
    assert results["dataset"]["labelled"] > 0 and results["dataset"]["images"]["test"] > 0


def _stage_run(folder: Path, command: str | None) -> None:
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"weights")
    if command is not None:
        (folder / "run.json").write_text(json.dumps({"command": command}))


@pytest.mark.parametrize("command", ["s2mts2 pretrain --config tiny", None])
def test_the_demo_refuses_a_run_it_did_not_write(tmp_path, command):
    _stage_run(tmp_path / "s2mts2", "s2mts2 demo")
    _stage_run(tmp_path / "pretrain", command)
    with pytest.raises(ConfigError, match=r"pretrain holds a run that `s2mts2 demo` did not"):
        demo.run_demo(tmp_path, quick=True, progress=False)
    assert (tmp_path / "pretrain" / "last.pt").read_bytes() == b"weights"  # nothing removed
    assert (tmp_path / "s2mts2" / "last.pt").exists()


def test_the_demo_refuses_a_prepared_dataset_of_another_kind(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "summary.json").write_text(json.dumps({"dataset": "chestxray14"}))
    _stage_run(tmp_path / "pretrain", "s2mts2 demo")
    with pytest.raises(ConfigError, match=r"holds a prepared chestxray14 dataset"):
        demo.run_demo(tmp_path, quick=True, progress=False)
    assert (tmp_path / "pretrain" / "last.pt").exists()
    (tmp_path / "data" / "summary.json").write_text(json.dumps({"dataset": "synthetic"}))
    demo.check_demo_folder(tmp_path)  # the demo's own: accepted
