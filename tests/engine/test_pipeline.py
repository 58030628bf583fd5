"""End-to-end runs of both stages on a tiny generated dataset: resume, heads, consistency, CLI."""

import copy
import json
import logging
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from spies import interrupt_after_first_checkpoint, spy
from state_dicts import max_diff

import s2mts2.engine.builders as builders_mod
import s2mts2.engine.evaluate as evaluate_mod
import s2mts2.engine.finetune as finetune_mod
import s2mts2.engine.loop as loop_mod
import s2mts2.engine.pretrain as pretrain_mod
import s2mts2.methods.contrastive as contrastive_mod
from s2mts2.cli import main
from s2mts2.config import LabelledDraw, load_config
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.checkpoint import load_checkpoint, save_checkpoint
from s2mts2.engine.evaluate import evaluate_checkpoint, load_classifier
from s2mts2.engine.finetune import finetune
from s2mts2.engine.pretrain import pretrain
from s2mts2.engine.schedule import cosine_lr
from s2mts2.errors import ConfigError, DataError, DivergenceError
from s2mts2.methods.contrastive import ContrastiveStep
from s2mts2.methods.mean_teacher import MeanTeacherStep
from s2mts2.runtime.device import Precision

pytestmark = pytest.mark.slow

TINY = ["finetune.method=s2mts2", "finetune.select=val"]  # on top of the `tiny` preset


@pytest.fixture(scope="module")
def data_dir(tiny_data) -> Path:
    return tiny_data


def cfg_for(data_dir: Path, *extra: str):
    return load_config("tiny", [*TINY, f"data.dir={data_dir}", *extra])


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre")
    return pretrain(cfg_for(data_dir), out, progress=False)


def test_pretrain_writes_full_state(pretrained: Path):
    state = load_checkpoint(pretrained)
    assert state["kind"] == "pretrain" and state["epoch"] == 2
    for key in ("student", "teacher", "queue", "optimizer", "rng", "config", "history"):
        assert key in state
    assert state["queue"]["queue"].shape == (64, 128)  # the EMA itself: test_teacher_updates.py
    csv = (pretrained.parent / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch") and len(csv) == 1 + 3  # random-init row + 2 epochs
    assert (pretrained.parent / "config.yaml").exists() and (
        pretrained.parent / "run.json"
    ).exists()


def test_the_knn_monitor_fits_the_labelled_images_and_scores_others(data_dir):
    cfg = cfg_for(data_dir)
    data = PreparedData.open(data_dir, cfg.data.size)
    fit, score = pretrain_mod.monitor_rows(data, cfg)
    assert np.array_equal(fit, data.labelled(cfg.data.labelled_draw()))
    assert np.array_equal(score, data.table.indices("val"))
    data.table.split[data.table.split == "val"] = "train"  # a dataset without a val split
    fit, score = pretrain_mod.monitor_rows(data, cfg)
    train = data.table.indices("train")
    assert np.array_equal(score, np.setdiff1d(train, fit))  # all of them (< 2,000), not fit's


def test_pretrain_resume_matches_uninterrupted_run(
    data_dir, pretrained, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "pre"
    interrupt_after_first_checkpoint(monkeypatch, pretrain_mod)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg_for(data_dir), out, progress=False)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="s2mts2"):
        resumed = load_checkpoint(pretrain(cfg_for(data_dir), out, resume=True, progress=False))
    assert f"resumed {out / 'last.pt'} at epoch 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="s2mts2"):  # again: the run is finished
        pretrain(cfg_for(data_dir), out, resume=True, progress=False)
    assert f"{out / 'last.pt'} is complete (2 of 2 epochs): nothing left to train" in caplog.text
    full = load_checkpoint(pretrained)
    for key in ("student", "teacher", "queue"):
        assert max_diff(resumed[key], full[key]) <= 1e-6, key
    assert resumed["queue"]["ptr"] == full["queue"]["ptr"]
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2]
    for got, want in zip(resumed["history"], full["history"]):  # losses, λ, kNN scores
        assert got.keys() == want.keys()
        for key in want.keys() - {"seconds", "img_s"}:
            assert got[key] == pytest.approx(want[key], abs=1e-5), (want["epoch"], key)


