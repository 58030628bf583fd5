"""The epoch loop on a scripted task: what it sums, schedules, checks, records and saves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from s2mts2.config import RunConfig
from s2mts2.engine.history import History
from s2mts2.engine.loop import epoch_state, run_epochs
from s2mts2.engine.schedule import Schedule, cosine_lr
from s2mts2.errors import DivergenceError


class ScriptedTask:
    """Steps return (step, 2·step) as (loss, other); evaluation scores the epoch number and
    improves on odd epochs; everything the loop calls is recorded in order."""

    kind = "scripted"
    losses = ("loss", "other")

    def __init__(self, schedule: Schedule, poison_epoch: int | None = None) -> None:
        self.cfg, self.schedule, self.meta = RunConfig(), schedule, {"what": "test"}
        self.net = torch.nn.Linear(2, 1)
        self.modules = {"student": self.net}
        self.poison_epoch = poison_epoch
        self.calls: list[tuple[Any, ...]] = []
        self.lrs: list[float] = []

    def batches(self, epoch: int, first: int, stop: int):
        self.calls.append(("batches", epoch, first, stop))
        return iter(range(first, stop))

    def step(self, step: int, batch: int, gen: torch.Generator) -> torch.Tensor:
        assert batch == step
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        bad = self.poison_epoch is not None and step // self.schedule.steps_per_epoch + 1 == (
            self.poison_epoch
        )
        return torch.tensor([math.nan if bad else float(step), 2.0 * step])

    def postfix(self, means: list[float], rate: float) -> dict[str, str]:
        return {"loss": f"{means[0]:.1f}"}

    def row(self, epoch: int, means: list[float], lr: float, seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "loss": means[0], "other": means[1], "lr": lr}

    def evaluate(self, epoch: int, row: dict[str, Any], last: bool) -> bool:
        self.calls.append(("evaluate", epoch, last))
        row["score"] = float(epoch)
        return epoch % 2 == 1

    def describe(self, row: dict[str, Any]) -> str:
        return f"epoch {row['epoch']}"

    def save(
        self, rows: list[dict[str, Any]], epoch: int, improved: bool, last: bool, write: bool
    ) -> None:
        self.calls.append(("save", epoch, improved, last, len(rows), write))
        self.state = epoch_state(self, rows, epoch, best_val=1.0)


def _run(tmp_path: Path, task: ScriptedTask, start: int = 0, main: bool = True) -> History:
    task.optimizer = torch.optim.SGD(task.net.parameters(), lr=1.0)
    history = History(tmp_path, []) if main else None
    run_epochs(
        task,
        task.optimizer,
        start_epoch=start,
        history=history,
        checkpoint=tmp_path / "last.pt",
        device=torch.device("cpu"),
        seed=0,
        stream=0,
        log_every=1,
        progress=False,
    )
    return history


def test_the_loop_sums_schedules_evaluates_records_and_saves_each_epoch(tmp_path):
    schedule = Schedule(epochs=3, steps_per_epoch=4, lr=0.5, warmup_epochs=1)
    task = ScriptedTask(schedule)
    history = _run(tmp_path, task, start=1)  # resumed after epoch 1
    # the learning rate of every step of the whole run's schedule, from the resumed step on
    assert task.lrs == [cosine_lr(0.5, s, 12, 4) for s in range(4, 12)]
    # means over the epoch's steps, the last step's LR, the evaluation's score in the row
    assert history.rows == [
        {"epoch": 2, "loss": 5.5, "other": 11.0, "lr": cosine_lr(0.5, 7, 12, 4), "score": 2.0},
        {"epoch": 3, "loss": 9.5, "other": 19.0, "lr": cosine_lr(0.5, 11, 12, 4), "score": 3.0},
    ]
    assert task.calls == [
        ("batches", 1, 4, 8),
        ("evaluate", 2, False),
        ("save", 2, False, False, 1, True),  # saved after the row is in the history
        ("batches", 2, 8, 12),
        ("evaluate", 3, True),
        ("save", 3, True, True, 2, True),
    ]
    state = task.state
    assert (state["kind"], state["epoch"], state["step"], state["best_val"]) == (
        "scripted",
        3,
        12,
        1.0,
    )
    assert state["meta"] == {"what": "test"} and "rng" in state and "student" in state
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,loss,other,lr,score"


def test_a_non_finite_epoch_stops_before_its_evaluation_and_checkpoint(tmp_path):
    task = ScriptedTask(Schedule(epochs=3, steps_per_epoch=2, lr=0.1), poison_epoch=2)
    with pytest.raises(DivergenceError, match=r"scripted epoch 2: loss nan.*no checkpoint"):
        _run(tmp_path, task)
    assert [c[0] for c in task.calls] == ["batches", "evaluate", "save", "batches"]


def test_ranks_other_than_the_first_record_and_save_nothing(tmp_path):
    task = ScriptedTask(Schedule(epochs=2, steps_per_epoch=2, lr=0.1))
    _run(tmp_path, task, main=False)
    assert [c[0] for c in task.calls] == ["batches", "evaluate"] * 2
    assert not (tmp_path / "metrics.csv").exists()


def test_a_checkpoint_interval_writes_when_it_has_passed_and_always_after_the_last_epoch(
    tmp_path, monkeypatch
):
    """``checkpoint_interval`` seconds: the loop asks for a write once that much time has passed
    since the last one (the clock is scripted: 4 s per epoch), and after the final epoch."""
    import s2mts2.engine.loop as loop_mod

    task = ScriptedTask(Schedule(epochs=6, steps_per_epoch=2, lr=0.1))
    clock = {"now": 100.0}
    step = task.step

    def timed_step(*args):  # every step takes 2 s of the scripted clock
        clock["now"] += 2.0
        return step(*args)

    task.step = timed_step
    monkeypatch.setattr(loop_mod, "monotonic", lambda: clock["now"])
    task.cfg.checkpoint_interval = 7.0
    _run(tmp_path, task)
    writes = [c[5] for c in task.calls if c[0] == "save"]
    # 4 s, 8 s (write), 4 s, 8 s (write), 4 s, the last epoch (write)
    assert writes == [False, True, False, True, False, True]
    task = ScriptedTask(Schedule(epochs=3, steps_per_epoch=1, lr=0.1))  # default: 0 = each epoch
    _run(tmp_path / "default", task)
    assert [c[5] for c in task.calls if c[0] == "save"] == [True, True, True]
