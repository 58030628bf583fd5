"""``s2mts2 demo`` (``make demo``): the whole pipeline, shortened to one epoch per stage."""

import json
from pathlib import Path

import pytest
import torch
from spies import spy

import s2mts2.engine.demo as demo
from s2mts2.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_stage_and_reports_each_method(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", ("pretrain.epochs=1", "finetune.epochs=1", "device=cpu"))
    writes = spy(monkeypatch, demo, "write_text_atomic")
    out = tmp_path / "demo"
    for stage in ("pretrain", "s2mts2"):  # an earlier demo's runs: replaced, not refused
        (out / stage).mkdir(parents=True)
        torch.save({"kind": "stale"}, out / stage / "last.pt")

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
        assert state["config"]["finetune"]["pretrained"] == pretrained  # stage 1 of this demo
        metrics = json.loads((out / method / "eval-test" / "metrics.json").read_text())
        assert metrics["split"] == "test"
        assert metrics["mean_auc"] == pytest.approx(results["methods"][method]["mean_auc"])
        assert 0.0 <= metrics["mean_auc"] <= 1.0
        assert f"| {method} | {metrics['mean_auc']:.4f}" in report
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert [Path(args[0]).name for args, _ in writes] == ["report.md", "results.json"]
    assert results["dataset"]["labelled"] > 0 and results["dataset"]["images"]["test"] > 0
