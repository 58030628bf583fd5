"""Stage 1: self-supervised mean-teacher pre-training with JCL (or MoCo's InfoNCE).

Per step (:mod:`s2mts2.methods.contrastive`, docs/method.md): 1 query view + M key views of
every image, made on the device from the uint8 cache; student -> q (B, D); teacher (EMA of the student, no gradient) -> keys (B, M, D);
loss = jcl_loss(q, keys, queue, τ, λ_t); SGD step; teacher EMA update; enqueue μ (as is, or μ/|μ|
with ``pretrain.queue_entries: normalised_mean``).
Every epoch ends with an atomic full-state checkpoint ``OUT/last.pt``; ``resume=True`` continues
from it and reproduces the uninterrupted run.

Several processes (``torchrun``, see :mod:`s2mts2.runtime.distributed`):

- ``pretrain.batch_size`` is the global batch; rank r trains on slice r of it (batch / world
  images). Steps per epoch, the LR schedule and λ_t depend on the global batch only, so they are
  the same for any number of processes and the LR needs no scaling; a run may be resumed with
  a different number of processes.
- The student is wrapped in DistributedDataParallel (gradients averaged = gradient of the
  global batch's mean loss). Every rank keeps its own EMA teacher and queue, updated
  identically: the teacher's parameters follow identical students, the floating buffers of
  student and teacher are averaged over ranks after each step (the BatchNorm running mean then
  follows the mean of the global batch's statistics), and the queue receives the mean keys of
  the whole global batch (all-gathered in rank order = the single-process order).
- ``pretrain.shuffle_bn`` (default true): the teacher forwards a random cross-rank permutation of
  the global batch's key views (MoCo's batch-shuffle BN), so a query and its keys are not
  normalised with the same per-rank BatchNorm statistics. ``model.sync_bn`` (CUDA only)
  converts student and teacher to SyncBatchNorm instead (shuffling is then skipped).
- Each rank draws its own augmentation (generator seeded by seed, epoch, rank); everything else
  a step does is a pure function of (seed, step). Rank 0 alone logs, shows progress, writes
  metrics and checkpoints (holding no rank-specific state); the others wait at a barrier.
  For a network without BatchNorm and with augmentation off, N processes take the same steps
  as one process, up to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2mts2.config import PretrainConfig, RunConfig
from s2mts2.data.loader import Batch, BatchLoader, IndexStream
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import build_eval_transform, contrastive_step, pretrain_network
from s2mts2.engine.checkpoint import (
    check_new_run,
    save_checkpoint,
    seed_everything,
)
from s2mts2.engine.history import check_tensorboard
from s2mts2.engine.inference import forward_rows
from s2mts2.engine.loop import epoch_state, run_epochs, start_run
from s2mts2.engine.runinfo import train_log
from s2mts2.engine.schedule import Schedule
from s2mts2.errors import ConfigError
from s2mts2.eval.knn import knn_scores
from s2mts2.eval.metrics import table_mean_auc
from s2mts2.methods.contrastive import ContrastiveStep, lambda_at
from s2mts2.runtime.device import (
    Precision,
    check_compile,
    resolve_precision,
    setup_threads,
)
from s2mts2.runtime.distributed import (
    all_gather_rows,
    distributed_session,
    is_main,
    main_first,
    per_rank_batch,
    rank,
    shard,
    unwrap,
    world_size,
)

log = logging.getLogger("s2mts2")


def checked_queue_size(pc: PretrainConfig, images: int) -> int:
    """K for ``images`` training images: ``pretrain.queue_size``, at most ``images``.

    A queue as large as the training set holds every image's previous mean key: each query's own
    entry is left out of its negatives (``exclude_own_keys``), but the oldest entries are then a
    whole epoch old, from a teacher that has moved since; K well below N keeps them fresh.
    """
    if pc.queue_size >= images:
        log.warning(
            "pretrain.queue_size=%d: the queue would hold the key of every one of the %d training "
            "images (each query's own earlier key among them%s, and keys up to an epoch old); "
            "using K=%d. A queue of at most half the training images is recommended",
            pc.queue_size,
            images,
            ", left out of its negatives" if pc.exclude_own_keys else ", as a negative",
            images,
        )
    return min(pc.queue_size, images)


def monitor_rows(data: PreparedData, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Table rows to fit (labelled train) and score (val, else ≤2,000 unlabelled train) the kNN."""
    fit = data.labelled(cfg.data.labelled_draw())
    score = data.table.indices("val")
    if len(score) == 0:
        rest = np.setdiff1d(data.table.indices("train"), fit)
        score = np.random.default_rng(0).permutation(rest)[:2000]
    return fit[:5000], np.sort(score)


