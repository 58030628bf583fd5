"""``s2mts2 bench``: training speed of both stages, model-only against end-to-end.

Every figure is images per second over ``steps`` timed steps after ``warmup`` untimed ones, with
one device synchronisation at each end of the timed run and none inside it, the fastest of
``repeats`` rounds; the ratios (``*_fraction``, ``end_to_end_vs_reference``,
``pretrain_augment_share``) are medians over the rounds of figures timed back to back, which a
burst of load on a shared machine disturbs less:

- ``pretrain_model_only_img_s``: :meth:`ContrastiveStep.train` (student forward + backward on
  the query view, teacher forward on the M key views, EMA update, enqueue) on views made once and
  kept on the device; ``pretrain_end_to_end_img_s``: the same step fed from the uint8 cache
  through :class:`IndexStream` + :class:`BatchLoader` and the batched augmentation.
- ``finetune_model_only_img_s`` / ``finetune_end_to_end_img_s``: the same for
  :class:`MeanTeacherStep` (labelled + unlabelled images per step are counted).
- ``reference_pipeline_img_s``: what users run without this package's pipeline: a torch
  ``DataLoader`` with one worker per core that decodes the source files with PIL and makes every
  view with torchvision transforms, feeding the stage-1 step in fp32 NCHW; timed after its
  workers' prefetch buffer is drained (:func:`reference_schedule`).
- ``pretrain_augment_img_s``: the stage-1 augmentation alone (1 + M views per image).
- ``prepare_parallel_img_s`` / ``prepare_single_img_s``: :func:`build_cache` decoding with all
  cores and with one process.

Without a prepared folder the bench writes synthetic X-ray-like PNGs (``source_size`` px) and
caches them at ``size`` px, the resolution the augmentation outputs (as in training).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from s2mts2 import __version__
from s2mts2.config import FinetuneConfig, ModelConfig, PretrainConfig, RunConfig
from s2mts2.data.adapters.synthetic import make_synthetic
from s2mts2.data.augment import AugmentConfig
from s2mts2.data.cache import build_cache
from s2mts2.data.imageio import read_image
from s2mts2.data.loader import Batch, BatchLoader, IndexStream
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import classifier_network, pretrain_network
from s2mts2.engine.builders import contrastive_step as build_contrastive_step
from s2mts2.engine.builders import mean_teacher_step as build_mean_teacher_step
from s2mts2.engine.schedule import epoch_generator
from s2mts2.errors import ConfigError
from s2mts2.files import write_text_atomic
from s2mts2.methods.contrastive import ContrastiveStep
from s2mts2.methods.mean_teacher import MeanTeacherStep
from s2mts2.runtime.device import (
    Precision,
    check_compile,
    resolve_device,
    resolve_precision,
    setup_threads,
)

log = logging.getLogger("s2mts2")

RESULT_KEYS = (
    "pretrain_model_only_img_s",
    "pretrain_end_to_end_img_s",
    "finetune_model_only_img_s",
    "finetune_end_to_end_img_s",
    "reference_pipeline_img_s",
)
QUICK_CPU = {"model": "resnet18", "size": 64, "batch_size": 16, "steps": 3, "warmup": 1}
QUICK_CUDA = {"steps": 10, "warmup": 3}
QUICK_DATA = {"images": 128, "repeats": 2}
REFERENCE_PREFETCH = 2  # batches per DataLoader worker (torch's default)


@dataclass
class BenchSettings:
    """What the bench measures; ``None`` fields take their defaults (or ``--quick`` values).

    ``images``: generated source images (ignored with ``data``); ``source_size``: their side
    (default size * 8 / 7, e.g. 256 for 224); ``prepare_images``: inputs of each prepare
    measurement, symbolic links to the sources (with ``data``) or to 8 generated images
    enlarged to ``prepare_source_size`` px (the NIH X-rays are 1024 px); ``repeats``: rounds
    (speeds: the fastest round, as other processes only slow a round down; ratios: the median);
    ``reference_workers``: DataLoader workers of the reference pipeline (default: all cores);
    ``queue_size``: K negatives of stage 1; ``threads``: torch CPU threads (0 = all cores);
    ``precision``: of the engine's steps, as the training config's ``precision`` (resolved to a
    name by :func:`resolve_settings`); the reference pipeline always runs fp32 NCHW;
    ``compile``: the engine's steps run their networks through ``torch.compile`` (the config's
    ``compile``; the first warm-up step compiles, the reference pipeline runs eagerly);
    ``cuda_graphs``: the engine's stage-1 step replays CUDA graphs (the config's ``cuda_graphs``;
    the first warm-up step captures them; CUDA only, not with ``compile``).
    """

    device: str = "auto"
    precision: str = "auto"
    model: str | None = None
    size: int | None = None
    views: int = 2
    queue_size: int = PretrainConfig.queue_size
    batch_size: int | None = None
    steps: int | None = None
    warmup: int | None = None
    channels: int = 1
    images: int | None = None
    source_size: int | None = None
    prepare_images: int | None = None
    prepare_source_size: int = 1024
    repeats: int | None = None
    data: str | None = None
    reference_workers: int | None = None
    threads: int = 0
    seed: int = 0
    compile: bool = False
    cuda_graphs: bool = True


DEFAULTS = {
    "model": "densenet121",
    "size": 224,
    "batch_size": 32,
    "steps": 10,
    "warmup": 2,
    "images": 256,
    "prepare_images": 256,
    "repeats": 3,
}


def resolve_settings(settings: BenchSettings, quick: bool, device: torch.device) -> BenchSettings:
    """Fill the ``None`` fields: ``--quick`` values first (when asked), then the defaults."""
    preset = dict(DEFAULTS)
    if quick:
        preset.update(QUICK_DATA, **(QUICK_CUDA if device.type == "cuda" else QUICK_CPU))
    filled = {k: v for k, v in preset.items() if getattr(settings, k) is None}
    out = replace(settings, device=str(device), **filled)
    out.precision = resolve_precision(out.precision, device, hint=True).name
    check_compile(out.compile)
    if out.source_size is None:
        out.source_size = round(out.size * 8 / 7)
    positive = ("size", "views", "batch_size", "steps", "images", "prepare_images", "repeats")
    for name in (*positive, "queue_size", "prepare_source_size"):
        if getattr(out, name) < 1:
            raise ConfigError(f"bench setting {name} = {getattr(out, name)}: expected ≥ 1")
    if out.data is None and out.images < 10:
        raise ConfigError(f"bench setting images = {out.images}: generated data needs ≥ 10")
    if out.warmup < 0:
        raise ConfigError(f"bench setting warmup = {out.warmup}: expected ≥ 0")
    if out.channels not in (1, 3):
        raise ConfigError(f"bench setting channels = {out.channels}: expected 1 or 3")
    return out


@dataclass
class BenchData:
    """Source files and their uint8 cache.

    paths: (N,) source files; images: (N_cache, C, S, S) uint8 cache; rows: (N,) cache row of
    each source; train: table rows to sample; labels: (N, K) float32; task and channels.
    """

    paths: list[str]
    images: np.ndarray
    rows: np.ndarray
    train: np.ndarray
    labels: np.ndarray
    task: str
    channels: int


def generated_data(s: BenchSettings, work: Path) -> BenchData:
    """Synthetic grey PNGs written under ``work`` and cached at ``s.size`` px."""
    table = make_synthetic(work / "source", n=s.images, size=s.source_size, seed=s.seed)
    cache, _ = build_cache(
        table.paths, work / "cache", size=s.size, channels=s.channels, workers=1, progress=False
    )
    return BenchData(
        paths=table.paths,
        images=cache.images,
        rows=cache.rows_for(table.paths),
        train=np.arange(len(table.paths)),
        labels=table.labels,
        task=table.task,
        channels=s.channels,
    )


def prepared_data(data_dir: str, size: int) -> BenchData:
    """A prepared folder (``s2mts2 prepare``) with a cache at ``size`` px; its train rows."""
    data = PreparedData.open(data_dir, size)
    table = data.table
    train = table.indices("train")
    return BenchData(
        paths=table.paths,
        images=data.images(),
        rows=data.rows,
        train=train if len(train) else np.arange(len(table)),
        labels=table.labels,
        task=table.task,
        channels=table.channels,
    )


def enlarged_sources(paths: list[str], size: int, folder: Path) -> list[str]:
    """Up to 8 of ``paths`` resized to ``size`` x ``size`` PNGs in ``folder``."""
    folder.mkdir()
    out = []
    for i, path in enumerate(paths[:8]):
        target = folder / f"large_{i:02d}.png"
        with Image.open(path) as image:
            image.resize((size, size), Image.Resampling.BILINEAR).save(target)
        out.append(str(target))
    return out


def measure_prepare(
    paths: list[str], count: int, size: int, channels: int, work: Path
) -> dict[str, float]:
    """Images/s of :func:`build_cache` over ``count`` inputs, all cores against one process.

    The inputs are symbolic links to ``paths`` (repeated as needed), so every one is decoded.
    """
    links = work / "prepare-inputs"
    links.mkdir()
    inputs = []
    for i in range(count):
        source = Path(paths[i % len(paths)])
        link = links / f"{i:06d}{source.suffix}"
        link.symlink_to(source.resolve())
        inputs.append(str(link))
    result: dict[str, float] = {}
    for name, workers in (("parallel", os.cpu_count() or 1), ("single", 1)):
        out = work / f"prepare-{name}"
        cache, _ = build_cache(
            inputs, out, size=size, channels=channels, workers=workers, progress=False
        )
        result[f"prepare_{name}_img_s"] = float(cache.manifest["images_per_s"])
        result[f"prepare_{name}_workers"] = int(cache.manifest["workers"])
        del cache
        shutil.rmtree(out)
    shutil.rmtree(links)
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of ``step``, over ``steps`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def contrastive_step(
    s: BenchSettings, channels: int, device: torch.device, engine: bool = True
) -> ContrastiveStep:
    """A fresh stage-1 step with the default config at the bench's model, batch and M, built as
    training builds it (:func:`s2mts2.engine.builders.contrastive_step`).

    ``engine=False`` gives the step users run today: fp32, NCHW; else ``s.precision``.
    """
    cfg = RunConfig(
        compile=s.compile and engine,
        cuda_graphs=s.cuda_graphs and engine,
        model=ModelConfig(backbone=s.model),
        pretrain=PretrainConfig(batch_size=s.batch_size, views=s.views, queue_size=s.queue_size),
    )
    cfg.data.size = s.size
    net = pretrain_network(cfg.model, channels)
    precision = resolve_precision(s.precision, device) if engine else Precision(device.type)
    return build_contrastive_step(
        cfg, net, channels, device, precision, queue_size=s.queue_size, batch=s.batch_size
    )


def mean_teacher_step(
    s: BenchSettings, data: BenchData, device: torch.device
) -> tuple[MeanTeacherStep, int]:
    """A fresh stage-2 step (default config, mean teacher) and its unlabelled batch size."""
    cfg = RunConfig(compile=s.compile, model=ModelConfig(backbone=s.model))
    cfg.data.size = s.size
    cfg.finetune = FinetuneConfig(method="mean-teacher", batch_size=s.batch_size)
    net = classifier_network(cfg.model, data.channels, data.labels.shape[1])
    precision = resolve_precision(s.precision, device)
    step = build_mean_teacher_step(cfg, net, data.channels, data.task, device, precision)
    return step, max(1, round(s.batch_size * cfg.finetune.unlabelled_ratio))


def reference_transform(config: AugmentConfig, size: int) -> T.Compose:
    """torchvision's per-image equivalent of the strong augmentation ``config`` (PIL in)."""
    blur_kernel = 2 * math.ceil(3 * config.blur_sigma[1]) + 1
    jitter = T.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=config.crop_scale, ratio=config.crop_ratio),
            T.RandomApply([T.RandomAffine(config.rotate_deg)], p=config.rotate_p),
            T.RandomApply([jitter], p=config.jitter_p),
            T.RandomApply([T.GaussianBlur(blur_kernel, config.blur_sigma)], p=config.blur_p),
            T.RandomHorizontalFlip(config.hflip_p),
            T.ToTensor(),
            T.Normalize(config.mean, config.std),
            T.RandomErasing(config.erase_p, config.erase_scale, config.erase_ratio, value=0),
        ]
    )


