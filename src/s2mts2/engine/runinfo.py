"""Run folders: the resolved config, package version, git commit and log of every run."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from s2mts2 import __version__
from s2mts2.config import RunConfig, config_to_dict
from s2mts2.files import write_text_atomic
from s2mts2.runtime.device import describe_device

LOG_FILE = "train.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def git_commit() -> str | None:
    """Commit of the source tree this package runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Versions and machine facts stored next to results; ``device``: the one the run used
    (default: the first GPU, else the CPU), named with its hardware."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "s2mts2": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": describe_device(device),
    }


def write_run_info(out_dir: Path, cfg: RunConfig, command: str, device: torch.device) -> None:
    """Write ``config.yaml`` (resolved) and ``run.json`` (version, commit, command, the device
    the run uses) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    info = {"command": command, **environment(device)}
    write_text_atomic(out_dir / "run.json", json.dumps(info, indent=2))


@contextlib.contextmanager
def train_log(out_dir: Path, command: str) -> Iterator[None]:
    """Append the run's messages to ``OUT/train.log`` while the block runs: what the ``s2mts2``
    logger shows on the console (progress bars are not log records, so they stay out), headed by
    the command, and the error or interruption that ended the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / LOG_FILE, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("s2mts2")

    def file_only(level: int, text: str) -> None:
        handler.handle(
            logging.makeLogRecord(
                {
                    "levelno": level,
                    "levelname": logging.getLevelName(level),
                    "msg": text,
                    "name": logger.name,
                }
            )
        )

    file_only(logging.INFO, command or "(run started)")
    logger.addHandler(handler)
    try:
        yield
    except KeyboardInterrupt:
        file_only(logging.ERROR, "interrupted")
        raise
    except Exception as e:
        file_only(logging.ERROR, f"stopped: {e}" if str(e) else f"stopped: {type(e).__name__}")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
