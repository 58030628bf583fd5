"""Run folders: the resolved config, package version and git commit of every run."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml

from s2mts2 import __version__
from s2mts2.config import RunConfig, config_to_dict
from s2mts2.files import write_text_atomic


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


def environment() -> dict[str, Any]:
    """Versions and machine facts stored next to results."""
    return {
        "s2mts2": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or platform.machine(),
    }


def write_run_info(out_dir: Path, cfg: RunConfig, command: str) -> None:
    """Write ``config.yaml`` (resolved) and ``run.json`` (version, commit, command) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    info = {"command": command, **environment()}
    write_text_atomic(out_dir / "run.json", json.dumps(info, indent=2))
