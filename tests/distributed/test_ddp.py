"""Multi-process training (torchrun, Gloo on CPU, 2 processes) against single-process runs.

One ``torchrun`` launch of ``ddp_worker.py`` runs all two-rank jobs (see its docstring); the
single-process references run here. Two more launches run the CLI exactly as users do.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from state_dicts import flat_tensors, max_diff
from toolchain import HAS_C_COMPILER

import s2mts2.runtime.distributed as distributed
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.finetune import finetune
from s2mts2.engine.pretrain import pretrain
from s2mts2.engine.schedule import epoch_generator
from s2mts2.errors import ConfigError
from s2mts2.runtime.distributed import (
    all_gather_rows,
    per_rank_batch,
    shard,
    shuffled_forward,
    sync_batchnorm,
)

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "ddp_worker", Path(__file__).with_name("ddp_worker.py")
)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

TOLERANCE = 1e-5  # 1 vs 2 processes: same steps up to float rounding (measured ~2e-7)


def torchrun(*args: str, logs: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two processes; torchrun's log folder under ``logs`` (its default, a new /tmp/torchelastic_*
    folder per launch, would outlive the test)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--log-dir", str(logs)]
    done = subprocess.run(
        [*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def data_dir(tiny_data) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def two_ranks(data_dir, tmp_path_factory) -> Path:
    """Output folder of the two-rank jobs."""
    out = tmp_path_factory.mktemp("ranks")
    worker_script = str(Path(__file__).with_name("ddp_worker.py"))
    torchrun(worker_script, str(data_dir), str(out), logs=tmp_path_factory.mktemp("logs"))
    return out


def plain_config(data_dir: Path):
    return worker.tiny_config(data_dir, *worker.NO_AUGMENT)


def ranks(out: Path, job: str) -> tuple[dict, dict]:
    return tuple(torch.load(out / f"{job}-rank{r}.pt", weights_only=True) for r in (0, 1))


# --- helpers, single process -------------------------------------------------------------


def test_single_process_helpers_are_identities():
    x = torch.randn(5, 3)
    assert all_gather_rows(x) is x
    assert np.array_equal(shard(np.arange(7)), np.arange(7))
    assert torch.equal(shuffled_forward(lambda t: t * 2, x, seed=0), x * 2)
    assert per_rank_batch(33, "pretrain.batch_size") == 33
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert sync_batchnorm(net, True, torch.device("cpu")) is net  # no CPU SyncBN, no effect


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    assert per_rank_batch(32, "pretrain.batch_size") == 8
    with pytest.raises(ConfigError, match=r"pretrain.batch_size = 30 .* multiple .* 4"):
        per_rank_batch(30, "pretrain.batch_size")
    net = torch.nn.BatchNorm2d(2)
    with pytest.raises(ConfigError, match="model.sync_bn"):
        sync_batchnorm(net, True, torch.device("cpu"))


def test_ranks_draw_different_augmentation_reproducibly():
    cpu = torch.device("cpu")

    def draw(rank: int) -> torch.Tensor:
        return torch.rand(4, generator=epoch_generator(cpu, 0, 3, rank=rank))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(0), torch.rand(4, generator=epoch_generator(cpu, 0, 3)))


# --- two processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_collectives_gather_in_rank_order(two_ranks):
    r0, r1 = ranks(two_ranks, "collectives")
    uneven = torch.cat([torch.arange(6.0).view(3, 2), torch.arange(12.0).view(6, 2) + 100])
    ones = torch.ones(2, 3)
    for r in (r0, r1):
        assert torch.equal(r["uneven"], uneven)
        assert torch.equal(r["one_empty"], ones)
    assert r0["shard"].tolist() == [0, 1, 2, 3] and r1["shard"].tolist() == [4, 5, 6]
    # shuffled forward: the outputs come back in each rank's own order ...
    assert torch.equal(r0["shuffled"], torch.arange(4.0).view(4, 1) * 10)
    assert torch.equal(r1["shuffled"], (torch.arange(4.0).view(4, 1) + 4) * 10)
    # ... although each rank forwarded a permuted mix of the global batch
    forwarded = torch.cat([r0["forwarded"], r1["forwarded"]]).flatten()
    assert sorted(forwarded.tolist()) == list(range(8))
    assert not torch.equal(forwarded, torch.arange(8.0))
    # floating buffers of every module passed: the mean over ranks; integer buffers: their own
    for r, tracked in ((r0, 5), (r1, 6)):
        for i, width in enumerate((2, 3)):
            assert torch.equal(r["averaged"][f"{i}.running_mean"], torch.full((width,), i + 0.5))
            assert torch.equal(r["averaged"][f"{i}.running_var"], torch.full((width,), 15.0))
            assert r["averaged"][f"{i}.num_batches_tracked"].item() == tracked
        assert torch.equal(r["mean"], torch.tensor([1.5, 3.0]))


@pytest.mark.slow
@pytest.mark.parametrize("job", ["pre", "pre-bn", "ft", "ft-bn"])
def test_ranks_hold_identical_teacher_student_and_queue(two_ranks, job):
    r0, r1 = ranks(two_ranks, job)
    for part in r0:
        a, b = flat_tensors(r0[part]), flat_tensors(r1[part])
        for k in a:
            assert torch.equal(a[k], b[k]), f"{job} {part} {k}"
    if job.endswith("bn"):  # BatchNorm ran: its statistics moved away from their initial values
        var = [v for k, v in flat_tensors(r0["teacher"]).items() if k.endswith("running_var")]
        assert var and any((v - 1).abs().max() > 1e-3 for v in var)
    if job.startswith("pre"):  # every rank enqueued the whole global batch of every step
        steps = load_checkpoint(two_ranks / job / "last.pt")["step"]
        assert int(r0["queue"]["ptr"]) == steps * 32 % 64


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_with_the_global_batch(two_ranks, data_dir, tmp_path):
    """No BatchNorm, no augmentation: 2 ranks × 16 images = 1 process × 32 images per step."""
    cfg = plain_config(data_dir)
    with worker.TinyNetworks(batchnorm=False):
        one = load_checkpoint(pretrain(cfg, tmp_path / "pre", progress=False))
        finetune(cfg, tmp_path / "ft", progress=False)
        one_ft = load_checkpoint(tmp_path / "ft" / "last.pt")
    two = load_checkpoint(two_ranks / "pre" / "last.pt")
    two_ft = load_checkpoint(two_ranks / "ft" / "last.pt")
    assert two["step"] == one["step"] == 6
    for key in ("student", "teacher", "queue"):
        assert max_diff(one[key], two[key]) <= TOLERANCE, key
    for key in ("student", "teacher"):
        assert max_diff(one_ft[key], two_ft[key]) <= TOLERANCE, key
    for a, b in zip(one["history"][1:], two["history"][1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # rank mean = global mean
    auc = [r["val_mean_auc"] for r in one_ft["history"]]
    assert [r["val_mean_auc"] for r in two_ft["history"]] == pytest.approx(auc, abs=1e-9)


@pytest.mark.slow
def test_resume_two_processes_from_their_checkpoint(two_ranks):
    full = load_checkpoint(two_ranks / "pre" / "last.pt")
    resumed = load_checkpoint(two_ranks / "pre-cut" / "last.pt")
    for key in ("student", "teacher", "queue", "optimizer"):
        assert max_diff(full[key], resumed[key]) == 0.0, key
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2]


@pytest.mark.slow
def test_resume_a_two_process_run_as_one_process(two_ranks, data_dir, tmp_path):
    cfg = plain_config(data_dir)
    for cut, full, run, keys in (
        ("pre-cut1", "pre", pretrain, ("student", "teacher", "queue")),
        ("ft-cut", "ft", finetune, ("student", "teacher")),
    ):
        shutil.copytree(two_ranks / cut, tmp_path / cut)
        assert load_checkpoint(tmp_path / cut / "last.pt")["epoch"] == 1
        with worker.TinyNetworks(batchnorm=False):
            run(cfg, tmp_path / cut, resume=True, progress=False)
        resumed = load_checkpoint(tmp_path / cut / "last.pt")
        reference = load_checkpoint(two_ranks / full / "last.pt")
        assert resumed["epoch"] == 2
        for key in keys:
            assert max_diff(resumed[key], reference[key]) <= TOLERANCE, (cut, key)


@pytest.mark.slow
@pytest.mark.compiles
def test_torchrun_cli_runs_both_stages(data_dir, tmp_path):
    sets = [
        "data.dir=" + str(data_dir),
        "data.size=16",
        "model.backbone=resnet18",
        "model.proj_hidden=64",
        "model.head_hidden=32",
        "device=cpu",
        "threads=1",
        "epochs=1",
        "pretrain.batch_size=32",
        "pretrain.queue_size=64",
        "finetune.batch_size=8",
        "finetune.steps_per_epoch=2",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    demo = str(REPO / "configs" / "demo.yaml")
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    # stage 1: torch.compile of the DDP student (where a C compiler is there for Inductor)
    compiled = ["--set", "compile=true"] if HAS_C_COMPILER else []
    stage1 = ["-m", "s2mts2", "pretrain", "--config", demo, *flags, *compiled, "--out", str(pre)]
    done = torchrun(*stage1, logs=tmp_path / "logs")
    state = load_checkpoint(pre / "last.pt")
    assert state["kind"] == "pretrain" and state["epoch"] == 1
    assert state["config"]["compile"] is HAS_C_COMPILER
    assert np.isfinite(state["history"][-1]["loss"])
    assert state["history"][-1]["knn_mean_auc"] is not None  # sharded + gathered kNN monitor
    assert done.stderr.count("pretrain epoch 1/1") == 1  # rank 0 alone logs
    assert done.stderr.count("compile: the first training steps compile") == int(HAS_C_COMPILER)
    pretrained = f"finetune.pretrained={pre / 'last.pt'}"
    stage2 = ["-m", "s2mts2", "finetune", "--config", demo, *flags, "--set", pretrained]
    torchrun(*stage2, "--out", str(ft), logs=tmp_path / "logs")
    state = load_checkpoint(ft / "last.pt")
    assert state["kind"] == "finetune" and state["epoch"] == 1
    assert 0.0 <= state["history"][-1]["val_mean_auc"] <= 1.0
    assert load_checkpoint(ft / "best.pt")["best_val"] == state["best_val"]
    assert (ft / "metrics.csv").read_text().count("\n") == 2
