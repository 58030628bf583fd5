"""Stage 1's leak protections, each on its own and together: kNN gain over random init.

    python benchmarks/stage1_fixes.py --data DIR --config PRESET --out RUNS [--seeds 0 1]
        [--variants plain split exclude both] [--set KEY=VALUE ...] [--json OUT]

For every variant and seed it pre-trains (``s2mts2 pretrain``; a finished run is reused, an
interrupted one resumed) and scores the teacher with ``stage1_knn.compare`` (kNN mean AUC on the
unlabelled training images of patients/lesions without a labelled image, paired bootstrap against
the same network at random init). Pairs of variants are compared the same way (paired bootstrap
over the scored images). Variants:

- ``plain``: one batch-norm group, own keys kept as negatives (before the protections);
- ``split``: split batch norm only (``pretrain.bn_groups`` auto);
- ``exclude``: own keys left out of the negatives only;
- ``both``: the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from stage1_knn import compare, paired_difference

from s2mts2.config import load_config, preset_path
from s2mts2.engine.checkpoint import load_checkpoint
from s2mts2.engine.pretrain import pretrain
from s2mts2.files import write_text_atomic

VARIANTS = {
    "plain": ["pretrain.bn_groups=1", "pretrain.exclude_own_keys=false"],
    "split": ["pretrain.bn_groups=0", "pretrain.exclude_own_keys=false"],
    "exclude": ["pretrain.bn_groups=1", "pretrain.exclude_own_keys=true"],
    "both": ["pretrain.bn_groups=0", "pretrain.exclude_own_keys=true"],
}
PAIRS = [("split", "plain"), ("exclude", "plain"), ("both", "plain"), ("both", "split")]


def run_variant(
    config: str, data: str, out: Path, variant: str, seed: int, extra: list[str]
) -> Path:
    """Pre-train one variant and seed (reused when finished, resumed when interrupted)."""
    folder = out / f"{variant}-seed{seed}"
    overrides = [f"data.dir={data}", f"seed={seed}", *VARIANTS[variant], *extra]
    cfg = load_config(preset_path(config) if "/" not in config else config, overrides)
    ckpt = folder / "last.pt"
    if ckpt.is_file():
        if load_checkpoint(ckpt)["epoch"] == cfg.pretrain.epochs:
            return ckpt
        return pretrain(cfg, folder, resume=True, progress=False)
    return pretrain(cfg, folder, progress=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--config", required=True, help="preset name or YAML file")
    p.add_argument("--out", type=Path, required=True, help="folder of the stage-1 runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    results: dict[str, Any] = {"runs": {}, "pairs": {}}
    for seed in args.seeds:
        ckpts = {}
        for variant in args.variants:
            ckpt = run_variant(args.config, args.data, args.out, variant, seed, args.overrides)
            ckpts[variant] = ckpt
            r = compare(ckpt, args.data, args.n_boot, "unlabelled", unseen_groups=True)
            results["runs"][f"{variant}-seed{seed}"] = r
            print(
                f"{variant} seed {seed}: kNN {r['knn_mean_auc_trained']:.4f} vs random "
                f"{r['knn_mean_auc_random_init']:.4f}: {r['difference']:+.4f} "
                f"[{r['difference_ci95'][0]:+.4f}, {r['difference_ci95'][1]:+.4f}]",
                flush=True,
            )
        for a, b in PAIRS:
            if a in ckpts and b in ckpts:
                d = paired_difference(ckpts[a], ckpts[b], args.data, args.n_boot)
                results["pairs"][f"{a}-vs-{b}-seed{seed}"] = d
                print(
                    f"{a} - {b} seed {seed}: {d['difference']:+.4f} "
                    f"[{d['difference_ci95'][0]:+.4f}, {d['difference_ci95'][1]:+.4f}]",
                    flush=True,
                )
    gains = {
        v: [results["runs"][f"{v}-seed{s}"]["difference"] for s in args.seeds]
        for v in args.variants
    }
    results["mean_gain_over_random"] = {v: float(np.mean(g)) for v, g in gains.items()}
    results["command"] = shlex.join(["python", "benchmarks/stage1_fixes.py", *argv])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