class ReferenceViews(torch.utils.data.Dataset):
    """Item i: source file i decoded with PIL, ``n_views`` transformed views (V, C, S, S)."""

    def __init__(self, paths: list[str], channels: int, transform: T.Compose, n_views: int):
        self.paths = paths
        self.channels = channels
        self.transform = transform
        self.n_views = n_views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        pixels = read_image(self.paths[i], self.channels)
        image = Image.fromarray(pixels[:, :, 0] if self.channels == 1 else pixels)
        return torch.stack([self.transform(image) for _ in range(self.n_views)])


def reference_schedule(s: BenchSettings) -> tuple[int, int, int]:
    """(workers, warm-up steps, timed steps) of the reference pipeline.

    Its workers fill a buffer of ``workers * REFERENCE_PREFETCH`` batches ahead of the model:
    the warm-up consumes that many more batches and at least twice as many are timed, so the
    figure is the steady-state rate, not the model eating a prefetched buffer.
    """
    workers = s.reference_workers or os.cpu_count() or 1
    buffered = workers * REFERENCE_PREFETCH
    return workers, s.warmup + buffered, max(s.steps, 2 * buffered)


def _reference_batches(
    s: BenchSettings, data: BenchData, step: ContrastiveStep, device: torch.device
) -> Iterator[torch.Tensor]:
    """(1+M, B, C, S, S) float views from a DataLoader over the source files, on ``device``."""
    workers, warmup, steps = reference_schedule(s)
    dataset = ReferenceViews(
        [data.paths[i] for i in data.train],
        data.channels,
        reference_transform(step.augment.config, s.size),
        1 + s.views,
    )
    sampler = torch.utils.data.RandomSampler(
        dataset,
        replacement=True,
        num_samples=(warmup + steps) * s.batch_size,
        generator=torch.Generator().manual_seed(s.seed),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=s.batch_size,
        sampler=sampler,
        num_workers=workers,
        prefetch_factor=REFERENCE_PREFETCH,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    for batch in loader:
        yield batch.transpose(0, 1).to(device, non_blocking=True)


Rounds = list[dict[str, float]]


def _fastest(rounds: Rounds, key: str) -> float:
    return min(r[key] for r in rounds)


def _median_ratio(rounds: Rounds, numerator: str, denominator: str) -> float:
    """Median over rounds of a ratio of two figures timed back to back in the same round."""
    return statistics.median(r[numerator] / r[denominator] for r in rounds)


def measure_pretrain(s: BenchSettings, data: BenchData, device: torch.device) -> Rounds:
    """Stage-1 seconds per step of each round: model-only, augmentation, end-to-end, reference."""
    step = contrastive_step(s, data.channels, device)
    reference = contrastive_step(s, data.channels, device, engine=False)
    lam = step.cfg.lam_max
    gen = epoch_generator(device, s.seed, 0)
    stream = IndexStream(data.train, s.batch_size, s.seed)
    loader = BatchLoader(data.images, stream, device, data.rows)
    images = loader.fetch(stream.batch_rows(0)).to(device)
    views = step.views(images, gen)

    _, ref_warmup, ref_steps = reference_schedule(s)

    def train_on(b: Batch) -> torch.Tensor:
        return step.train(step.views(b.images, gen), lam, b.ids)

    def one_round() -> dict[str, float]:
        batches = loader.steps(0, s.warmup + s.steps)
        ref_batches = _reference_batches(s, data, reference, device)
        try:
            return {
                "model_only": time_steps(lambda: step.train(views, lam), s.warmup, s.steps, device),
                "augment": time_steps(lambda: step.views(images, gen), s.warmup, s.steps, device),
                "end_to_end": time_steps(
                    lambda: train_on(next(batches)),
                    s.warmup,
                    s.steps,
                    device,
                ),
                "reference": time_steps(
                    lambda: reference.train(next(ref_batches), lam), ref_warmup, ref_steps, device
                ),
            }
        finally:
            batches.close()
            ref_batches.close()

    return [one_round() for _ in range(s.repeats)]


def measure_finetune(s: BenchSettings, data: BenchData, device: torch.device) -> tuple[Rounds, int]:
    """Stage-2 seconds per step of each round (model-only, end-to-end); images per step."""
    step, u_batch = mean_teacher_step(s, data, device)
    gen = epoch_generator(device, s.seed, 0, stream=1)
    labels = torch.from_numpy(data.labels)
    l_stream = IndexStream(data.train, s.batch_size, s.seed)
    u_stream = IndexStream(data.train, u_batch, s.seed + 1)
    l_loader = BatchLoader(data.images, l_stream, device, data.rows)
    u_loader = BatchLoader(data.images, u_stream, device, data.rows)
    l_rows = l_stream.batch_rows(0)
    x, us, ut = step.views(
        l_loader.fetch(l_rows).to(device), u_loader.fetch(u_stream.batch_rows(0)).to(device), gen
    )
    y = labels[l_rows].to(device)

    def one_round() -> dict[str, float]:
        l_batches = l_loader.steps(0, s.warmup + s.steps)
        u_batches = u_loader.steps(0, s.warmup + s.steps)

        def end_to_end() -> object:
            b = next(l_batches)
            x, us, ut = step.views(b.images, next(u_batches).images, gen)
            return step.train(x, labels[b.rows].to(device, non_blocking=True), us, ut, 1.0)

        try:
            return {
                "model_only": time_steps(
                    lambda: step.train(x, y, us, ut, 1.0), s.warmup, s.steps, device
                ),
                "end_to_end": time_steps(end_to_end, s.warmup, s.steps, device),
            }
        finally:
            l_batches.close()
            u_batches.close()

    return [one_round() for _ in range(s.repeats)], s.batch_size + u_batch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (else the platform's word for it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(
    settings: BenchSettings,
    *,
    quick: bool = False,
    work_dir: str | Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run every measurement and return the result (the ``--json`` content).

    ``work_dir`` holds the generated images and caches (default: a temporary folder, removed);
    ``command`` is recorded with the result.
    """
    setup_threads(settings.threads)
    device = resolve_device(settings.device)
    s = resolve_settings(settings, quick, device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="s2mts2-bench-", dir=work_dir) as tmp:
        work = Path(tmp)
        data = prepared_data(s.data, s.size) if s.data else generated_data(s, work)
        s.channels = data.channels
        sources = (
            data.paths
            if s.data
            else enlarged_sources(data.paths, s.prepare_source_size, work / "large")
        )
        prepare = measure_prepare(sources, s.prepare_images, s.size, data.channels, work)
        pre = measure_pretrain(s, data, device)
        stage1 = {k: s.batch_size / _fastest(pre, k) for k in pre[0]}
        log.info(
            "stage 1 (fastest of %d rounds): model-only %.1f, end-to-end %.1f, reference %.1f "
            "img/s",
            len(pre),
            *(stage1[k] for k in ("model_only", "end_to_end", "reference")),
        )
        fine, fine_b = measure_finetune(s, data, device)
    result: dict[str, Any] = {
        "pretrain_model_only_img_s": stage1["model_only"],
        "pretrain_end_to_end_img_s": stage1["end_to_end"],
        "finetune_model_only_img_s": fine_b / _fastest(fine, "model_only"),
        "finetune_end_to_end_img_s": fine_b / _fastest(fine, "end_to_end"),
        "reference_pipeline_img_s": stage1["reference"],
        "pretrain_augment_img_s": stage1["augment"],
        **prepare,
    }
    result.update(
        pretrain_end_to_end_fraction=_median_ratio(pre, "model_only", "end_to_end"),
        finetune_end_to_end_fraction=_median_ratio(fine, "model_only", "end_to_end"),
        end_to_end_vs_reference=_median_ratio(pre, "reference", "end_to_end"),
        pretrain_augment_share=_median_ratio(pre, "augment", "model_only"),
        device=device.type,
        device_name=device_name(device),
        precision=s.precision,
        torch_version=torch.__version__,
        s2mts2_version=__version__,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
        finetune_images_per_step=fine_b,
        reference_schedule=dict(zip(("workers", "warmup", "steps"), reference_schedule(s))),
        quick=quick,
        command=command,
        settings={f.name: getattr(s, f.name) for f in fields(s)},
    )
    return result


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    return path


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table (images per second)."""
    s = result["settings"]
    head = (
        f"s2mts2 bench: {s['model']}, {s['size']} px, {s['channels']} channel(s), "
        f"M = {s['views']}, K = {s['queue_size']}, batch {s['batch_size']}, {s['steps']} steps "
        f"(+{s['warmup']} warm-up, best of {s['repeats']}), threads {result['torch_threads']} "
        f"(OMP_WAIT_POLICY {result['omp_wait_policy'] or 'unset'}), "
        f"{result['device_name']} ({result['device']}), {s['precision']}"
        f"{', torch.compile' if s.get('compile') else ''}"
        f"{', stage-1 CUDA graphs' if s.get('cuda_graphs') and result['device'] == 'cuda' else ''}"
        f", torch "
        f"{result['torch_version']}, load {result['load_average_before'][0]:.2f}"
    )
    rows = [
        ("stage 1 model-only", result["pretrain_model_only_img_s"], ""),
        (
            "stage 1 end-to-end",
            result["pretrain_end_to_end_img_s"],
            f"{100 * result['pretrain_end_to_end_fraction']:.1f} % of model-only",
        ),
        ("stage 2 model-only", result["finetune_model_only_img_s"], ""),
        (
            "stage 2 end-to-end",
            result["finetune_end_to_end_img_s"],
            f"{100 * result['finetune_end_to_end_fraction']:.1f} % of model-only",
        ),
        (
            "reference pipeline (stage 1)",
            result["reference_pipeline_img_s"],
            f"stage 1 end-to-end is {result['end_to_end_vs_reference']:.2f}x this",
        ),
        (
            "stage 1 augmentation alone",
            result["pretrain_augment_img_s"],
            f"1 + M views per image; {100 * result['pretrain_augment_share']:.1f} % of a "
            "model-only step's time",
        ),
        (
            f"prepare, {result['prepare_parallel_workers']} processes",
            result["prepare_parallel_img_s"],
            f"{result['prepare_parallel_img_s'] / result['prepare_single_img_s']:.2f}x one",
        ),
        ("prepare, 1 process", result["prepare_single_img_s"], ""),
    ]
    lines = [head, f"{'':30} {'img/s':>10}"]
    lines += [f"{name:30} {value:10.1f}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)
