"""Did stage 1 learn? The kNN score of a stage-1 teacher against the same network at random init.

    python benchmarks/stage1_knn.py CKPT [--scored val|unlabelled] [--unseen-groups]
                                          [--data DIR] [--n-boot 1000] [--json OUT]

The score is the representation check of ``s2mts2 pretrain``: the teacher backbone's pooled
features, a k-nearest-neighbour classifier fitted on the labelled training images and scored on
validation (mean one-vs-rest AUC). The randomly initialised network is rebuilt from the
checkpoint's config and seed (it is the run's epoch-0 teacher; its score is checked against the
run's ``metrics.csv`` when present), and a paired percentile bootstrap over the scored images gives
a 95 % confidence interval of the difference trained − random.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2mts2.config import config_from_dict
from s2mts2.data.prepared import PreparedData
from s2mts2.engine.builders import pretrain_network
from s2mts2.engine.checkpoint import load_checkpoint, seed_everything
from s2mts2.engine.pretrain import knn_probs, monitor_rows
from s2mts2.errors import ConfigError, S2MTS2Error
from s2mts2.eval.metrics import paired_auc_difference
from s2mts2.models.heads import load_backbone_state
from s2mts2.runtime.device import Precision

log = logging.getLogger("s2mts2.benchmark")


def _logged_random_score(folder: Path) -> float | None:
    """The epoch-0 kNN score the run logged in ``metrics.csv`` (None when absent)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["epoch"] == "0" and row.get("knn_mean_auc"):
                return float(row["knn_mean_auc"])
    return None


def _scored(
    cfg: Any, data: PreparedData, scored: str, unseen_groups: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, score) table rows: the monitor's labelled rows and the ``scored`` rows."""
    table = data.table
    fit, score = monitor_rows(data, cfg)
    if scored == "unlabelled":
        score = np.setdiff1d(table.indices("train"), fit)
    elif scored != "val":
        raise ConfigError(f"--scored {scored!r}: expected val or unlabelled")
    if unseen_groups:
        score = score[~np.isin(table.groups[score], table.groups[fit])]
    return fit, score


def _stage1(ckpt: Path, data_dir: str | None) -> tuple[dict[str, Any], Any, PreparedData]:
    """(checkpoint state, its config, the prepared data) of a stage-1 checkpoint."""
    state = load_checkpoint(ckpt)
    if state.get("kind") != "pretrain":
        raise ConfigError(f"{ckpt}: not a stage-1 checkpoint (kind {state.get('kind')!r})")
    cfg = config_from_dict(state["config"])
    if data_dir is not None:
        cfg.data.dir = data_dir
    return state, cfg, PreparedData.open(cfg.data.dir, cfg.data.cache_for(cfg.data.size))


def _knn(net: torch.nn.Module, cfg: Any, data: PreparedData, fit, score) -> np.ndarray:
    """(len(score), C) kNN class scores from ``net``'s backbone features."""
    device = torch.device("cpu")
    pc, precision = cfg.pretrain, Precision("cpu")
    return knn_probs(
        net.backbone,
        data,
        fit,
        score,
        cfg.data.size,
        device,
        precision,
        pc.knn_k,
        pc.knn_temperature,
    ).numpy()


def _teacher(state: dict[str, Any], cfg: Any, channels: int) -> torch.nn.Module:
    net = pretrain_network(cfg.model, channels)
    load_backbone_state(net, state["teacher"])
    return net