def test_finetune_s2mts2_starts_from_the_stage1_backbone(data_dir, pretrained, monkeypatch):
    seen = {}
    real = finetune_mod.init_from_pretrained

    def spy(net, path, channels, backbone):
        seen["new head"] = {k: v.clone() for k, v in net.head.state_dict().items()}
        real(net, path, channels, backbone)
        seen["backbone"] = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        seen["head"] = {k: v.clone() for k, v in net.head.state_dict().items()}

    monkeypatch.setattr(finetune_mod, "init_from_pretrained", spy)
    cfg = cfg_for(data_dir, "finetune.epochs=1", f"finetune.pretrained={pretrained}")
    finetune(cfg, data_dir.parent / "ft-init", progress=False)
    stage1 = load_checkpoint(pretrained)["student"]
    for k, v in seen["backbone"].items():
        assert torch.equal(v, stage1[f"backbone.{k}"]), k
    assert seen["head"].keys() == seen["new head"].keys() and seen["head"]
    for k, v in seen["head"].items():  # the classifier head stays as initialised
        assert torch.equal(v, seen["new head"][k]), k


def test_a_stage1_checkpoint_of_another_backbone_is_named(data_dir, pretrained, tmp_path):
    cfg = cfg_for(data_dir, "model.backbone=resnet18_small", f"finetune.pretrained={pretrained}")
    with pytest.raises(ConfigError, match=r"is a resnet18 network.*model.backbone=resnet18"):
        finetune(cfg, tmp_path / "other", progress=False)
    cfg = cfg_for(data_dir, f"finetune.pretrained={pretrained}")
    net = finetune_mod.classifier_network(cfg.model, 3, 5)  # an RGB dataset's network
    with pytest.raises(ConfigError, match="trained on 1-channel images, this dataset has 3"):
        finetune_mod.init_from_pretrained(net, str(pretrained), 3, cfg.model.backbone)


def test_s2mts2_needs_a_stage1_run_and_finds_its_checkpoint(data_dir, pretrained, tmp_path):
    with pytest.raises(ConfigError, match="needs a stage-1 run: --pretrained RUN"):
        finetune(cfg_for(data_dir, "finetune.epochs=1"), tmp_path, progress=False)
    assert finetune_mod.stage1_checkpoint(str(pretrained.parent)) == pretrained  # a run folder
    assert finetune_mod.stage1_checkpoint(str(pretrained)) == pretrained
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'empty'} is a folder without")):
        finetune_mod.stage1_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope'} does not exist")):
        finetune_mod.stage1_checkpoint(str(tmp_path / "nope"))


def test_mean_teacher_consistency_is_active(data_dir, tmp_path, caplog):
    # a stage-1 checkpoint named for a method that does not use it: said, not silently dropped
    unused = "finetune.pretrained=runs/pre/last.pt"
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.consistency=5", unused)
    with caplog.at_level(logging.WARNING, logger="s2mts2"):
        best = finetune(cfg, tmp_path / "mt", progress=False)
    assert (
        "finetune.pretrained (runs/pre/last.pt) is not used: finetune.method is mean-teacher"
        in (caplog.text)
    )
    rows = load_checkpoint(best.parent / "last.pt")["history"]
    assert all(r["consistency"] > 0 for r in rows)
    assert all(r["loss"] > r["supervised"] for r in rows)
    sup = finetune(
        cfg_for(data_dir, "finetune.method=supervised"), tmp_path / "sup", progress=False
    )
    sup_state = load_checkpoint(sup.parent / "last.pt")
    assert all(r["consistency"] == 0 for r in sup_state["history"])
    # its teacher never sees training images: its BatchNorm statistics must still be learnt
    means = [v for k, v in sup_state["teacher"].items() if k.endswith("running_mean")]
    assert means and all(v.abs().sum() > 0 for v in means)


def test_consistency_compares_student_with_teacher_and_trains_the_student(data_dir, tmp_path):
    """The consistency term must use the teacher's outputs and give the student gradients."""
    from s2mts2.data.prepared import PreparedData
    from s2mts2.engine.builders import build_augment, classifier_network
    from s2mts2.losses import consistency_loss
    from s2mts2.models.ema import EmaTeacher

    cfg = cfg_for(data_dir)
    data = PreparedData.open(data_dir, 16)
    student = classifier_network(cfg.model, 1, len(data.table.classes))
    teacher = EmaTeacher(student, ema=0.99)
    torch.nn.init.normal_(teacher.module.head.mlp[-1].weight)  # make them differ
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    step = MeanTeacherStep(
        student,
        teacher,
        opt,
        build_augment("weak", 1, 16),
        "multilabel",
        None,
        True,
        Precision("cpu"),
        torch.amp.GradScaler("cpu", enabled=False),
    )
    u8 = torch.from_numpy(np.array(data.images()[:12]))
    x, us, ut = step.views(u8[:4], u8[4:], torch.Generator().manual_seed(0))
    assert not torch.equal(us, ut)  # independent views
    student.train()
    teacher.train()
    # the gradient of the consistency term alone, computed directly on a copy of the student
    reference = copy.deepcopy(student)
    with torch.no_grad():
        teacher_logits = teacher(ut)
    expected = consistency_loss(reference(torch.cat([x, us]))[4:], teacher_logits, "multilabel")
    (0.3 * expected).backward()  # weighted by the ramp's w
    y = torch.full((4, len(data.table.classes)), float("nan"))  # no labels: no supervised term
    loss, sup, cons = step.train(x, y, us, ut, weight=0.3)
    assert sup.item() == 0.0 and loss.item() == pytest.approx(0.3 * cons.item(), rel=1e-6)
    assert cons.item() > 1e-4
    assert cons.item() == pytest.approx(expected.item(), rel=1e-4)
    assert all(p.grad is None for p in teacher.parameters())
    got = dict(student.named_parameters())
    for name, p in reference.named_parameters():
        if p.grad is None:
            assert got[name].grad is None or not got[name].grad.any(), name
            continue
        assert got[name].grad is not None, name
        assert torch.allclose(got[name].grad, p.grad, rtol=1e-4, atol=1e-7), name
    assert student.head.mlp[0].weight.grad.abs().sum() > 0


