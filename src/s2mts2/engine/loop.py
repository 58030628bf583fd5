"""The epoch loop of both stages.

Per step: the learning rate of the cosine schedule, then the stage's step. Per epoch: the mean
of the step sums over steps and ranks, the finite check, the stage's evaluation, the history
row and log line, the stage's checkpoints (rank 0), a barrier. What differs between stage 1 and
stage 2 is an :class:`EpochTask`; the loop itself knows no method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from time import monotonic
from typing import Any, Protocol

import torch
from tqdm import tqdm

from s2mts2.config import RunConfig, config_to_dict
from s2mts2.engine.checkpoint import check_finite, resume_training, training_state
from s2mts2.engine.history import History, RunClock
from s2mts2.engine.runinfo import write_run_info
from s2mts2.engine.schedule import Schedule, epoch_generator, set_lr
from s2mts2.runtime.distributed import barrier, is_main, mean_over_ranks, rank

log = logging.getLogger("s2mts2")


class EpochTask(Protocol):
    """One stage's part of the loop.

    ``kind`` ("pretrain" / "finetune") names the progress bar, the checkpoints and a diverged
    epoch's error; ``losses`` names the (len(losses),) sums that ``step`` returns (the first is
    the loss); each must stay finite.
    """

    kind: str
    losses: tuple[str, ...]
    cfg: RunConfig
    schedule: Schedule
    modules: dict[str, Any]  # what a checkpoint holds the state of: networks, queue, optimiser
    meta: dict[str, Any]  # what the checkpoint says about the data and the model

    def batches(self, epoch: int, first: int, stop: int) -> Iterator[Any]:
        """The inputs of steps ``first`` .. ``stop - 1`` (the epoch ``epoch``, 0-based)."""
        ...

    def step(self, step: int, batch: Any, gen: torch.Generator) -> torch.Tensor:
        """One optimiser step on ``batch``; (len(losses),) values to sum over the epoch."""
        ...

    def postfix(self, means: list[float], rate: float) -> dict[str, str]:
        """The progress bar's figures from the running means and images per second."""
        ...

    def row(self, epoch: int, means: list[float], lr: float, seconds: float) -> dict[str, Any]:
        """The history row of a finished epoch (1-based) from its mean sums."""
        ...

    def evaluate(self, epoch: int, row: dict[str, Any], last: bool) -> bool:
        """Score the model after epoch ``epoch`` into ``row`` when due; True when it improved."""
        ...

    def describe(self, row: dict[str, Any]) -> str:
        """The epoch's log line, without the time left."""
        ...

    def save(
        self, rows: list[dict[str, Any]], epoch: int, improved: bool, last: bool, write: bool
    ) -> None:
        """After ``epoch`` (rank 0 only; ``rows`` the whole history): write the checkpoints when
        ``write``, else keep in memory what they would have to hold (the best weights)."""
        ...


def start_run(
    cfg: RunConfig,
    out: Path,
    kind: str,
    modules: dict[str, Any],
    *,
    resume: bool,
    device: torch.device,
    command: str,
) -> tuple[dict[str, Any], History | None]:
    """Restore ``out/last.pt`` into ``modules`` when resuming (else the state is ``{}``); on rank
    0 also the run's history (``None`` elsewhere) and ``run.json``."""
    state = resume_training(out / "last.pt", kind, modules, config_to_dict(cfg)) if resume else {}
    history = History(out, state.get("history", []), cfg.tensorboard) if is_main() else None
    if is_main():
        write_run_info(out, cfg, command, device)
    return state, history


def epoch_state(
    task: EpochTask, rows: list[dict[str, Any]], epoch: int, **values: Any
) -> dict[str, Any]:
    """The full training state after ``epoch`` (1-based): ``task.modules``, the RNGs, the
    history ``rows``, config, meta and ``values``."""
    return training_state(
        task.kind,
        task.modules,
        epoch=epoch,
        step=epoch * task.schedule.steps_per_epoch,
        history=rows,
        config=config_to_dict(task.cfg),
        meta=task.meta,
        **values,
    )


def run_epochs(
    task: EpochTask,
    optimizer: torch.optim.Optimizer,
    *,
    start_epoch: int,
    history: History | None,
    checkpoint: Path,
    device: torch.device,
    seed: int,
    stream: int,
    log_every: int,
    progress: bool,
) -> None:
    """Train epochs ``start_epoch`` .. ``task.schedule.epochs - 1`` of ``task``.

    ``stream`` separates the stages' augmentation RNGs (:func:`epoch_generator`); ``checkpoint``
    is the file a diverged epoch's error names as still holding the last good state.
    """
    schedule = task.schedule
    n = schedule.steps_per_epoch
    clock = RunClock(start_epoch, schedule.epochs)
    interval = task.cfg.checkpoint_interval
    written = monotonic()  # when the checkpoints were last written
    for epoch in range(start_epoch, schedule.epochs):
        gen = epoch_generator(device, seed, epoch, stream=stream, rank=rank())
        first = epoch * n
        t0 = time.perf_counter()
        bar = tqdm(
            task.batches(epoch, first, first + n),
            total=n,
            desc=f"{task.kind} {epoch + 1}/{schedule.epochs}",
            disable=not (progress and is_main()),
            leave=False,
        )
        sums = torch.zeros(len(task.losses), device=device)
        for i, batch in enumerate(bar):
            set_lr(optimizer, schedule.lr_at(first + i))
            sums += task.step(first + i, batch, gen)
            if (i + 1) % log_every == 0 or i + 1 == n:
                rate = (i + 1) * schedule.images_per_step / (time.perf_counter() - t0)
                bar.set_postfix(task.postfix((sums / (i + 1)).tolist(), rate))
        seconds = time.perf_counter() - t0
        means = [v / n for v in mean_over_ranks(sums).tolist()]
        row = task.row(epoch + 1, means, schedule.lr_at(first + n - 1), seconds)
        check_finite({k: row[k] for k in task.losses}, task.kind, epoch + 1, checkpoint)
        last = epoch + 1 == schedule.epochs
        improved = task.evaluate(epoch + 1, row, last)
        if history is not None:
            history.add(row)
            log.info("%s; %s", task.describe(row), clock.left(epoch + 1))
            write = last or monotonic() - written >= interval
            task.save(history.rows, epoch + 1, improved, last, write)
            if write:
                written = monotonic()
        barrier()
