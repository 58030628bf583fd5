"""Model-only training steps in two precisions (or eager against ``torch.compile``), alternating
in one process.

Separate `s2mts2 bench --precision ...` runs are minutes apart, and on a shared machine their
difference mixes precision with load. Here the stage-1 and stage-2 steps of each variant are
built from the same weights and timed in turns within every round; the ratio is the median over
rounds of back-to-back pairs. A variant is a precision, with ``+compile`` when ``--compile on``
(or ``both``: each precision eager, then compiled); compiled variants compile in their first
warm-up step.

    python benchmarks/precision_steps.py --model resnet18 --size 32 --batch-size 128 \\
        --json benchmarks/results/precision-steps-resnet18-32px.json
    python benchmarks/precision_steps.py --model resnet18 --precisions fp32 --compile both \\
        --size 32 --batch-size 128 --json benchmarks/results/compile/steps-cpu-resnet18-32px.json

``--variants`` names variants directly as ``PRECISION[+compile][+foreach][+no-graphs]``:
``foreach`` rebuilds both steps' optimisers with ``foreach=True`` where the engine uses
``fused=True`` (on CUDA: one kernel per parameter chunk, and no host synchronisation in fp16's
loss scaling); ``no-graphs`` runs stage 1 without CUDA graphs (the config's ``cuda_graphs:
false``)::

    python benchmarks/precision_steps.py --device cuda --model densenet121 --size 224 \\
        --channels 1 --batch-size 128 \\
        --variants bf16+foreach+no-graphs bf16+no-graphs bf16 fp16+no-graphs fp16 \\
        --json steps-cuda.json

Writes JSON: per variant and stage the fastest round (img/s) and every round, the median
ratio of each variant to the first one, the settings, the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from s2mts2.bench import (
    BenchData,
    BenchSettings,
    contrastive_step,
    device_name,
    mean_teacher_step,
    save_result,
    time_steps,
)
from s2mts2.runtime.device import resolve_device, resolve_precision

OPTIONS = {"compile", "foreach", "no-graphs"}


def with_foreach(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimiser (class, groups, hyper-parameters, no state yet), ``foreach``."""
    keep = ("lr", "momentum", "weight_decay", "dampening", "nesterov", "betas", "eps")
    defaults = {k: v for k, v in optimizer.defaults.items() if k in keep}
    groups = [
        {"params": g["params"], "lr_scale": g.get("lr_scale", 1.0)} for g in optimizer.param_groups
    ]
    return type(optimizer)(groups, **defaults, foreach=True)


def measure(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    size, b, c = args.size, args.batch_size, args.channels
    base = BenchSettings(
        device=str(device), model=args.model, size=size, batch_size=b, queue_size=args.queue_size
    )
    names = args.variants or [
        resolve_precision(p, device).name + ("+compile" if c else "")
        for p in args.precisions
        for c in {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    ]
    variants = {}
    for name in names:
        precision, *options = name.split("+")
        if not set(options) <= OPTIONS:
            raise SystemExit(f"--variants {name}: options are {sorted(OPTIONS)}")
        settings = replace(
            base,
            precision=resolve_precision(precision, device).name,
            compile="compile" in options,
            cuda_graphs="no-graphs" not in options,
        )
        variants[name] = (settings, set(options))
    data = BenchData(  # stage 2 needs only the task and the number of classes
        paths=[],
        images=np.zeros((0, c, size, size), np.uint8),
        rows=np.zeros(0, np.int64),
        train=np.zeros(0, np.int64),
        labels=np.zeros((1, args.classes), np.float32),
        task="multiclass",
        channels=c,
    )
    steps = {}
    for name, (settings, options) in variants.items():
        torch.manual_seed(0)  # the same weights in every variant
        stage1 = contrastive_step(settings, c, device)
        stage2, u = mean_teacher_step(settings, data, device)
        for step in (stage1, stage2):
            if "foreach" in options:
                step.optimizer = with_foreach(step.optimizer)
        steps[name] = (stage1, stage2, u)
    gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randn(1 + base.views, b, c, size, size, generator=gen, device=device)
    x = torch.randn(b, c, size, size, generator=gen, device=device)
    y = torch.nn.functional.one_hot(torch.arange(b, device=device) % args.classes, args.classes)
    y = y.float()
    first = next(iter(steps))
    u_views = torch.randn(steps[first][2], c, size, size, generator=gen, device=device)

    rounds: dict[str, dict[str, list[float]]] = {p: {"stage1": [], "stage2": []} for p in steps}
    for _ in range(args.rounds):
        for p, (stage1, stage2, u) in steps.items():
            t1 = time_steps(partial(stage1.train, views, 1.0), args.warmup, args.steps, device)
            t2 = time_steps(
                partial(stage2.train, x, y, u_views, u_views, 1.0), args.warmup, args.steps, device
            )
            rounds[p]["stage1"].append(b / t1)
            rounds[p]["stage2"].append((b + u) / t2)
    return {
        "img_s": {
            p: {k: {"fastest": max(v), "rounds": v} for k, v in stages.items()}
            for p, stages in rounds.items()
        },
        f"ratio_to_{first}": {
            p: {
                k: statistics.median(a / r for a, r in zip(rounds[p][k], rounds[first][k]))
                for k in ("stage1", "stage2")
            }
            for p in list(steps)[1:]
        },
        "settings": {**vars(args), "json": str(args.json), "stage2_images_per_step": b + u},
        "device_name": device_name(device),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "load_average_before": list(os.getloadavg()),
        "command": " ".join(["python", *sys.argv]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its convolution algorithms per shape (the engine does not, yet)",
    )
    ap.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="off",
        help="torch.compile the steps' networks in every variant (on), none (off) or as a variant",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        help="PRECISION[+compile][+foreach][+no-graphs] each (instead of --precisions/--compile)",
    )
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    compiles = args.compile != "off" or any("compile" in v for v in args.variants or [])
    if compiles and args.warmup < 1:
        ap.error("--compile needs --warmup ≥ 1 (the first call compiles)")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    result = measure(args)
    for p, stages in result["img_s"].items():
        print(p, {k: round(v["fastest"], 1) for k, v in stages.items()})
    first = next(iter(result["img_s"]))
    for p, ratios in result[f"ratio_to_{first}"].items():
        print(f"{p} / {first} (median of rounds):", ratios)
    print(f"wrote {save_result(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