def test_finetune_resume_matches_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.select=last")
    finetune(cfg, tmp_path / "full", progress=False)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    interrupt_after_first_checkpoint(monkeypatch, finetune_mod)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    finetune(cfg, tmp_path / "cut", resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("student", "teacher"):
        assert max_diff(resumed[key], full[key]) <= 1e-6, key
    # the epoch rows (losses, weights, LRs, validation AUCs) and the best score come back too
    assert resumed["best_val"] == pytest.approx(full["best_val"], abs=1e-6)
    assert len(resumed["history"]) == len(full["history"]) == cfg.finetune.epochs
    for got, want in zip(resumed["history"], full["history"]):
        assert got.keys() == want.keys()
        for key in want.keys() - {"seconds"}:
            assert got[key] == pytest.approx(want[key], abs=1e-5), (want["epoch"], key)


@pytest.mark.parametrize("module", [pretrain_mod, finetune_mod], ids=["pretrain", "finetune"])
def test_each_epoch_continues_the_streams_and_the_schedule_where_the_last_one_stopped(
    data_dir, tmp_path, monkeypatch, module
):
    calls, lrs = [], []

    class RecordingLoader(module.BatchLoader):
        def steps(self, start, stop):
            calls.append((id(self), start, stop))
            return super().steps(start, stop)

    monkeypatch.setattr(module, "BatchLoader", RecordingLoader)
    monkeypatch.setattr(loop_mod, "set_lr", lambda optimizer, lr: lrs.append(lr))
    generators = spy(monkeypatch, loop_mod, "epoch_generator")
    warmup = ["pretrain.warmup_epochs=1", "finetune.warmup_epochs=1"]
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", *warmup)
    run = pretrain if module is pretrain_mod else finetune
    run(cfg, tmp_path / "run", progress=False)
    by_loader: dict[int, list[tuple[int, int]]] = {}
    for loader, start, stop in calls:
        by_loader.setdefault(loader, []).append((start, stop))
    assert len(by_loader) == (1 if module is pretrain_mod else 2)  # stage 2: labelled, unlabelled
    for ranges in by_loader.values():
        per_epoch = ranges[0][1]
        assert per_epoch > 0 and ranges == [(0, per_epoch), (per_epoch, 2 * per_epoch)]
    # one warm-up + cosine over the whole run, not restarted each epoch; new augmentations
    base = (cfg.pretrain if module is pretrain_mod else cfg.finetune).lr
    total = 2 * per_epoch
    assert lrs == [cosine_lr(base, s, total, per_epoch) for s in range(total)]
    assert [args[2] for args, _ in generators] == [0, 1]  # (device, seed, epoch)


def _stage2_streams(monkeypatch, stop_after: int | None = None) -> list:
    """Record the IndexStreams stage 2 builds (labelled, then unlabelled)."""
    streams = []

    class RecordingStream(finetune_mod.IndexStream):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            streams.append(self)
            if len(streams) == stop_after:
                raise KeyboardInterrupt

    monkeypatch.setattr(finetune_mod, "IndexStream", RecordingStream)
    return streams


def test_stage2_streams_are_the_labelled_subset_and_the_other_training_images(
    data_dir, tmp_path, monkeypatch
):
    streams = _stage2_streams(monkeypatch)
    ratio = ["finetune.unlabelled_ratio=1.5", "finetune.batch_size=6"]
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.epochs=1", *ratio)
    finetune(cfg, tmp_path / "run", progress=False)
    data = PreparedData.open(data_dir, cfg.data.size)
    labelled, unlabelled = (np.sort(s.rows) for s in streams)
    assert np.array_equal(labelled, data.labelled(cfg.data.labelled_draw()))
    train = data.table.indices("train")
    assert np.array_equal(unlabelled, np.setdiff1d(train, labelled))  # no val or test image
    assert [s.batch_size for s in streams] == [6, 9]  # unlabelled: ratio × labelled batch
    # every training image labelled: the unlabelled stream is the training set again
    streams.clear()
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.epochs=1", "data.labelled=1")
    finetune(cfg, tmp_path / "all", progress=False)
    assert np.array_equal(np.sort(streams[1].rows), train)


@pytest.mark.parametrize(
    "eval_every, scores, evaluated, best_epoch, best_val",
    [
        (1, [0.6, 0.8, 0.7], [1, 2, 3], 2, 0.8),
        (2, [0.6, 0.8], [2, 3], 3, 0.8),
        (1, [None, None, None], [1, 2, 3], 3, None),  # no AUC (e.g. no positives): the last
    ],
)
def test_stage2_keeps_the_teacher_of_the_best_validation_epoch(
    data_dir, tmp_path, monkeypatch, eval_every, scores, evaluated, best_epoch, best_val
):
    scores = iter(scores)
    monkeypatch.setattr(finetune_mod, "table_mean_auc", lambda *args: next(scores))
    scored = []  # the weights each validation pass ran
    real_predict = finetune_mod.predict

    def recording_predict(net, *args):
        scored.append({k: v.clone() for k, v in net.state_dict().items()})
        return real_predict(net, *args)

    monkeypatch.setattr(finetune_mod, "predict", recording_predict)
    cfg = cfg_for(
        data_dir,
        "finetune.method=mean-teacher",
        "finetune.epochs=3",
        f"finetune.eval_every={eval_every}",
    )
    best = load_checkpoint(finetune(cfg, tmp_path / "run", progress=False))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert [r["epoch"] for r in last["history"] if "val_mean_auc" in r] == evaluated
    assert best["epoch"] == best_epoch and best["best_val"] == last["best_val"] == best_val
    teacher = load_classifier(last).state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in scored[-1].items())  # not the student
    assert max_diff(load_classifier(last, "student").state_dict(), scored[-1]) > 0


