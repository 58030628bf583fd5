import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from s2mts2.config import config_to_dict, load_config
from s2mts2.engine.checkpoint import (
    config_changes,
    load_checkpoint,
    resume_training,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from s2mts2.errors import ConfigError, DataError


def test_save_is_atomic_and_round_trips(tmp_path: Path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"kind": "pretrain", "w": torch.arange(3), "epoch": 2}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_mode_of_an_ordinary_new_file(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        save_checkpoint({"kind": "pretrain"}, tmp_path / "ck.pt")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = (tmp_path / "ck.pt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"kind": "pretrain", "epoch": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint({"kind": "pretrain", "bad": Boom()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert len(os.listdir(tmp_path)) == 1


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# the raw pickle below uses protocol 4, which torch.load's weights-only unpickler warns about
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_checkpoint_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"kind": "finetune", "x": _Exploit()}, f)
    torch.save({"kind": "finetune", "x": _Exploit()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(DataError, match="refused"):
            load_checkpoint(p)


def test_not_a_checkpoint(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(DataError, match="not an s2mts2 checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    # a text file, an image renamed to .pt: named as such, not as a security refusal
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "image.pt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    for name in ("text.pt", "image.pt"):
        with pytest.raises(DataError, match="not a (readable )?PyTorch checkpoint") as info:
            load_checkpoint(tmp_path / name)
        assert "refused" not in str(info.value)


def test_config_changes_name_what_differs_for_the_stage():
    saved = config_to_dict(load_config("tiny"))
    now = config_to_dict(
        load_config(
            "tiny",
            ["pretrain.views=7", "finetune.lr=0.5", "threads=1", "data.dir=/elsewhere", "seed=3"],
        )
    )
    assert config_changes(saved, now, "pretrain") == [
        f"pretrain.views: {saved['pretrain']['views']} -> 7",
        "seed: 0 -> 3",
    ]
    assert config_changes(saved, now, "finetune") == [
        f"finetune.lr: {saved['finetune']['lr']} -> 0.5",
        "seed: 0 -> 3",
    ]
    older = {**saved, "model": {k: v for k, v in saved["model"].items() if k != "head_hidden"}}
    assert config_changes(older, saved | {"threads": 2}, "pretrain") == []  # predates a setting


def test_the_labelled_draw_may_not_change_on_resume():
    saved = config_to_dict(load_config("tiny"))
    now = config_to_dict(load_config("tiny", ["data.labelled=0.5", "data.split_seed=2"]))
    assert config_changes(saved, now, "finetune") == [
        f"data.labelled: {saved['data']['labelled']} -> 0.5",
        f"data.split_seed: {saved['data']['split_seed']} -> 2",
    ]


def test_a_checkpoint_with_renamed_keys_compares_under_the_new_names():
    saved = config_to_dict(load_config("tiny"))
    fc = dict(saved["finetune"])
    fc["augment"], fc["augment_overrides"] = fc.pop("augment_preset"), fc.pop("augment")
    old = {**saved, "finetune": fc}  # as an earlier version stored it
    assert config_changes(old, saved, "finetune") == []
    now = config_to_dict(load_config("tiny", ["finetune.augment_preset=strong"]))
    assert config_changes(old, now, "finetune") == ["finetune.augment_preset: 'weak' -> 'strong'"]


def test_resume_refuses_the_other_stages_checkpoint(tmp_path: Path):
    net = torch.nn.Linear(2, 2)
    save_checkpoint(training_state("pretrain", {"student": net}, epoch=1), tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="is a pretrain checkpoint, expected finetune"):
        resume_training(tmp_path / "a.pt", "finetune", {"student": torch.nn.Linear(2, 2)})


def test_rng_state_round_trip_through_a_file(tmp_path: Path):
    state = rng_state()
    save_checkpoint({"kind": "pretrain", "rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
