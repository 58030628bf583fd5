"""Where a stage-1 step's time goes: torch.profiler over the batched augmentation + the step.

The engine's :class:`ContrastiveStep` (the bench's defaults: JCL, M key views, queue) is fed
uint8 images already on the device through ``step.views``; after ``--warmup`` untimed steps,
``--steps`` steps are profiled. Prints the operators with the most device time (CPU time on a
CPU) and writes JSON with the wall time per step, the device's busy time per step (the sum of
the kernels' times; busy / wall near 1 means the GPU never waits for the host) and the table.

    python benchmarks/profile_step.py --device cuda --model densenet121 --size 224 \\
        --batch-size 128 --json profile-cuda.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from s2mts2.bench import BenchSettings, contrastive_step, device_name, save_result
from s2mts2.engine.schedule import epoch_generator
from s2mts2.runtime.device import resolve_device


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--model", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3))
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25, help="operators shown")
    ap.add_argument("--compile", action="store_true", help="compile: true (warm-up compiles)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    s = BenchSettings(
        device=str(device),
        precision=args.precision,
        model=args.model,
        size=args.size,
        views=args.views,
        batch_size=args.batch_size,
        compile=args.compile,
    )
    step = contrastive_step(s, args.channels, device)
    gen = epoch_generator(device, 0, 0)
    shape = (args.batch_size, args.channels, args.size, args.size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=gen)
    lam = step.cfg.lam_max

    def one() -> None:
        step.train(step.views(images, gen), lam)

    for _ in range(args.warmup):
        one()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            one()
        sync()
        wall = (time.perf_counter() - start) / args.steps
    averages = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=args.rows)
    kernels = [e for e in averages if e.device_type == DeviceType.CUDA]  # operators: host side
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / args.steps if cuda else None
    result = {
        "wall_s_per_step": wall,
        "device_busy_s_per_step": busy,
        "busy_fraction": busy / wall if busy is not None else None,
        "img_s_under_profiler": args.batch_size / wall,
        "device_name": device_name(device),
        "precision": step.precision.name,
        "torch_version": torch.__version__,
        "settings": {**vars(args), "json": str(args.json)},
        "command": " ".join(["python", *sys.argv]),
        "table": table,
    }
    print(table)
    print(
        f"wall {1e3 * wall:.1f} ms/step ({args.batch_size / wall:.0f} img/s under the profiler)"
        + (f", device busy {1e3 * busy:.1f} ms/step ({100 * busy / wall:.0f} %)" if cuda else "")
    )
    print(f"wrote {save_result(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