@pytest.mark.parametrize("enabled", [True, False])
def test_positive_weights_come_from_the_labelled_images_only(
    data_dir, tmp_path, monkeypatch, enabled
):
    from s2mts2.losses.supervised import positive_weights

    weights = []

    def recording_step(student, teacher, optimizer, augment, task, pos_weight, *rest, **named):
        weights.append(pos_weight)
        raise KeyboardInterrupt  # nothing to train

    monkeypatch.setattr(builders_mod, "MeanTeacherStep", recording_step)
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", f"finetune.pos_weight={enabled}")
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "run", progress=False)
    data = PreparedData.open(data_dir, cfg.data.size)
    if not enabled:
        assert weights == [None]
        return
    labelled = data.labelled(cfg.data.labelled_draw())
    expected = positive_weights(data.table.labels[labelled])  # the unlabelled stay unseen
    assert not torch.equal(
        expected, positive_weights(data.table.labels[data.table.indices("train")])
    )
    assert torch.equal(weights[0], expected)


@pytest.mark.parametrize("select", ["val", "last"])
def test_select_val_without_a_validation_split_says_it_keeps_the_last_epoch(
    data_dir, tmp_path, monkeypatch, caplog, select
):
    real_open = PreparedData.open

    def without_val(*args):
        data = real_open(*args)
        data.table.split[data.table.split == "val"] = "train"
        return data

    def no_training(*args, **named):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_mod.PreparedData, "open", without_val)
    monkeypatch.setattr(builders_mod, "MeanTeacherStep", no_training)
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", f"finetune.select={select}")
    with caplog.at_level(logging.WARNING, logger="s2mts2"), pytest.raises(KeyboardInterrupt):
        finetune(cfg, tmp_path / "run", progress=False)
    said = "has no validation split: best.pt is the last epoch's" in caplog.text
    assert said == (select == "val")


def test_under_ddp_both_stage2_streams_take_this_ranks_slice(data_dir, tmp_path, monkeypatch):
    streams = _stage2_streams(monkeypatch, stop_after=2)
    monkeypatch.setattr(finetune_mod, "rank", lambda: 1)  # as rank 1 of 2 sees it
    monkeypatch.setattr(finetune_mod, "world_size", lambda: 2)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            cfg_for(data_dir, "finetune.method=mean-teacher"), tmp_path / "run", progress=False
        )
    assert [(s.rank, s.world_size) for s in streams] == [(1, 2), (1, 2)]


