"""The CLI's wiring: every flag reaches the engine function it names (the engine is recorded, not
run; the end-to-end runs are in tests/engine/test_pipeline.py and tests/infer)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from spies import stub

import s2mts2.data.prepared
import s2mts2.engine.evaluate
import s2mts2.engine.finetune
import s2mts2.engine.pretrain
import s2mts2.infer.predict
from s2mts2.cli import main


@pytest.fixture
def record(monkeypatch):
    """record(module, name, result): ``module.name`` returns ``result``; returns its calls."""
    return lambda module, name, result: stub(monkeypatch, module, name, result)


def test_prepare_flags(record, tmp_path, capsys):
    calls = record(s2mts2.data.prepared, "prepare_dataset", {"images": 1})
    argv = ["prepare", "csv", "--root", "r", "--out", str(tmp_path), "--size", "48"]
    argv += ["--labelled-count", "70", "--by-patient", "--seed", "3", "--workers", "2"]
    argv += ["--option", "csv=l.csv", "--option", "channels=1", "--no-progress"]
    assert main(argv) == 0
    ((args, kwargs),) = calls
    assert args == ("csv", Path("r"), tmp_path)
    assert kwargs == {
        "size": 48,
        "labelled": None,
        "labelled_count": 70,
        "seed": 3,
        "by_group": True,
        "workers": 2,
        "progress": False,
        "options": {"csv": "l.csv", "channels": 1},
    }
    assert main(["prepare", "synthetic", "--out", str(tmp_path), "--labelled", "0.2"]) == 0
    assert calls[1][0] == ("synthetic", tmp_path, tmp_path) and calls[1][1]["labelled"] == 0.2
    assert main(["prepare", "csv", "--out", str(tmp_path)]) == 2  # --root required
    assert "prepare csv: --root is required" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_flags(record, tmp_path, stage):
    module = getattr(s2mts2.engine, stage)
    calls = record(module, stage, tmp_path / "last.pt")
    argv = [stage, "--config", "tiny", "--set", "epochs=7", "--out", str(tmp_path), "--resume"]
    argv += ["--set", "data.labelled_count=20"]  # e.g. from a config file: --labelled wins
    argv += ["--no-progress"] + (["--labelled", "0.05"] if stage == "finetune" else [])
    assert main(argv) == 0
    ((args, kwargs),) = calls
    cfg, out = args
    assert out == tmp_path and getattr(cfg, stage).epochs == 7  # stage-relative key
    assert kwargs["resume"] is True and kwargs["progress"] is False
    assert kwargs["command"].startswith(f"s2mts2 {stage} --config tiny")
    if stage == "finetune":
        assert cfg.data.labelled == 0.05 and cfg.data.labelled_count == 0
    else:
        assert cfg.data.labelled_count == 20


def test_evaluate_flags(record, tmp_path):
    calls = record(s2mts2.engine.evaluate, "evaluate_checkpoint", {"report_markdown": "ok"})
    argv = ["evaluate", "best.pt", "--split", "val", "--model", "student", "--data", "d"]
    assert main([*argv, "--out", "o", "--bootstrap", "20", "--device", "cpu"]) == 0
    assert calls == [
        (
            (Path("best.pt"),),
            {
                "split": "val",
                "model": "student",
                "data_dir": Path("d"),
                "out_dir": Path("o"),
                "n_boot": 20,
                "device": "cpu",
            },
        )
    ]


@pytest.mark.parametrize("all_failed, code", [(False, 0), (True, 1)])
def test_predict_flags_and_exit_code(record, all_failed, code):
    result = SimpleNamespace(summary=lambda: "done", all_failed=all_failed)
    calls = record(s2mts2.infer.predict, "run_predict", result)
    argv = ["predict", "best.pt", "a.png", "scans/", "--out", "p.json", "--cam", "cams"]
    argv += ["--batch-size", "8", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--top-k", "2"]) == code
    assert main([*argv, "--classes", "Effusion", "Mass"]) == code
    (args, kwargs), (_, by_name) = calls
    assert args == (Path("best.pt"), ["a.png", "scans/"])
    assert kwargs == {
        "out": Path("p.json"),
        "cam_dir": Path("cams"),
        "cam_classes": None,
        "top_k": 2,
        "cam_layer": None,
        "batch_size": 8,
        "device": "cpu",
        "progress": False,
    }
    assert by_name["cam_classes"] == ["Effusion", "Mass"]
    assert main([*argv, "--cam-layer", "layer2"]) == code
    assert calls[-1][1]["cam_layer"] == "layer2"


def test_errors_and_interruptions_have_their_exit_codes(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(s2mts2.engine.pretrain, "pretrain", interrupted)
    assert main(["pretrain", "--config", "tiny", "--out", str(tmp_path)]) == 130
    assert "interrupted; no epoch had finished, so nothing was saved" in capsys.readouterr().err
    (tmp_path / "last.pt").write_bytes(b"an epoch")
    assert main(["pretrain", "--config", "tiny", "--out", str(tmp_path)]) == 130
    assert f"finished epochs are in {tmp_path}/last.pt: continue with --resume" in (
        capsys.readouterr().err
    )
    assert main(["pretrain", "--config", "tiny", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "s2mts2 pretrain: error: unknown config key" in capsys.readouterr().err
