"""Stage 2: semi-supervised mean-teacher fine-tuning (and its supervised baseline).

Per step (:mod:`s2mts2.methods.mean_teacher`): a labelled batch (x, y) and, for
``mean-teacher``/``s2mts2``, an unlabelled batch u:

    L = ℓ_sup(y, f_θ(x)) + w(t) · mean ‖σ(f_θ(u)) − σ(f_θ'(u'))‖²

with u' = u (same view) or an independent view, θ' the EMA teacher (momentum ``ema`` per step),
w(t) ramped.
``s2mts2`` starts student and teacher from a stage-1 student backbone with a new classifier head.
Validation (teacher) picks ``best.pt``, the model a user ships (teacher weights, meta, config:
:func:`~s2mts2.engine.checkpoint.model_state`); ``last.pt`` holds the full state for ``--resume``.

Several processes (``torchrun``, see :mod:`s2mts2.runtime.distributed`): ``finetune.batch_size``
and the unlabelled batch (``batch_size × unlabelled_ratio``) are global batches split over the
ranks, so steps per epoch, the LR schedule and w(t) do not depend on the number of processes
and a run may be resumed with another one. The student is wrapped in DistributedDataParallel;
every rank keeps an identical EMA teacher (floating buffers of student and teacher averaged over
ranks after each step). Losses are per-rank means, averaged through the gradients (with unknown
labels masked, each rank normalises by its own count of known labels). Validation shards the
rows over the ranks and all-gathers the predictions before computing the AUC, so every rank
gets the score of the whole set. Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2mts2.config import RunConfig
from s2mts2.data.loader import Batch, BatchLoader, IndexStream
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import build_eval_transform, classifier_network, mean_teacher_step
from s2mts2.engine.checkpoint import (
    check_new_run,
    load_checkpoint,
    model_state,
    save_checkpoint,
    seed_everything,
)
from s2mts2.engine.history import check_tensorboard
from s2mts2.engine.inference import predict
from s2mts2.engine.loop import epoch_state, run_epochs, start_run
from s2mts2.engine.runinfo import train_log
from s2mts2.engine.schedule import Schedule
from s2mts2.errors import ConfigError
from s2mts2.eval.metrics import table_mean_auc
from s2mts2.losses.consistency import consistency_weight
from s2mts2.losses.supervised import positive_weights
from s2mts2.methods.mean_teacher import MeanTeacherStep
from s2mts2.models.heads import Network, load_backbone_state
from s2mts2.runtime.device import (
    check_compile,
    resolve_precision,
    setup_threads,
)
from s2mts2.runtime.distributed import (
    distributed_session,
    is_main,
    main_first,
    per_rank_batch,
    rank,
    unwrap,
    world_size,
)

log = logging.getLogger("s2mts2")


def stage1_checkpoint(pretrained: str) -> Path:
    """The checkpoint ``finetune.pretrained`` names: a file, or a stage-1 run folder's
    ``last.pt`` (else its ``best.pt``)."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        found = [path / name for name in ("last.pt", "best.pt") if (path / name).is_file()]
        if not found:
            raise ConfigError(
                f"finetune.pretrained: {path} is a folder without last.pt or best.pt; expected "
                "the --out folder of s2mts2 pretrain, or a stage-1 checkpoint file"
            )
        return found[0]
    if not path.is_file():
        raise ConfigError(
            f"finetune.pretrained: {path} does not exist; expected the --out folder of "
            "s2mts2 pretrain, or a stage-1 checkpoint file (its last.pt)"
        )
    return path


def init_from_pretrained(net: Network, pretrained: str, channels: int, backbone: str) -> None:
    """Load the stage-1 *student* backbone of ``pretrained`` (:func:`stage1_checkpoint`) into
    ``net`` (a ``backbone`` network; its head stays new)."""
    if not pretrained:
        raise ConfigError(
            "finetune.method=s2mts2 needs a stage-1 run: --pretrained RUN (the --out folder of "
            "s2mts2 pretrain, or its last.pt; = --set finetune.pretrained=RUN)"
        )
    path = stage1_checkpoint(pretrained)
    state = load_checkpoint(path)
    if state["kind"] != "pretrain":
        raise ConfigError(f"finetune.pretrained: {path} is a {state['kind']} checkpoint")
    if state["meta"]["channels"] != channels:
        raise ConfigError(
            f"finetune.pretrained: {path} was trained on {state['meta']['channels']}-channel "
            f"images, this dataset has {channels}"
        )
    trained = (state.get("config") or {}).get("model", {}).get("backbone")
    if trained is not None and trained != backbone:
        raise ConfigError(
            f"finetune.pretrained: {path} is a {trained} network, this run's model.backbone is "
            f"{backbone}: --set model.backbone={trained}, or a stage-1 checkpoint of {backbone}"
        )
    ignored = load_backbone_state(net, state["student"])
    log.info("loaded the stage-1 backbone of %s (%d head tensors left out)", path, len(ignored))