def test_a_run_folder_is_never_overwritten_and_resume_keeps_the_settings(
    data_dir, pretrained, tmp_path
):
    out = tmp_path / "pre"
    shutil.copytree(pretrained.parent, out)
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        pretrain(cfg_for(data_dir), out, progress=False)
    with pytest.raises(ConfigError, match=r"other settings.*pretrain\.views: 2 -> 3$"):
        pretrain(cfg_for(data_dir, "pretrain.views=3"), out, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"epochs: 2 -> 5\. .*cannot be lengthened: start a new"):
        pretrain(cfg_for(data_dir, "pretrain.epochs=5"), out, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"model\.backbone: 'resnet18' -> 'resnet18_small'"):
        pretrain(
            cfg_for(data_dir, "model.backbone=resnet18_small"), out, resume=True, progress=False
        )
    before = (out / "last.pt").read_bytes()
    # where it runs may change: the finished run resumes and has nothing left to do
    pretrain(cfg_for(data_dir, "threads=1", "log_every=3"), out, resume=True, progress=False)
    assert (out / "last.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="already holds a run"):
        finetune(cfg_for(data_dir), out, progress=False)


def test_best_pt_is_the_shipped_model_and_a_full_best_pt_still_loads(data_dir, tmp_path):
    """best.pt: the teacher's weights, meta, config and the selected epoch; last.pt: the full
    state. A best.pt of the full state (as earlier versions wrote) is read as before."""
    from s2mts2.infer.predict import read_checkpoint

    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.epochs=1")
    best_path = finetune(cfg, tmp_path / "run", progress=False)
    best, last = load_checkpoint(best_path), load_checkpoint(tmp_path / "run" / "last.pt")
    assert set(best) == {"kind", "teacher", "meta", "config", "epoch", "best_val"}
    assert best_path.stat().st_size < 0.6 * (tmp_path / "run" / "last.pt").stat().st_size
    assert best["teacher"].keys() == last["teacher"].keys()  # one epoch: the same teacher
    tensors = {k: v for k, v in last["teacher"].items() if isinstance(v, torch.Tensor)}
    assert tensors and all(torch.equal(best["teacher"][k], v) for k, v in tensors.items())
    full = tmp_path / "old" / "best.pt"
    full.parent.mkdir()
    shutil.copy(tmp_path / "run" / "last.pt", full)
    for path in (best_path, full):
        _, net, info = read_checkpoint(path)
        assert info.classes == best["meta"]["classes"]
        assert max_diff(net.state_dict(), load_classifier(last).state_dict()) == 0


def test_labelled_count_is_used_and_best_is_written_before_last(data_dir, tmp_path, monkeypatch):
    """``data.labelled_count`` replaces the fraction in both stages; an epoch that improves writes
    best.pt before last.pt (last.pt's ``best_val`` must never name weights not yet saved)."""
    writes = []
    real = finetune_mod.save_checkpoint

    def record(state, path):
        writes.append((state["epoch"], Path(path).name))
        real(state, path)

    monkeypatch.setattr(finetune_mod, "save_checkpoint", record)
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "data.labelled_count=30")
    data = PreparedData.open(data_dir, cfg.data.size)
    by_count = data.labelled(LabelledDraw(count=30))
    assert len(by_count) != len(
        data.labelled(LabelledDraw(cfg.data.labelled))
    )  # the two draws differ
    best = finetune(cfg, tmp_path / "n30", progress=False)
    assert load_checkpoint(best)["meta"]["labelled_images"] == len(by_count)
    assert np.array_equal(pretrain_mod.monitor_rows(data, cfg)[0], by_count)
    names: dict[int, list[str]] = {}
    for epoch, name in writes:
        names.setdefault(epoch, []).append(name)
    assert ["best.pt", "last.pt"] in names.values()
    assert all(n in (["best.pt", "last.pt"], ["last.pt"]) for n in names.values()), names


