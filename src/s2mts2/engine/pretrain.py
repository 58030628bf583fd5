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
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from s2mts2.config import PretrainConfig, RunConfig, config_to_dict
from s2mts2.data.loader import BatchLoader, IndexStream
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import build_eval_transform, contrastive_step, pretrain_network
from s2mts2.engine.checkpoint import (
    check_finite,
    check_new_run,
    resume_training,
    save_checkpoint,
    seed_everything,
    training_state,
)
from s2mts2.engine.history import History, RunClock, check_tensorboard
from s2mts2.engine.inference import forward_rows
from s2mts2.engine.runinfo import train_log, write_run_info
from s2mts2.engine.schedule import cosine_lr, epoch_generator, set_lr
from s2mts2.errors import ConfigError
from s2mts2.eval.knn import knn_scores
from s2mts2.eval.metrics import table_mean_auc
from s2mts2.methods.contrastive import lambda_at
from s2mts2.runtime.device import (
    Precision,
    check_compile,
    resolve_precision,
    setup_threads,
)
from s2mts2.runtime.distributed import (
    all_gather_rows,
    barrier,
    distributed_session,
    is_main,
    main_first,
    mean_over_ranks,
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
    steps_per_epoch = stream.passes_to_steps(1.0)
    total_steps = steps_per_epoch * pc.epochs
    warmup_steps = steps_per_epoch * pc.warmup_epochs
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

    start_epoch, rows = 0, []
    ckpt_path = out / "last.pt"
    scaler = step_fn.scaler
    modules = {
        "student": net,
        "teacher": teacher,
        "queue": queue,
        "optimizer": optimizer,
        "scaler": scaler,
    }
    if resume:
        state = resume_training(ckpt_path, "pretrain", modules, config_to_dict(cfg))
        start_epoch, rows = state["epoch"], state["history"]
    log.info("precision %s on %s", precision.name, device)
    bn_groups = step_fn.runner.bn_groups
    if bn_groups > 1:
        log.info("stage 1 split batch norm: %d groups of %d images", bn_groups, batch // bn_groups)
    history = History(out, rows, cfg.tensorboard) if is_main() else None
    if is_main():
        write_run_info(out, cfg, command, device)
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
    clock = RunClock(start_epoch, pc.epochs)
    for epoch in range(start_epoch, pc.epochs):
        lam = lambda_at(pc, epoch)
        gen = epoch_generator(device, cfg.seed, epoch, rank=rank())
        t0 = time.perf_counter()
        first = epoch * steps_per_epoch
        bar = tqdm(
            loader.steps(first, first + steps_per_epoch),
            total=steps_per_epoch,
            desc=f"pretrain {epoch + 1}/{pc.epochs}",
            disable=not (progress and is_main()),
            leave=False,
        )
        loss_sum = torch.zeros((), device=device)
        for i, b in enumerate(bar):
            set_lr(optimizer, cosine_lr(pc.lr, first + i, total_steps, warmup_steps))
            loss_sum += step_fn.train(step_fn.views(b.images, gen), lam, b.ids)
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                rate = (i + 1) * batch * world / (time.perf_counter() - t0)
                bar.set_postfix(
                    loss=f"{loss_sum.item() / (i + 1):.3f}", lam=f"{lam:.2f}", img_s=f"{rate:.0f}"
                )
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "loss": mean_over_ranks(loss_sum).item() / steps_per_epoch,
            "lambda": lam,
            "lr": optimizer.param_groups[0]["lr"],
            "img_s": steps_per_epoch * batch * world / seconds,
            "seconds": seconds,
        }
        check_finite({"loss": row["loss"]}, "pretrain", epoch + 1, ckpt_path)
        last = epoch + 1 == pc.epochs
        if last or (pc.monitor_every > 0 and (epoch + 1) % pc.monitor_every == 0):
            row["knn_mean_auc"] = monitor(teacher.module.backbone)
        if history is not None:
            history.add(row)
            log.info(
                "pretrain epoch %d/%d loss %.4f λ %.2f %.0f img/s%s; %s",
                epoch + 1,
                pc.epochs,
                row["loss"],
                lam,
                row["img_s"],
                f" kNN mean AUC {_fmt(row['knn_mean_auc'])}" if "knn_mean_auc" in row else "",
                clock.left(epoch + 1),
            )
            state = training_state(
                "pretrain",
                modules,
                epoch=epoch + 1,
                step=(epoch + 1) * steps_per_epoch,
                history=history.rows,
                config=config_to_dict(cfg),
                meta={
                    "channels": table.channels,
                    "size": cfg.data.size,
                    "classes": table.classes,
                    "task": table.task,
                },
            )
            save_checkpoint(state, ckpt_path)
        barrier()
    return ckpt_path


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
