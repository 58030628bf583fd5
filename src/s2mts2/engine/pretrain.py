"""Stage 1: self-supervised mean-teacher pre-training with JCL (or MoCo's InfoNCE).

Per step (docs/method.md): 1 query view + M key views of every image, made on the device from the
uint8 cache; student -> q (B, D); teacher (EMA of the student, no gradient) -> keys (B, M, D);
loss = jcl_loss(q, keys, queue, τ, λ_t); SGD step; teacher EMA update; enqueue μ (as is, or μ/|μ|
with ``pretrain.queue_entries: normalised_mean``).
Every epoch ends with an atomic full-state checkpoint ``OUT/last.pt``; ``resume=True`` continues
from it and reproduces the uninterrupted run.

Several processes (``torchrun``, see :mod:`s2mts2.engine.distributed`):

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from s2mts2.config import PretrainConfig, RunConfig, config_to_dict
from s2mts2.data.augment import BatchAugment, multi_view
from s2mts2.data.loader import BatchLoader, IndexStream
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import build_augment, build_eval_transform, pretrain_network
from s2mts2.engine.checkpoint import (
    check_new_run,
    resume_training,
    save_checkpoint,
    seed_everything,
    training_state,
)
from s2mts2.engine.distributed import (
    all_gather_rows,
    average_buffers,
    barrier,
    distributed_session,
    is_main,
    main_first,
    mean_over_ranks,
    per_rank_batch,
    rank,
    shard,
    shuffled_forward,
    sync_batchnorm,
    world_size,
    wrap_ddp,
)
from s2mts2.engine.graphs import GraphedInference, graphed_training_forward, uses_cuda_graphs
from s2mts2.engine.history import History, RunClock, check_tensorboard
from s2mts2.engine.inference import forward_rows
from s2mts2.engine.runinfo import train_log, write_run_info
from s2mts2.engine.runtime import (
    Precision,
    check_compile,
    check_finite,
    compiled,
    cosine_lr,
    optimizer_kernels,
    resolve_precision,
    set_lr,
    setup_threads,
)
from s2mts2.errors import ConfigError
from s2mts2.eval.knn import knn_scores
from s2mts2.eval.metrics import table_mean_auc
from s2mts2.losses import jcl_loss
from s2mts2.models.ema import EmaTeacher
from s2mts2.models.queue import NegativeQueue
from s2mts2.models.split_bn import (
    default_bn_groups,
    key_group_order,
    set_bn_groups,
    split_batchnorm,
)

log = logging.getLogger("s2mts2")


def lambda_at(cfg: PretrainConfig, epoch: int) -> float:
    """λ_t = λ_max·(epoch+1)/epochs for JCL; 0 for MoCo (InfoNCE with the mean key)."""
    if cfg.loss == "moco":
        return 0.0
    return cfg.lam_max * (epoch + 1) / cfg.epochs


def epoch_generator(
    device: torch.device, seed: int, epoch: int, stream: int = 0, rank: int = 0
) -> torch.Generator:
    """Augmentation RNG of one epoch and DDP rank: a pure function of (seed, epoch, stream, rank),
    so resume is exact and every rank augments its slice of the global batch differently."""
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + epoch * 7919 + stream * 104_729 + rank * 15_485_863) % 2**63
    )


@dataclass
class ContrastiveStep:
    """One stage-1 optimisation step; ``views`` and ``train`` are separate so speed can be split.

    views(images_u8 (B, C, H, W)) -> (1+M, B, C, S, S) float; train(views, λ) -> loss (0-d tensor,
    this rank's, not synchronised to the host). Under DDP ``student`` is the DDP wrapper, B the
    per-rank batch; ``shuffle_bn`` runs the teacher with batch-shuffle BN, its permutation drawn
    from (``seed``, teacher update count), the same on every rank. Forward passes run in
    ``precision``; ``scaler`` scales the loss (a pass-through unless fp16); ``compile`` runs
    student and teacher through ``torch.compile`` (:func:`compiled`); ``cuda_graphs`` (one CUDA
    process, not with ``compile`` or ``shuffle_bn``) captures the student's forward/backward
    and the teacher's forward at the first call and replays them after
    (:mod:`s2mts2.engine.graphs`); every call must then bring views of the first call's shape.
    ``bn_groups`` G > 1 (one process): split batch norm in student and teacher, the key views
    regrouped across the G groups (:mod:`s2mts2.models.split_bn`). ``exclude_own_keys``: queue
    entries of a query's own image are not its negatives.
    """

    student: torch.nn.Module
    teacher: EmaTeacher
    queue: NegativeQueue
    optimizer: torch.optim.Optimizer
    augment: BatchAugment
    cfg: PretrainConfig
    precision: Precision
    scaler: torch.amp.GradScaler
    shuffle_bn: bool = False
    seed: int = 0
    compile: bool = False
    cuda_graphs: bool = False
    bn_groups: int = 1
    exclude_own_keys: bool = True

    def __post_init__(self) -> None:
        if self.cuda_graphs and (self.compile or self.shuffle_bn):
            raise ValueError("cuda_graphs runs neither with compile nor with shuffle_bn")
        if self.bn_groups > 1 and self.shuffle_bn:
            raise ValueError("split batch norm (bn_groups > 1) is for one process, not shuffle_bn")
        for net in (self.student, self.teacher.module):
            set_bn_groups(split_batchnorm(net), self.bn_groups)
        self._key_order: tuple[torch.Tensor, torch.Tensor] | None = None  # order, its inverse
        self._student = compiled(self.student, self.compile)
        self._teacher = compiled(self.teacher, self.compile)
        self._captured: torch.Size | None = None  # the views' shape the graphs were made for

    def views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return multi_view(images, 1 + self.cfg.views, self.augment, generator)

    def train(
        self, views: torch.Tensor, lam: float, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One step on ``views`` (1+M, B, C, S, S) of the images ``ids`` (B,) (table rows, on the
        device; None: unknown images, whose queue entries are no query's own)."""
        m, b = self.cfg.views, views.shape[1]
        if ids is None:
            ids = torch.full((b,), -1, dtype=torch.long, device=self.queue.ids.device)
        query = self.precision.layout(views[0])
        keys_in = self.precision.layout(views[1:].flatten(0, 1))
        if self.cuda_graphs:
            self.capture(views.shape)
        with self.precision.autocast():
            q = self._student(query)
            with torch.no_grad():
                k = self._teacher_forward(keys_in)
        keys = k.float().view(m, b, -1).transpose(0, 1)  # (B, M, D)
        loss = jcl_loss(
            q.float(),
            keys,
            self.queue.negatives(),
            temperature=self.cfg.temperature,
            lam=lam,
            exclude=self.queue.own_entries(ids) if self.exclude_own_keys else None,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.teacher.update(self.student)
        average_buffers(self.student, self.teacher)
        mu = keys.mean(dim=1)  # (B, D)
        self.queue.enqueue(F.normalize(mu, dim=1) if self.cfg.queue_entries != "mean" else mu, ids)
        return loss.detach()

    def capture(self, shape: torch.Size) -> None:
        """The networks' CUDA graphs for views (1+M, B, C, S, S) of ``shape``, once (the first
        :meth:`train` call captures them too). No other thread may use the GPU meanwhile."""
        if self._captured is None:
            views = torch.zeros(shape, device=self.queue.queue.device)
            query = self.precision.layout(views[0])
            keys_in = self.precision.layout(views[1:].flatten(0, 1))
            self._student = graphed_training_forward(self.student, query, self.precision)
            self._teacher = GraphedInference(self.teacher, keys_in, self.precision)
            self._captured = shape
        elif shape != self._captured:
            raise ValueError(
                f"cuda_graphs: views of shape {tuple(shape)}, but the graphs were captured for "
                f"{tuple(self._captured)} (every step must bring a full batch)"
            )

    def _teacher_forward(self, keys_in: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings (M·B, D) of the key views (M·B, C, S, S), shuffled BN if enabled."""

        def run(x: torch.Tensor) -> torch.Tensor:
            return self._teacher(self.precision.layout(x))

        if self.bn_groups > 1:
            order, inverse = self._regrouping(keys_in)
            return run(keys_in[order])[inverse]
        if not self.shuffle_bn:
            return run(keys_in)
        if self.precision.dtype is not None:  # what autocast feeds the first conv: half the bytes
            keys_in = keys_in.to(self.precision.dtype)
        return shuffled_forward(run, keys_in, self.seed * 1_000_003 + self.teacher.steps)

    def _regrouping(self, keys_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key views' order for split batch norm and its inverse (made once, on the device)."""
        if self._key_order is None or len(self._key_order[0]) != len(keys_in):
            order = key_group_order(len(keys_in) // self.cfg.views, self.cfg.views, self.bn_groups)
            self._key_order = order.to(keys_in.device), torch.argsort(order).to(keys_in.device)
        return self._key_order


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


def resolve_bn_groups(pc: PretrainConfig, batch: int, world: int) -> int:
    """The split-batch-norm groups G for a per-process ``batch`` (1: off).

    ``pretrain.bn_groups`` 0 (auto) splits on one process (:func:`default_bn_groups`) and not
    under torchrun, where batch-shuffle BN (``shuffle_bn``) or SyncBatchNorm protects instead.
    """
    if pc.bn_groups == 0:
        return default_bn_groups(batch) if world == 1 else 1
    if pc.bn_groups > 1 and world > 1:
        raise ConfigError(
            f"pretrain.bn_groups={pc.bn_groups}: split batch norm is for one process; with "
            f"{world} processes use pretrain.shuffle_bn (or model.sync_bn) and bn_groups 0 or 1"
        )
    if batch % pc.bn_groups:
        raise ConfigError(
            f"pretrain.bn_groups={pc.bn_groups} must divide the batch of {batch} images"
        )
    return pc.bn_groups


def build_optimizer(
    net: torch.nn.Module, pc: PretrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """SGD over the student's parameters (:func:`optimizer_kernels` for ``device``)."""
    return torch.optim.SGD(
        net.parameters(),
        lr=pc.lr,
        momentum=pc.momentum,
        weight_decay=pc.weight_decay,
        **optimizer_kernels(device),
    )


def monitor_rows(data: PreparedData, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Table rows to fit (labelled train) and score (val, else ≤2,000 unlabelled train) the kNN."""
    fit = data.labelled(*cfg.data.labelled_draw())
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
) -> torch.Tensor:
    """(len(score), C) kNN class scores of the ``score`` rows from the labelled ``fit`` rows.

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
    return knn_scores(f_fit, torch.from_numpy(data.table.labels[fit]), f_score, k=k)


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
    shuffle_bn = pc.shuffle_bn and not cfg.model.sync_bn and world > 1
    bn_groups = resolve_bn_groups(pc, batch, world)

    net = pretrain_network(cfg.model, table.channels)
    precision = resolve_precision(cfg.precision, device, hint=not resume and is_main())
    check_compile(cfg.compile)
    check_tensorboard(cfg.tensorboard)
    net = precision.prepare(sync_batchnorm(net, cfg.model.sync_bn, device), device)
    teacher = EmaTeacher(net, decay=pc.ema, buffers=pc.ema_buffers)
    queue = NegativeQueue(queue_size, cfg.model.proj_dim).to(device)
    optimizer = build_optimizer(net, pc, device)
    augment = build_augment("strong", table.channels, cfg.data.size, pc.augment)

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
            backbone, data, fit_rows, score_rows, cfg.data.size, device, precision, pc.knn_k
        )
        return table_mean_auc(probs.numpy(), table.labels[score_rows], table)

    start_epoch, rows = 0, []
    ckpt_path = out / "last.pt"
    scaler = precision.scaler()
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
    if bn_groups > 1:
        log.info("stage 1 split batch norm: %d groups of %d images", bn_groups, batch // bn_groups)
    step_fn = ContrastiveStep(
        wrap_ddp(net, device),
        teacher,
        queue,
        optimizer,
        augment,
        pc,
        precision,
        scaler,
        shuffle_bn=shuffle_bn,
        seed=cfg.seed,
        compile=cfg.compile,
        cuda_graphs=uses_cuda_graphs(cfg.cuda_graphs, cfg.compile, device, world),
        bn_groups=bn_groups,
        exclude_own_keys=pc.exclude_own_keys,
    )
    history = History(out, rows, cfg.tensorboard) if is_main() else None
    if is_main():
        write_run_info(out, cfg, command, device)
    if start_epoch == 0:
        random_score = monitor(teacher.module.backbone)
        log.info("kNN mean AUC of the randomly initialised network: %s", _fmt(random_score))
        if history is not None:
            history.add({"epoch": 0, "knn_mean_auc": random_score})

    if step_fn.cuda_graphs:  # before the loader's thread starts pinning host memory
        step_fn.capture(torch.Size((1 + pc.views, batch, table.channels, *[cfg.data.size] * 2)))
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
