"""Checkpoints: atomic writes, safe loading, RNG state capture.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), saved with
``torch.save`` through ``files.write_atomic``, so an interrupted write never leaves a half
file. Loading uses ``weights_only=True``: a file that would need to run code when unpickled is
refused.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2mts2.config import renamed_keys
from s2mts2.errors import ConfigError, DataError, DivergenceError
from s2mts2.files import read_torch_file, write_atomic

log = logging.getLogger("s2mts2")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (``files.write_atomic``)."""
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); refuse files that would execute code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or "kind" not in state:
        raise DataError(f"{path}: not an s2mts2 checkpoint (no 'kind' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """All global RNG states (Python, NumPy, torch CPU, CUDA) as tensors/plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a machine may have fewer GPUs now
        for i, gen in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gen, i)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_state(kind: str, modules: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A full training checkpoint: each module's (or optimiser's) state_dict, the RNG states
    and plain ``values`` (epoch, step, history, config, meta, ...)."""
    return {
        "kind": kind,
        **{name: m.state_dict() for name, m in modules.items()},
        "rng": rng_state(),
        **values,
    }


# what a stage-2 best.pt holds: the model a user ships, not the state to continue training
MODEL_KEYS = ("kind", "teacher", "meta", "config", "epoch", "best_val")


def model_state(state: dict[str, Any]) -> dict[str, Any]:
    """The shipped model of a stage-2 training state: the teacher's weights (the network that
    evaluate, predict, export and serve use), meta, config, and the selected epoch with its
    validation score; no student, optimiser, RNG states or history (``last.pt`` keeps them)."""
    return {key: state[key] for key in MODEL_KEYS}


# config keys a resumed run may change: where and how it runs, what it only reads or reports
RESUME_MAY_CHANGE = frozenset(
    {
        "device",
        "compile",
        "cuda_graphs",
        "threads",
        "log_every",
        "checkpoint_interval",
        "tensorboard",
        "data.dir",
        "model.weights",
        "pretrain.monitor_every",
        "finetune.pretrained",
        "finetune.eval_every",
    }
)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any], kind: str) -> list[str]:
    """'key: saved -> current' for each setting of stage ``kind`` that differs between the config
    a checkpoint was trained with and the current one (keys the checkpoint predates are skipped;
    the other stage's section and :data:`RESUME_MAY_CHANGE` are not compared)."""
    other = "finetune." if kind == "pretrain" else "pretrain."
    saved = renamed_keys(saved, quiet=True)  # a checkpoint of an earlier version: today's names
    old, new = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current)))
    return [
        f"{key}: {old[key]!r} -> {new.get(key)!r}"
        for key in sorted(old)
        if key in new
        and old[key] != new[key]
        and key not in RESUME_MAY_CHANGE
        and not key.startswith(other)
    ]


def check_new_run(out: Path) -> None:
    """Refuse to start a run in ``out`` over an earlier one (its epochs would be lost)."""
    last = out / "last.pt"
    if last.exists():
        raise ConfigError(
            f"{out} already holds a run ({last.name}); continue it with --resume, or give "
            f"another --out (or delete {out}) to start a new one"
        )


def resume_training(
    path: Path, kind: str, modules: dict[str, Any], config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore what :func:`training_state` wrote into ``modules`` (modules, optimisers, loss
    scaler) and the RNGs; returns the state.

    The file is read onto the CPU: the RNG states must be CPU tensors, and each module and
    optimiser copies its tensors to the device its parameters are on.

    Raises ConfigError when ``path`` is missing, holds another kind of checkpoint, was trained
    with other settings than ``config`` (the current run's config dict; see
    :func:`config_changes`) or does not fit ``modules``.
    """
    if not path.exists():
        raise ConfigError(f"--resume: no checkpoint at {path}")
    state = load_checkpoint(path)
    if state["kind"] != kind:
        raise ConfigError(f"--resume: {path} is a {state['kind']} checkpoint, expected {kind}")
    changed = config_changes(state.get("config") or {}, config or {}, kind)
    if changed:
        longer = any(c.startswith(f"{kind}.epochs:") for c in changed)
        raise ConfigError(
            f"--resume: {path} was trained with other settings; resume with --out alone (the "
            f"run's {path.parent / 'config.yaml'} holds them), or the same config and --set "
            "values. Changed: "
            + "; ".join(changed)
            + (
                f". The number of epochs shapes the learning-rate schedule and the ramps, so a "
                f"run cannot be lengthened: start a new one with more {kind}.epochs"
                if longer
                else ""
            )
        )
    for name, module in modules.items():
        if isinstance(module, torch.amp.GradScaler):
            # a disabled scaler (fp32/bf16 run, or a checkpoint from before scalers were saved)
            # left nothing to restore: an fp16 resume then starts from a fresh loss scale
            if state.get(name):
                module.load_state_dict(state[name])
            continue
        kernels = [  # an optimiser keeps this run's fused / foreach choice (its device's)
            {k: g.get(k) for k in ("fused", "foreach")} for g in getattr(module, "param_groups", [])
        ]
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(
                f"--resume: the {name} in {path} does not fit this run: {str(e).splitlines()[0]}"
            ) from e
        for group, kernel in zip(getattr(module, "param_groups", []), kernels):
            group.update(kernel)
    set_rng_state(state["rng"])
    epochs = (config or {}).get(kind, {}).get("epochs")
    if epochs is not None and state["epoch"] >= epochs:
        log.info(
            "%s is complete (%d of %d epochs): nothing left to train", path, state["epoch"], epochs
        )
    else:
        log.info("resumed %s at epoch %d", path, state["epoch"])
    return state


def check_finite(losses: dict[str, float], stage: str, epoch: int, checkpoint: Path) -> None:
    """Stop a diverged run (a NaN or infinite epoch loss) before it overwrites ``checkpoint``."""
    bad = [f"{name} {value}" for name, value in losses.items() if not math.isfinite(value)]
    if not bad:
        return
    kept = (
        f"{checkpoint} still holds the last finished epoch ({epoch - 1})"
        if checkpoint.exists()
        else "no checkpoint was written"
    )
    raise DivergenceError(
        f"{stage} epoch {epoch}: {', '.join(bad)}: training diverged; {kept}. Lower {stage}.lr "
        "or, under bf16/fp16, try --set precision=fp32"
    )
