"""Two-rank jobs for test_ddp.py, run as ``torchrun --standalone --nproc_per_node 2 THIS DATA OUT``.

The script creates the Gloo group itself, so the engine uses it and leaves it alone; it runs
every job on both ranks, one after another:

- ``pre``: stage 1, a tiny network without BatchNorm, augmentation off, 2 epochs;
- ``pre-cut``: the same, interrupted after epoch 1 (a copy goes to ``pre-cut1``), then resumed;
- ``pre-bn``: stage 1 with BatchNorm (shuffled BN, ``own`` buffers), strong augmentation;
- ``ft`` / ``ft-cut``: stage 2 mean teacher without BatchNorm, full / interrupted after epoch 1;
- ``ft-bn``: stage 2 mean teacher with BatchNorm;
- ``collectives``: the gather / shard / shuffle / averaging helpers on known tensors.

Each job writes rank 0's run folder ``OUT/<job>/`` and ``OUT/<job>-rank<r>.pt``: every rank's
in-memory student, teacher (and queue) at the end. Helpers are shared with the test module.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import s2mts2.engine.finetune as finetune_mod
import s2mts2.engine.loop as loop_mod
import s2mts2.engine.pretrain as pretrain_mod
from s2mts2.config import ModelConfig, RunConfig, load_config
from s2mts2.methods.contrastive import ContrastiveStep
from s2mts2.methods.mean_teacher import MeanTeacherStep
from s2mts2.models.heads import ClassifierHead, Network, ProjectionHead
from s2mts2.runtime.distributed import (
    all_gather_rows,
    average_buffers,
    mean_over_ranks,
    shard,
    shuffled_forward,
)

FEATURES = 16

TINY = ("finetune.method=mean-teacher",)  # on top of the `tiny` preset
# Every random choice of the augmentation switched off: views = the resized, normalised images.
NO_AUGMENT = tuple(
    f"{section}.{key}={value}"
    for section in ("pretrain.augment", "finetune.augment")
    for key, value in (
        ("crop_scale_min", 1.0),
        ("rotate_deg", 0.0),
        ("hflip_p", 0.0),
        ("jitter_p", 0.0),
        ("blur_p", 0.0),
        ("erase_p", 0.0),
    )
)


def tiny_config(data_dir: Path, *extra: str) -> RunConfig:
    return load_config("tiny", [*TINY, f"data.dir={data_dir}", *extra])


class TinyNetworks:
    """Context: both stages build a two-conv backbone (BatchNorm optional) with their usual heads.

    Far cheaper than the configured backbone to train and checkpoint, so the runs stay short.
    """

    def __init__(self, batchnorm: bool) -> None:
        self.batchnorm = batchnorm

    def backbone(self, channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in (8, FEATURES):
            norm = [nn.BatchNorm2d(width)] if self.batchnorm else []
            layers += [nn.Conv2d(channels, width, 3, padding=1), *norm, nn.ReLU()]
            channels = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def pretrain_network(self, cfg: ModelConfig, channels: int) -> Network:
        head = ProjectionHead(FEATURES, cfg.proj_hidden or None, cfg.proj_dim)
        return Network(self.backbone(channels), head)

    def classifier_network(
        self, cfg: ModelConfig, channels: int, classes: int, init: str | None = None
    ) -> Network:
        return Network(self.backbone(channels), ClassifierHead(FEATURES, classes, cfg.head_hidden))

    def __enter__(self) -> None:
        self.saved = (pretrain_mod.pretrain_network, finetune_mod.classifier_network)
        pretrain_mod.pretrain_network = self.pretrain_network
        finetune_mod.classifier_network = self.classifier_network

    def __exit__(self, *exc: object) -> None:
        pretrain_mod.pretrain_network, finetune_mod.classifier_network = self.saved


class Interrupted(Exception):
    """Raised on every rank at the barrier after the first epoch's checkpoint."""


