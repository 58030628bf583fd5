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


def test_the_demo_runs_every_stage_of_every_task_and_reports_each_method(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", ("pretrain.epochs=1", "finetune.epochs=1", "device=cpu"))
    writes = spy(monkeypatch, demo, "write_text_atomic")
    out = tmp_path / "demo"
    for stage in ("pretrain", "s2mts2"):  # an earlier demo's runs: replaced, not refused
        (out / "xray" / stage).mkdir(parents=True)
        torch.save({"kind": "stale"}, out / "xray" / stage / "last.pt")
        (out / "xray" / stage / "run.json").write_text(json.dumps({"command": "s2mts2 demo"}))

    results = demo.run_demo(out, quick=True, progress=False)

    assert list(results["tasks"]) == [task.name for task in demo.TASKS] == ["xray", "digits"]
    assert results["quick"] is True
    saved = json.loads((out / "results.json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(results["tasks"], default=str))
    report = (out / "report.md").read_text()
    for task in demo.TASKS:
        folder = out / task.name
        part = results["tasks"][task.name]
        assert set(part["methods"]) == set(demo.METHODS)
        assert part["dataset"]["dataset"] == task.dataset and part["dataset"]["labelled"] > 0
        assert part["dataset"]["images"]["test"] > 0
        section = report.split(f"## {task.title}\n")[1].split("\n## ")[0]
        pretrained = part["checkpoints"]["pretrain"]
        assert Path(pretrained).parent == folder / "pretrain"
        assert load_checkpoint(pretrained)["kind"] == "pretrain"
        for method in demo.METHODS:
            state = load_checkpoint(part["checkpoints"][method])
            assert state["config"]["finetune"]["method"] == method and state["epoch"] == 1
            assert state["config"]["data"]["dir"] == str(folder / "data")
            # stage 1 of this task, for the method that uses it
            used = pretrained if method == "s2mts2" else ""
            assert state["config"]["finetune"]["pretrained"] == used
            metrics = json.loads((folder / method / "eval-test" / "metrics.json").read_text())
            assert metrics["split"] == "test"
            assert metrics["mean_auc"] == pytest.approx(part["methods"][method]["mean_auc"])
            assert 0.0 <= metrics["mean_auc"] <= 1.0
            assert f"| {method} | {metrics['mean_auc']:.4f}" in section
        for a, b in demo.PAIRS:  # paired differences, recomputed from the per-method AUCs
            d = part["paired"][f"{a} - {b}"]
            assert d["difference"] == pytest.approx(
                part["methods"][a]["mean_auc"] - part["methods"][b]["mean_auc"]
            )
            low, high = d["difference_ci95"]
            assert low <= high
            assert f"| {a} - {b} | {d['difference']:+.4f} | {low:+.4f} .. {high:+.4f} |" in section
        for plot in ("comparison.png", "differences.png"):
            assert (folder / plot).read_bytes()[:4] == b"\x89PNG"
    assert results["tasks"]["digits"]["dataset"]["classes"] == [str(d) for d in range(10)]
    assert results["tasks"]["digits"]["dataset"]["labelled"] == 10  # one per digit
    assert [Path(args[0]).name for args, _ in writes] == ["report.md", "results.json"]


def _stage_run(folder: Path, command: str | None) -> None:
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"weights")
    if command is not None:
        (folder / "run.json").write_text(json.dumps({"command": command}))


@pytest.mark.parametrize("command", ["s2mts2 pretrain --config tiny", None])
def test_the_demo_refuses_a_run_it_did_not_write(tmp_path, command):
    _stage_run(tmp_path / "xray" / "s2mts2", "s2mts2 demo")
    _stage_run(tmp_path / "digits" / "pretrain", command)
    with pytest.raises(ConfigError, match=r"digits/pretrain holds a run that `s2mts2 demo` did"):
        demo.run_demo(tmp_path, quick=True, progress=False)
    assert (tmp_path / "digits" / "pretrain" / "last.pt").read_bytes() == b"weights"
    assert (tmp_path / "xray" / "s2mts2" / "last.pt").exists()  # nothing removed


def test_the_demo_refuses_a_prepared_dataset_of_another_kind(tmp_path):
    summary = tmp_path / "digits" / "data" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"dataset": "synthetic"}))  # the other task's adapter
    _stage_run(tmp_path / "xray" / "pretrain", "s2mts2 demo")
    with pytest.raises(
        ConfigError, match=r"holds a prepared synthetic dataset, not the demo's csv"
    ):
        demo.run_demo(tmp_path, quick=True, progress=False)
    assert (tmp_path / "xray" / "pretrain" / "last.pt").exists()
    summary.write_text(json.dumps({"dataset": "csv"}))
    demo.check_demo_folder(tmp_path)  # the demo's own: accepted