def knn_probs(
    backbone: torch.nn.Module,
    data: PreparedData,
    fit: np.ndarray,
    score: np.ndarray,
    size: int,
    device: torch.device,
    precision: Precision,
    k: int,
    temperature: float,
) -> torch.Tensor:
    """(len(score), C) kNN class scores of the ``score`` rows from the labelled ``fit`` rows
    (``k`` neighbours, similarity weights at ``temperature``).

    Features are the backbone's pooled outputs (eval mode, evaluation transform). Under DDP each
    rank embeds its shard of the rows; the features are all-gathered first.
    """
    was_training = backbone.training
    backbone.eval()
    transform = build_eval_transform(data.table.channels, size)
    images = data.images()
    f_fit = all_gather_rows(
        forward_rows(backbone, images, data.rows[shard(fit)], transform, device, precision)
    )
    f_score = all_gather_rows(
        forward_rows(backbone, images, data.rows[shard(score)], transform, device, precision)
    )
    backbone.train(was_training)
    return knn_scores(
        f_fit, torch.from_numpy(data.table.labels[fit]), f_score, k=k, temperature=temperature
    )


def pretrain(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Run stage 1 and return the path of the final checkpoint (``OUT/last.pt``).

    One process, or every process of a ``torchrun`` launch (see the module docstring).
    """
    if not resume:
        check_new_run(Path(out_dir))
    with (
        distributed_session(cfg.device) as device,
        # the rank, known once the session has started
        train_log(Path(out_dir), command) if is_main() else contextlib.nullcontext(),
    ):
        return _pretrain(cfg, Path(out_dir), device, resume, progress, command)


def _pretrain(
    cfg: RunConfig, out: Path, device: torch.device, resume: bool, progress: bool, command: str
) -> Path:
    pc = cfg.pretrain
    setup_threads(cfg.threads)
    seed_everything(cfg.seed)
    data = PreparedData.open(cfg.data.dir, cfg.data.cache_for(cfg.data.size))
    table = data.table
    train_idx = table.indices("train")
    if len(train_idx) < 2:
        raise ConfigError(f"{cfg.data.dir}: stage 1 needs training images, found {len(train_idx)}")
    if pc.views < 1:
        raise ConfigError(f"pretrain.views must be ≥ 1, got {pc.views}")
    queue_size = checked_queue_size(pc, len(train_idx))
    world = world_size()
    batch = min(
        per_rank_batch(pc.batch_size, "pretrain.batch_size"), max(1, len(train_idx) // world)
    )

    net = pretrain_network(cfg.model, table.channels)
    precision = resolve_precision(cfg.precision, device, hint=not resume and is_main())
    check_compile(cfg.compile)
    check_tensorboard(cfg.tensorboard)
    step_fn = contrastive_step(
        cfg, net, table.channels, device, precision, queue_size=queue_size, batch=batch
    )
    net, teacher, queue, optimizer = (
        unwrap(step_fn.student),
        step_fn.teacher,
        step_fn.queue,
        step_fn.optimizer,
    )

    stream = IndexStream(train_idx, batch, cfg.seed, rank(), world)
    loader = BatchLoader(data.images(), stream, device, data.rows)
    schedule = Schedule(
        pc.epochs, stream.passes_to_steps(1.0), pc.lr, pc.warmup_epochs, batch * world
    )
    with main_first():  # may write the labelled-subset file into the data folder
        fit_rows, score_rows = monitor_rows(data, cfg)

    def monitor(backbone: torch.nn.Module) -> float | None:
        """The representation check: mean AUC (eval classes) of the kNN classifier."""
        probs = knn_probs(
            backbone,
            data,
            fit_rows,
            score_rows,
            cfg.data.size,
            device,
            precision,
            pc.knn_k,
            pc.knn_temperature,
        )
        return table_mean_auc(probs.numpy(), table.labels[score_rows], table)

    ckpt_path = out / "last.pt"
    modules = {
        "student": net,
        "teacher": teacher,
        "queue": queue,
        "optimizer": optimizer,
        "scaler": step_fn.scaler,
    }
    state, history = start_run(
        cfg, out, "pretrain", modules, resume=resume, device=device, command=command
    )
    start_epoch = state.get("epoch", 0)
    log.info("precision %s on %s", precision.name, device)
    bn_groups = step_fn.runner.bn_groups
    if bn_groups > 1:
        log.info("stage 1 split batch norm: %d groups of %d images", bn_groups, batch // bn_groups)
    if start_epoch == 0:
        random_score = monitor(teacher.module.backbone)
        log.info("kNN mean AUC of the randomly initialised network: %s", _fmt(random_score))
        if history is not None:
            history.add({"epoch": 0, "knn_mean_auc": random_score})

    if step_fn.runner.cuda_graphs:  # before the loader's thread starts pinning host memory
        step_fn.runner.capture(
            torch.Size((1 + pc.views, batch, table.channels, *[cfg.data.size] * 2))
        )
        log.info("stage 1 replays CUDA graphs (cuda_graphs: false launches kernels one by one)")
    meta = {
        "channels": table.channels,
        "size": cfg.data.size,
        "classes": table.classes,
        "task": table.task,
    }
    task = ContrastiveEpochs(cfg, step_fn, loader, schedule, monitor, modules, meta, ckpt_path)
    run_epochs(
        task,
        optimizer,
        start_epoch=start_epoch,
        history=history,
        checkpoint=ckpt_path,
        device=device,
        seed=cfg.seed,
        stream=0,
        log_every=cfg.log_every,
        progress=progress,
    )
    return ckpt_path


class ContrastiveEpochs:
    """Stage 1's part of the epoch loop (:class:`~s2mts2.engine.loop.EpochTask`): the
    contrastive step at the epoch's λ, the kNN check every ``pretrain.monitor_every`` epochs and
    after the last, ``last.pt`` after every epoch."""

    kind = "pretrain"
    losses = ("loss",)

    def __init__(
        self,
        cfg: RunConfig,
        step_fn: ContrastiveStep,
        loader: BatchLoader,
        schedule: Schedule,
        monitor: Callable[[torch.nn.Module], float | None],
        modules: dict[str, Any],
        meta: dict[str, Any],
        path: Path,
    ) -> None:
        self.cfg, self.pc, self.step_fn, self.loader = cfg, cfg.pretrain, step_fn, loader
        self.schedule, self.monitor = schedule, monitor
        self.modules, self.meta, self.path = modules, meta, path
        self.lam = 0.0  # λ of the current epoch, set by ``batches``

    def batches(self, epoch: int, first: int, stop: int) -> Iterator[Batch]:
        self.lam = lambda_at(self.pc, epoch)
        return self.loader.steps(first, stop)

    def step(self, step: int, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        views = self.step_fn.views(batch.images, gen)
        return self.step_fn.train(views, self.lam, batch.ids).reshape(1)

    def postfix(self, means: list[float], rate: float) -> dict[str, str]:
        return {"loss": f"{means[0]:.3f}", "lam": f"{self.lam:.2f}", "img_s": f"{rate:.0f}"}

    def row(self, epoch: int, means: list[float], lr: float, seconds: float) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "loss": means[0],
            "lambda": self.lam,
            "lr": lr,
            "img_s": self.schedule.steps_per_epoch * self.schedule.images_per_step / seconds,
            "seconds": seconds,
        }

    def evaluate(self, epoch: int, row: dict[str, Any], last: bool) -> bool:
        every = self.pc.monitor_every
        if last or (every > 0 and epoch % every == 0):
            row["knn_mean_auc"] = self.monitor(self.step_fn.teacher.module.backbone)
        return False

    def describe(self, row: dict[str, Any]) -> str:
        return (
            f"pretrain epoch {row['epoch']}/{self.pc.epochs} loss {row['loss']:.4f} "
            f"λ {row['lambda']:.2f} {row['img_s']:.0f} img/s"
            + (f" kNN mean AUC {_fmt(row['knn_mean_auc'])}" if "knn_mean_auc" in row else "")
        )

    def save(
        self, rows: list[dict[str, Any]], epoch: int, improved: bool, last: bool, write: bool
    ) -> None:
        if write:
            save_checkpoint(epoch_state(self, rows, epoch), self.path)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