class InterruptAfterFirstEpoch:
    """Context: the epoch loop's end-of-epoch barrier raises ``Interrupted`` the first time."""

    module = loop_mod

    def __enter__(self) -> None:
        self.real = self.module.barrier

        def barrier_then_stop() -> None:
            self.real()
            raise Interrupted

        self.module.barrier = barrier_then_stop

    def __exit__(self, *exc: object) -> None:
        self.module.barrier = self.real


class LastStep:
    """Context: remembers the step object (ContrastiveStep / MeanTeacherStep) a run trains with."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.step: Any = None

    def __enter__(self) -> LastStep:
        self.real = self.cls.train
        real, holder = self.real, self

        def train(step: Any, *args: Any, **kwargs: Any) -> Any:
            holder.step = step
            return real(step, *args, **kwargs)

        self.cls.train = train
        return self

    def __exit__(self, *exc: object) -> None:
        self.cls.train = self.real


def dump_step(step: Any, path: Path) -> None:
    student = step.student.module if hasattr(step.student, "module") else step.student
    state = {"student": student.state_dict(), "teacher": step.teacher.state_dict()}
    if hasattr(step, "queue"):
        state["queue"] = step.queue.state_dict()
    torch.save(state, path)


def run_job(name: str, run: Callable[[RunConfig, Path], Any], cfg: RunConfig, out: Path) -> None:
    cls = ContrastiveStep if run is pretrain_mod.pretrain else MeanTeacherStep
    with LastStep(cls) as last:
        run(cfg, out / name, progress=False)
    dump_step(last.step, out / f"{name}-rank{torch.distributed.get_rank()}.pt")


def interrupted(run: Callable[..., Any], cfg: RunConfig, folder: Path) -> None:
    try:
        with InterruptAfterFirstEpoch():
            run(cfg, folder, progress=False)
    except Interrupted:
        return
    raise AssertionError("the run was not interrupted")


def collectives(out: Path, rank: int) -> None:
    """Results of the helpers on rank-dependent inputs (rank r holds 3·(r+1) rows)."""
    rows = torch.arange(6.0 * (rank + 1)).view(-1, 2) + 100 * rank
    seen = []

    def times_ten(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x * 10

    mine = torch.arange(4.0).view(4, 1) + 4 * rank
    norms = (nn.BatchNorm1d(2), nn.BatchNorm1d(3))  # rank-dependent statistics
    for i, bn in enumerate(norms):
        bn.running_mean.fill_(rank + i)
        bn.running_var.fill_(10.0 * (rank + 1))
        bn.num_batches_tracked.fill_(5 + rank)
    average_buffers(*norms)
    result = {
        "uneven": all_gather_rows(rows),
        "one_empty": all_gather_rows(torch.ones(2, 3) if rank == 0 else torch.empty(0)),
        "shard": torch.from_numpy(shard(np.arange(7))),
        "shuffled": shuffled_forward(times_ten, mine, seed=3),
        "forwarded": seen[0],
        "averaged": {
            f"{i}.{k}": v for i, bn in enumerate(norms) for k, v in bn.state_dict().items()
        },
        "mean": mean_over_ranks(torch.tensor([1.0, 2.0]) * (rank + 1)),
    }
    torch.save(result, out / f"collectives-rank{rank}.pt")


def main(data_dir: Path, out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = torch.distributed.get_rank()
    collectives(out, rank)
    plain = tiny_config(data_dir, *NO_AUGMENT)
    with TinyNetworks(batchnorm=False):
        run_job("pre", pretrain_mod.pretrain, plain, out)
        interrupted(pretrain_mod.pretrain, plain, out / "pre-cut")
        if rank == 0:
            shutil.copytree(out / "pre-cut", out / "pre-cut1")
        torch.distributed.barrier()
        pretrain_mod.pretrain(plain, out / "pre-cut", resume=True, progress=False)
        run_job("ft", finetune_mod.finetune, plain, out)
        interrupted(finetune_mod.finetune, plain, out / "ft-cut")
    with_bn = tiny_config(data_dir, "pretrain.epochs=1", "finetune.epochs=1")
    with TinyNetworks(batchnorm=True):
        run_job("pre-bn", pretrain_mod.pretrain, with_bn, out)
        run_job("ft-bn", finetune_mod.finetune, with_bn, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