def compare(
    ckpt: Path,
    data_dir: str | None = None,
    n_boot: int = 1000,
    scored: str = "val",
    unseen_groups: bool = False,
) -> dict[str, Any]:
    """kNN mean AUC of the random-init and the trained teacher backbone, and their difference.

    ``scored``: ``val`` (the monitor's images) or ``unlabelled`` (the training images outside the
    labelled subset: stage 1 saw them, but never their labels; more images, a tighter interval).
    ``unseen_groups``: score only images whose group (patient, lesion) has no labelled image, so
    that a neighbour cannot be another photograph of the same lesion (the SRC-MT split of
    HAM10000 puts images of one lesion into several splits).
    """
    state, cfg, data = _stage1(ckpt, data_dir)
    fit, score = _scored(cfg, data, scored, unseen_groups)
    seed_everything(cfg.seed)  # the generator state in which the run built its network
    random_net = pretrain_network(cfg.model, data.table.channels)
    trained = _knn(_teacher(state, cfg, data.table.channels), cfg, data, fit, score)
    paired = paired_auc_difference(
        trained,
        _knn(random_net, cfg, data, fit, score),
        data.table.labels[score],
        data.table,
        n_boot=n_boot,
    )
    trained_auc, random_auc = paired["mean_auc_a"], paired["mean_auc_b"]
    return {
        "checkpoint": str(ckpt),
        "epoch": int(state["epoch"]),
        "loss": cfg.pretrain.loss,
        "knn_mean_auc_random_init": random_auc,
        "knn_mean_auc_random_init_logged": _logged_random_score(ckpt.parent),
        "knn_mean_auc_trained": trained_auc,
        "difference": paired["difference"],
        "difference_ci95": paired["difference_ci95"],
        "scored": scored,
        "unseen_groups": unseen_groups,
        "n_fit": len(fit),
        "n_scored": len(score),
        "k": cfg.pretrain.knn_k,
        "n_boot": n_boot,
    }


def paired_difference(
    ckpt_a: Path, ckpt_b: Path, data_dir: str | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """kNN mean AUC of two stage-1 teachers on the same images (``ckpt_a``'s unlabelled training
    images of unseen groups) and a paired bootstrap CI of a − b."""
    state_a, cfg, data = _stage1(ckpt_a, data_dir)
    state_b, _, _ = _stage1(ckpt_b, data_dir)
    fit, score = _scored(cfg, data, "unlabelled", True)
    channels = data.table.channels
    paired = paired_auc_difference(
        _knn(_teacher(state_a, cfg, channels), cfg, data, fit, score),
        _knn(
            _teacher(state_b, config_from_dict(state_b["config"]), channels), cfg, data, fit, score
        ),
        data.table.labels[score],
        data.table,
        n_boot=n_boot,
    )
    return {
        "a": str(ckpt_a),
        "b": str(ckpt_b),
        "knn_mean_auc_a": paired["mean_auc_a"],
        "knn_mean_auc_b": paired["mean_auc_b"],
        "difference": paired["difference"],
        "difference_ci95": paired["difference_ci95"],
        "n_scored": len(score),
    }


def _fmt(value: float | None, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.4f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="stage-1 checkpoint (last.pt of s2mts2 pretrain)")
    p.add_argument("--data", default=None, help="prepared data folder (default: the run's)")
    p.add_argument("--scored", default="val", choices=["val", "unlabelled"])
    p.add_argument(
        "--unseen-groups",
        action="store_true",
        help="score only images whose patient/lesion has no labelled image",
    )
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = compare(args.checkpoint, args.data, args.n_boot, args.scored, args.unseen_groups)
    except S2MTS2Error as e:
        print(f"stage1_knn: error: {e}", file=sys.stderr)
        return 2
    result["command"] = shlex.join(["python", "benchmarks/stage1_knn.py", *argv])
    low, high = result["difference_ci95"]
    print(
        f"{args.checkpoint} (epoch {result['epoch']}, {result['loss']}): kNN mean AUC "
        f"random init {_fmt(result['knn_mean_auc_random_init'])} -> trained "
        f"{_fmt(result['knn_mean_auc_trained'])}, difference {_fmt(result['difference'], '+')} "
        f"(95 % CI {_fmt(low, '+')} .. {_fmt(high, '+')}, paired bootstrap over "
        f"{result['n_scored']} {args.scored} images"
        f"{' of unseen groups' if args.unseen_groups else ''})"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