def test_a_checkpoint_interval_holds_the_best_epoch_until_the_final_write(
    data_dir, tmp_path, monkeypatch
):
    """With ``checkpoint_interval`` longer than the run, nothing is written before the last
    epoch; then best.pt (the held copy of the best epoch's teacher, taken before training moved
    the weights on) and last.pt, the same files as a run that writes after every epoch."""
    runs = {}
    for name, interval in (("every", 0), ("end", 1e9)):
        scores = iter([0.9, 0.5, 0.4])  # epoch 1 is the best
        monkeypatch.setattr(finetune_mod, "table_mean_auc", lambda *args, s=scores: next(s))
        writes = []
        real = finetune_mod.save_checkpoint

        def record(state, path, writes=writes, real=real):
            writes.append((state["epoch"], Path(path).name))
            real(state, path)

        monkeypatch.setattr(finetune_mod, "save_checkpoint", record)
        cfg = cfg_for(
            data_dir,
            "finetune.method=mean-teacher",
            "finetune.epochs=3",
            f"checkpoint_interval={interval}",
        )
        best = load_checkpoint(finetune(cfg, tmp_path / name, progress=False))
        runs[name] = (writes, best, load_checkpoint(tmp_path / name / "last.pt"))
        monkeypatch.undo()
    assert runs["every"][0] == [(1, "best.pt"), (1, "last.pt"), (2, "last.pt"), (3, "last.pt")]
    assert runs["end"][0] == [(1, "best.pt"), (3, "last.pt")]  # both after the last epoch
    (_, best_every, last_every), (_, best_end, last_end) = runs["every"], runs["end"]
    assert best_end["epoch"] == best_every["epoch"] == 1 and best_end["best_val"] == 0.9
    assert max_diff(best_end["teacher"], best_every["teacher"]) == 0
    assert max_diff(best_end["teacher"], last_end["teacher"]) > 0  # not the last epoch's
    assert max_diff(last_end["student"], last_every["student"]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_an_interrupted_cuda_run_resumes(data_dir, tmp_path, monkeypatch, stage):
    """``--resume`` of a run on the GPU (it failed there once: RNG states loaded onto the GPU).

    Not compared with an uninterrupted run: CUDA's reductions are not bit-reproducible, and on
    the tiny preset stage 1 turns a 1e-6 relative change of the weights into O(1) differences
    within an epoch (measured on the CPU); on an H200 a resumed and an uninterrupted stage-1
    run ended 0.32 apart (stage 2: within 1e-4).
    ``test_precision.test_resume_restores_a_step_on_its_device`` checks the restored state.
    """
    module = pretrain_mod if stage == "pretrain" else finetune_mod
    cfg = cfg_for(data_dir, "device=cuda", "finetune.method=mean-teacher", "finetune.select=last")
    interrupt_after_first_checkpoint(monkeypatch, module)
    with pytest.raises(KeyboardInterrupt):
        getattr(module, stage)(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    getattr(module, stage)(cfg, tmp_path, resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert resumed["epoch"] == 2 and [r["epoch"] for r in resumed["history"]][-2:] == [1, 2]
    assert all(torch.isfinite(v).all() for v in resumed["student"].values())


def test_both_stages_run_and_resume_in_mixed_precision(data_dir, tmp_path, monkeypatch):
    """bf16 (channels-last) through both stages; fp16 saves and restores its loss scale.

    ``resnet18_small``: torchvision's ResNet-18 at the tiny preset's 16 px hands its last stage
    a 1x1 map, where CPU bf16 convolution backward (oneDNN) returns NaN weight gradients.
    """
    bf16 = ["precision=bf16", "model.backbone=resnet18_small"]
    pre = pretrain(cfg_for(data_dir, *bf16), tmp_path / "pre", progress=False)
    state = load_checkpoint(pre)
    assert state["scaler"] == {} and state["config"]["precision"] == "bf16"
    assert all(torch.isfinite(v).all() for v in state["student"].values())
    ft = cfg_for(data_dir, *bf16, f"finetune.pretrained={pre}", "finetune.epochs=1")
    finetune(ft, tmp_path / "ft", progress=False)
    rows = load_checkpoint(tmp_path / "ft" / "last.pt")["history"]
    assert all(math.isfinite(r["loss"]) and r["consistency"] > 0 for r in rows)

    fp16 = cfg_for(data_dir, "precision=fp16", "pretrain.epochs=2")
    interrupt_after_first_checkpoint(monkeypatch, pretrain_mod)
    with pytest.raises(KeyboardInterrupt):
        pretrain(fp16, tmp_path / "fp16", progress=False)
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "fp16" / "last.pt")["scaler"]
    assert saved["scale"] > 0
    restored = []
    real_load = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(
        torch.amp.GradScaler,
        "load_state_dict",
        lambda self, sd: (restored.append(sd["scale"]), real_load(self, sd)),
    )
    pretrain(fp16, tmp_path / "fp16", resume=True, progress=False)
    assert restored == [saved["scale"]]


def test_a_diverged_epoch_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    poisoned = []
    real_save, real_loss = pretrain_mod.save_checkpoint, contrastive_mod.jcl_loss

    def save_then_poison(state, path):
        real_save(state, path)
        poisoned.append(True)  # every later step's loss is NaN

    monkeypatch.setattr(pretrain_mod, "save_checkpoint", save_then_poison)
    monkeypatch.setattr(
        contrastive_mod,
        "jcl_loss",
        lambda *a, **k: real_loss(*a, **k) * (float("nan") if poisoned else 1.0),
    )
    out = tmp_path / "pre"
    with pytest.raises(DivergenceError, match=r"pretrain epoch 2: loss nan.*last.pt still holds"):
        pretrain(cfg_for(data_dir, "pretrain.epochs=3"), out, progress=False)
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values())


def test_evaluate_scores_the_eval_classes_by_patient_and_checks_the_data(
    data_dir, tmp_path, monkeypatch
):
    data = tmp_path / "data"  # a copy whose mean AUC leaves the last class out
    shutil.copytree(data_dir, data)
    meta = json.loads((data / "table.json").read_text())
    meta["eval_classes"] = meta["classes"][:-1]
    (data / "table.json").write_text(json.dumps(meta))
    ckpt = finetune(
        cfg_for(data, "finetune.method=mean-teacher", "finetune.epochs=1"),
        tmp_path / "ft",
        progress=False,
    )
    assert load_checkpoint(ckpt)["meta"]["eval_classes"] == meta["classes"][:-1]
    calls = spy(monkeypatch, evaluate_mod, "evaluate_predictions")
    metrics = evaluate_checkpoint(ckpt, split="val", data_dir=data, n_boot=20, device="cpu")
    table = PreparedData.open(data, 16).table
    ((_, kwargs),) = calls
    assert kwargs["eval_classes"] == meta["classes"][:-1]
    assert list(kwargs["groups"]) == list(table.groups[table.indices("val")])
    assert len(set(kwargs["groups"])) < len(kwargs["groups"])  # patients with several images
    assert metrics["eval_classes"] == meta["classes"][:-1]
    # the last epoch's checkpoint of the same run: its own folder, best.pt's results kept
    evaluate_checkpoint(tmp_path / "ft" / "last.pt", split="val", n_boot=0, device="cpu")
    for folder, name in (("eval-val", "best.pt"), ("eval-val-last", "last.pt")):
        saved = json.loads((tmp_path / "ft" / folder / "metrics.json").read_text())
        assert Path(saved["checkpoint"]).name == name
    with pytest.raises(DataError, match="the nosuch split has no images"):
        evaluate_checkpoint(ckpt, split="nosuch", data_dir=data, device="cpu")
    meta["classes"][0] = "Renamed"
    (data / "table.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"classes \['Renamed'.* differ from the checkpoint's"):
        evaluate_checkpoint(ckpt, split="val", data_dir=data, device="cpu")


def test_stage2_trains_at_its_own_size_from_a_larger_cache_which_evaluation_reads_too(
    data_dir, tmp_path, monkeypatch
):
    opened = spy(monkeypatch, PreparedData, "open")
    steps = spy(monkeypatch, MeanTeacherStep, "train")
    sizes = ["finetune.size=12", "data.cache_size=16"]  # the tiny data's cache is 16 px
    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.epochs=1", *sizes)
    ckpt = finetune(cfg, tmp_path / "ft", progress=False)
    assert [args[1] for args, _ in opened] == [16]
    assert {tuple(args[1].shape[-2:]) for args, _ in steps} == {(12, 12)}  # labelled views
    assert {tuple(args[3].shape[-2:]) for args, _ in steps} == {(12, 12)}  # teacher's views
    meta = load_checkpoint(ckpt)["meta"]
    assert (meta["size"], meta["cache_size"]) == (12, 16)
    metrics = evaluate_checkpoint(ckpt, split="val", n_boot=0, device="cpu")
    assert [args[1] for args, _ in opened[1:]] == [16] and metrics["mean_auc"] is not None


def test_stage1_crops_from_a_larger_cache_and_trains_at_its_size(data_dir, tmp_path, monkeypatch):
    opened = spy(monkeypatch, PreparedData, "open")
    steps = spy(monkeypatch, ContrastiveStep, "train")
    cfg = cfg_for(data_dir, "data.size=12", "data.cache_size=16", "pretrain.epochs=1")
    state = load_checkpoint(pretrain(cfg, tmp_path / "pre", progress=False))
    assert [args[1] for args, _ in opened] == [16]  # the tiny data's 16 px cache
    assert {tuple(args[1].shape[-2:]) for args, _ in steps} == {(12, 12)}  # query and key views
    assert state["meta"]["size"] == 12


def test_predict_on_the_image_files_equals_evaluation_on_the_cache(data_dir, tmp_path):
    """Inference (files, the checkpoint's stored preprocessing) sees what training and
    evaluation saw (the cache, the evaluation transform)."""
    from s2mts2.infer.predict import run_predict

    cfg = cfg_for(data_dir, "finetune.method=mean-teacher", "finetune.epochs=1")
    ckpt = finetune(cfg, tmp_path / "ft", progress=False)
    data = PreparedData.open(data_dir, cfg.data.size)
    idx = data.table.indices("val")[:6]
    net = load_classifier(load_checkpoint(ckpt))
    cpu = torch.device("cpu")
    expected = finetune_mod.predict(net, data, idx, 16, cpu, Precision("cpu"), "multilabel")
    files = [data.table.paths[i] for i in idx]
    result = run_predict(ckpt, files, out=tmp_path / "p.csv", device="cpu", progress=False)
    got = np.array([p.probabilities for p in result.predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cli_stages_end_to_end(data_dir, pretrained, tmp_path, capsys):
    sets = [a for s in TINY for a in ("--set", s)] + ["--set", f"data.dir={data_dir}"]
    rc = main(
        [
            "finetune",
            "--config",
            "tiny",
            *sets,
            "--set",
            f"finetune.pretrained={pretrained}",
            "--labelled",
            "0.15",
            "--out",
            str(tmp_path / "ft"),
            "--no-progress",
        ]
    )
    assert rc == 0
    rc = main(
        [
            "evaluate",
            str(tmp_path / "ft" / "best.pt"),
            "--split",
            "test",
            "--bootstrap",
            "50",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "ft" / "eval-test" / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_auc"] <= 1.0 and len(metrics["per_class_auc"]) == 5
    assert (tmp_path / "ft" / "eval-test" / "roc.png").stat().st_size > 0
    assert "Mean AUC" in capsys.readouterr().out
    student = ["evaluate", str(tmp_path / "ft" / "best.pt"), "--model", "student", "--device"]
    assert main([*student, "cpu", "--bootstrap", "0"]) == 2  # best.pt ships the teacher only
    assert f"evaluate {tmp_path / 'ft' / 'last.pt'} --model student" in capsys.readouterr().err
    student[1] = str(tmp_path / "ft" / "last.pt")
    assert main([*student, "cpu", "--bootstrap", "0"]) == 0
    assert (
        json.loads((tmp_path / "ft" / "eval-test-student-last" / "metrics.json").read_text())[
            "model"
        ]
        == "student"
    )
    assert (
        json.loads((tmp_path / "ft" / "eval-test" / "metrics.json").read_text())["model"]
        == "teacher"
    )  # the teacher's evaluation is kept


def test_a_run_logs_to_train_log_and_resumes_with_only_its_folder(
    data_dir, tmp_path, monkeypatch, caplog
):
    """train.log: the console's messages without the progress bars, appended on resume, with
    the command and the interruption; --resume needs only --out; run.json names the device."""
    out = tmp_path / "pre"
    interrupt_after_first_checkpoint(monkeypatch, pretrain_mod)
    start = ["pretrain", "--config", "tiny", "--data", str(data_dir), "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="s2mts2"):
        assert main(start) == 130  # interrupted after epoch 1
        monkeypatch.undo()
        assert main(["pretrain", "--out", str(out), "--resume"]) == 0
    log = (out / "train.log").read_text()
    assert log.count("s2mts2 pretrain ") == 2  # each command, appended
    assert "ERROR interrupted" in log and "resumed" in log
    assert "pretrain epoch 1/2" in log and "left" in log
    assert "pretrain epoch 2/2" in log and "run complete" in log
    assert not any(c in log for c in "\r█▏▎▍▌▋▊▉") and "it/s" not in log  # no bars
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert json.loads((out / "run.json").read_text())["device"].startswith("cpu (")


def test_a_run_whose_config_holds_renamed_keys_resumes(data_dir, tmp_path, caplog):
    """OUT/config.yaml and last.pt of an earlier version name finetune.augment_overrides."""
    out = tmp_path / "ft"
    finetune(
        cfg_for(data_dir, "finetune.method=supervised", "finetune.epochs=1"), out, progress=False
    )
    state = load_checkpoint(out / "last.pt")
    fc = state["config"]["finetune"]
    fc["augment"], fc["augment_overrides"] = fc.pop("augment_preset"), fc.pop("augment")
    save_checkpoint(state, out / "last.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    with caplog.at_level(logging.INFO, logger="s2mts2"):
        assert main(["finetune", "--out", str(out), "--resume"]) == 0
    assert "config: finetune.augment_overrides is now finetune.augment" in caplog.messages


def test_cli_errors_are_clear(data_dir, tmp_path, capsys):
    rc = main(["pretrain", "--set", "pretrain.epochz=1", "--out", str(tmp_path)])
    assert rc == 2 and "pretrain.epochz" in capsys.readouterr().err
    rc = main(["pretrain", "--set", f"data.dir={tmp_path}", "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a prepared dataset" in capsys.readouterr().err
    rc = main(["evaluate", str(tmp_path / "none.pt")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def test_ctrl_c_stops_training_with_a_resume_hint(data_dir, tmp_path):
    """SIGINT during a run: exit 130 within seconds, the finished epoch kept for --resume."""
    out = tmp_path / "pre"
    command = [sys.executable, "-m", "s2mts2", "pretrain", "--config", "tiny", "--no-progress"]
    command += ["--set", f"data.dir={data_dir}", "--set", "epochs=10000", "--out", str(out)]
    proc = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (out / "last.pt").is_file(), "no checkpoint was written"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1