def checkpoint_meta(cfg: RunConfig, data: PreparedData, n_labelled: int) -> dict[str, Any]:
    """What inference needs to rebuild and feed the network, with no config file at hand."""
    t = data.table
    size = cfg.finetune_size()
    transform = build_eval_transform(t.channels, size).config
    return {
        "classes": t.classes,
        "eval_classes": t.eval_classes,
        "task": t.task,
        "channels": t.channels,
        "size": size,
        "cache_size": data.cache.size,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "backbone": cfg.model.backbone,
        "head_hidden": cfg.model.head_hidden,
        "method": cfg.finetune.method,
        "dataset": t.name,
        "data_dir": str(Path(cfg.data.dir).resolve()),
        "labelled_images": n_labelled,
        "train_images": int(len(t.indices("train"))),
    }


def finetune(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Run stage 2; returns the path of the selected checkpoint (``OUT/best.pt``).

    One process, or every process of a ``torchrun`` launch (see the module docstring).
    """
    if not resume:
        check_new_run(Path(out_dir))
    with (
        distributed_session(cfg.device) as device,
        # the rank, known once the session has started
        train_log(Path(out_dir), command) if is_main() else contextlib.nullcontext(),
    ):
        return _finetune(cfg, Path(out_dir), device, resume, progress, command)


def _finetune(
    cfg: RunConfig, out: Path, device: torch.device, resume: bool, progress: bool, command: str
) -> Path:
    fc = cfg.finetune
    setup_threads(cfg.threads)
    seed_everything(cfg.seed)
    size = cfg.finetune_size()
    data = PreparedData.open(cfg.data.dir, cfg.data.cache_for(size))
    t = data.table
    with main_first():  # may write the labelled-subset file into the data folder
        labelled = data.labelled(cfg.data.labelled_draw())
    unlabelled = np.setdiff1d(t.indices("train"), labelled)
    if len(unlabelled) == 0:
        unlabelled = t.indices("train")
    val = t.indices("val")
    semi = fc.method != "supervised"
    world = world_size()
    batch = min(
        per_rank_batch(fc.batch_size, "finetune.batch_size"), max(1, len(labelled) // world)
    )
    u_global = max(1, round(fc.batch_size * fc.unlabelled_ratio))
    u_batch = (
        per_rank_batch(u_global, "finetune.batch_size × finetune.unlabelled_ratio") if semi else 1
    )

    net = classifier_network(
        cfg.model, t.channels, len(t.classes), init="random" if fc.method == "s2mts2" else None
    )
    if fc.method == "s2mts2":
        init_from_pretrained(net, fc.pretrained, t.channels, cfg.model.backbone)
    elif fc.pretrained and is_main():
        log.warning(
            "finetune.pretrained (%s) is not used: finetune.method is %s, and only s2mts2 starts "
            "from the stage-1 weights (--set finetune.method=s2mts2 to use them)",
            fc.pretrained,
            fc.method,
        )
    precision = resolve_precision(cfg.precision, device, hint=not resume and is_main())
    check_compile(cfg.compile)
    check_tensorboard(cfg.tensorboard)
    pos_weight = None
    if fc.pos_weight and t.task == "multilabel":
        pos_weight = positive_weights(t.labels[labelled]).to(device)
    if fc.select == "val" and len(val) == 0 and is_main():
        log.warning(
            "%s has no validation split: best.pt is the last epoch's (finetune.select: last)",
            cfg.data.dir,
        )
    step_fn = mean_teacher_step(
        cfg, net, t.channels, t.task, device, precision, pos_weight=pos_weight
    )
    net, teacher, optimizer = unwrap(step_fn.student), step_fn.teacher, step_fn.optimizer

    l_stream = IndexStream(labelled, batch, cfg.seed, rank(), world)
    l_loader = BatchLoader(data.images(), l_stream, device, data.rows)
    u_stream = IndexStream(unlabelled, u_batch, cfg.seed + 1, rank(), world)
    u_loader = BatchLoader(data.images(), u_stream, device, data.rows) if semi else None
    schedule = Schedule(
        fc.epochs,
        fc.steps_per_epoch or l_stream.passes_to_steps(1.0),
        fc.lr,
        fc.warmup_epochs,
        batch * world,
    )
    modules = {"student": net, "teacher": teacher, "optimizer": optimizer, "scaler": step_fn.scaler}
    state, history = start_run(
        cfg, out, "finetune", modules, resume=resume, device=device, command=command
    )
    meta = checkpoint_meta(cfg, data, len(labelled))
    log.info(
        "finetune %s: %d labelled, %d unlabelled, %d val images; %d steps/epoch; precision %s",
        fc.method,
        len(labelled),
        len(unlabelled) if semi else 0,
        len(val),
        schedule.steps_per_epoch,
        precision.name,
    )

    def validate() -> float | None:
        """Mean AUC (eval classes) of the teacher on the validation split."""
        probs = predict(teacher.module, data, val, size, device, precision, t.task)
        return table_mean_auc(probs, t.labels[val], t)

    task = MeanTeacherEpochs(
        cfg,
        step_fn,
        (l_loader, u_loader),
        torch.from_numpy(t.labels),
        schedule,
        validate if len(val) else None,
        modules,
        meta,
        out,
        best=state.get("best_val"),
    )
    run_epochs(
        task,
        optimizer,
        start_epoch=state.get("epoch", 0),
        history=history,
        checkpoint=task.last_path,
        device=device,
        seed=cfg.seed,
        stream=1,
        log_every=cfg.log_every,
        progress=progress,
    )
    return task.best_path


class MeanTeacherEpochs:
    """Stage 2's part of the epoch loop (:class:`~s2mts2.engine.loop.EpochTask`): a labelled
    batch (and an unlabelled one, unless supervised) per step at the ramped consistency weight;
    the teacher's validation score every ``finetune.eval_every`` epochs and after the last;
    ``best.pt`` (the model) when it improves, then ``last.pt`` (the full state)."""

    kind = "finetune"
    losses = ("loss", "supervised", "consistency")

    def __init__(
        self,
        cfg: RunConfig,
        step_fn: MeanTeacherStep,
        loaders: tuple[BatchLoader, BatchLoader | None],
        labels: torch.Tensor,
        schedule: Schedule,
        validate: Callable[[], float | None] | None,
        modules: dict[str, Any],
        meta: dict[str, Any],
        out: Path,
        best: float | None,
    ) -> None:
        self.cfg, self.fc, self.step_fn = cfg, cfg.finetune, step_fn
        self.l_loader, self.u_loader = loaders
        self.labels, self.schedule, self.validate = labels, schedule, validate
        self.modules, self.meta, self.best = modules, meta, best
        self.last_path, self.best_path = out / "last.pt", out / "best.pt"
        self.select_on_val = self.fc.select == "val" and validate is not None
        self.weight = 0.0
        self.unwritten_best: dict[str, Any] | None = None  # best.pt's content not yet on disk

    def batches(
        self, epoch: int, first: int, stop: int
    ) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        """(labelled batch, unlabelled uint8 images or None) per step."""
        u_iter = self.u_loader.steps(first, stop) if self.u_loader is not None else None
        try:
            for b in self.l_loader.steps(first, stop):
                yield b, (next(u_iter).images if u_iter is not None else None)
        finally:
            if u_iter is not None:
                u_iter.close()

    def step(
        self, step: int, batch: tuple[Batch, torch.Tensor | None], gen: torch.Generator
    ) -> torch.Tensor:
        fc = self.fc
        self.weight = consistency_weight(
            step / self.schedule.steps_per_epoch,
            max_weight=fc.consistency,
            ramp_epochs=fc.consistency_ramp_epochs,
            kind=fc.consistency_ramp,
        )
        b, u_images = batch
        x, us, ut = self.step_fn.views(b.images, u_images, gen)
        y = self.labels[b.rows].to(x.device, non_blocking=True)
        return torch.stack(self.step_fn.train(x, y, us, ut, self.weight))

    def postfix(self, means: list[float], rate: float) -> dict[str, str]:
        return {
            "loss": f"{means[0]:.3f}",
            "sup": f"{means[1]:.3f}",
            "cons": f"{means[2]:.4f}",
            "w": f"{self.weight:.2f}",
        }

    def row(self, epoch: int, means: list[float], lr: float, seconds: float) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "loss": means[0],
            "supervised": means[1],
            "consistency": means[2],
            "weight": self.weight,
            "lr": lr,
            "seconds": seconds,
        }

    def evaluate(self, epoch: int, row: dict[str, Any], last: bool) -> bool:
        if self.validate is None or not (last or epoch % max(1, self.fc.eval_every) == 0):
            return False
        score = self.validate()
        row["val_mean_auc"] = score
        if score is not None and (self.best is None or score > self.best):
            self.best = score
            return True
        return False

    def describe(self, row: dict[str, Any]) -> str:
        score = row.get("val_mean_auc")
        return (
            f"finetune epoch {row['epoch']}/{self.fc.epochs} loss {row['loss']:.4f} "
            f"(sup {row['supervised']:.4f}, cons {row['consistency']:.5f}, w {row['weight']:.2f})"
            + (f" val mean AUC {score:.4f}" if score else "")
        )

    def save(
        self, rows: list[dict[str, Any]], epoch: int, improved: bool, last: bool, write: bool
    ) -> None:
        state = epoch_state(self, rows, epoch, best_val=self.best)
        if (improved and self.select_on_val) or (last and not self.select_on_val):
            # held until the next write: a copy, as training goes on changing the weights
            best = model_state(state)
            self.unwritten_best = best if write else copy.deepcopy(best)
        if not write:
            return
        if last and self.unwritten_best is None and not self.best_path.exists():
            self.unwritten_best = model_state(state)  # no score to select by: the last epoch
        if self.unwritten_best is not None:  # best first: last.pt's best_val must never name
            save_checkpoint(self.unwritten_best, self.best_path)  # weights not yet on disk
            self.unwritten_best = None
        save_checkpoint(state, self.last_path)
