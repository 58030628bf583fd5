"""The CLI's wiring: every flag reaches the engine function it names (the engine is recorded, not
run; the end-to-end runs are in tests/engine/test_pipeline.py and tests/infer)."""

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from spies import stub

import s2mts2.data.prepared
import s2mts2.engine.evaluate
import s2mts2.engine.finetune
import s2mts2.engine.pretrain
import s2mts2.infer.predict
from s2mts2.cli import build_parser, help_with_default, main
from s2mts2.config import config_to_dict, load_config


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


def test_training_flags_that_name_config_keys_and_paths_taken_from_here(
    record, tmp_path, monkeypatch
):
    calls = record(s2mts2.engine.finetune, "finetune", tmp_path / "best.pt")
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "--config", "ham10000-cpu", "--out", "ft", "--data", "prepared"]
    assert main([*argv, "--pretrained", "pre", "--tensorboard"]) == 0
    cfg = calls[0][0][0]
    assert cfg.data.dir == str(tmp_path / "prepared")  # the preset's paths: from here, absolute
    assert cfg.finetune.pretrained == str(tmp_path / "pre") and cfg.tensorboard is True
    assert main(argv) == 0  # the preset's own stage-1 path, from here too
    assert calls[1][0][0].finetune.pretrained == str(tmp_path / "runs/ham-pre/last.pt")


def test_resume_needs_only_the_run_folder(record, tmp_path, capsys):
    """--resume without --config reads the run's resolved config.yaml; --set still applies."""
    calls = record(s2mts2.engine.pretrain, "pretrain", tmp_path / "last.pt")
    assert main(["pretrain", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {tmp_path} holds no run (no config.yaml)" in err and not calls
    recorded = load_config("tiny", ["pretrain.epochs=7", "data.dir=/data/tiny"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(recorded)))
    assert main(["pretrain", "--out", str(tmp_path), "--resume", "--set", "threads=2"]) == 0
    ((args, kwargs),) = calls
    assert args[0].pretrain.epochs == 7 and args[0].data.dir == "/data/tiny"
    assert args[0].threads == 2 and kwargs["resume"] is True


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
    resume = f"continue with s2mts2 pretrain --out {tmp_path} --resume"
    assert f"finished epochs are in {tmp_path}/last.pt: {resume}" in (capsys.readouterr().err)
    assert main(["pretrain", "--config", "tiny", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "s2mts2 pretrain: error: unknown config key" in capsys.readouterr().err


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"s2mts2": parser, **sub.choices}


@pytest.mark.parametrize("name", list(_subcommands()))
def test_every_argument_has_help_that_shows_its_default(name):
    """Each argument of each subcommand: a help text, and its default in it (required ones have
    none); rendering the help never fails on a stray % sign."""
    parser = _subcommands()[name]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{what}: no help text"
        assert action.required or "default" in help_with_default(action), what
    assert parser.format_help()


def test_help_texts_name_their_stage_and_the_adapter_options():
    commands = _subcommands()
    assert "--set finetune.epochs=5" in commands["finetune"].format_help()
    assert "--set pretrain.epochs=5" in commands["pretrain"].format_help()
    text = commands["prepare"].format_help()
    assert "csv: csv (required), path_column=path" in text and "isic2018: split=auto" in text
    assert "(default: 256)" in text and "(default: auto)" in commands["predict"].format_help()


def test_an_argument_without_a_stated_default_is_caught():
    """What the help test relies on: no default, no mention of one -> no 'default' in the text."""
    parser = argparse.ArgumentParser()
    bare = parser.add_argument("--thing", help="a thing")
    flag = parser.add_argument("--flag", action="store_true", help="a flag")
    valued = parser.add_argument("--n", type=int, default=3, help="a number")
    assert "default" not in help_with_default(bare)
    assert help_with_default(flag) == "a flag (default: off)"
    assert help_with_default(valued) == "a number (default: %(default)s)"
