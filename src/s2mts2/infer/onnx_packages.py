"""The optional ONNX packages (``pip install 's2mts2[onnx]'``): present and new enough, or a clear
error before an export or an ONNX inference starts."""

from __future__ import annotations

import re
from importlib import metadata

from s2mts2.errors import ConfigError

# pyproject.toml's ``onnx`` extra (a test keeps the two equal); onnxscript 0.6 is the first with
# torch 2.11's exporter API
MINIMUM_VERSIONS = {"onnx": (1, 17), "onnxruntime": (1, 18), "onnxscript": (0, 6)}


def _release(version: str) -> tuple[int, ...]:
    """'1.18.0rc1' -> (1, 18): the major and minor numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def require_onnx_packages(*names: str) -> None:
    """Raise ConfigError naming each of ``names`` that is missing or older than its minimum."""
    problems = []
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if _release(version) < MINIMUM_VERSIONS[name]:
            problems.append(f"{name} {version} is older than {_dotted(MINIMUM_VERSIONS[name])}")
    if problems:
        wanted = ", ".join(f"{name}>={_dotted(MINIMUM_VERSIONS[name])}" for name in names)
        raise ConfigError(
            f"ONNX export and inference need {wanted}: {'; '.join(problems)}; "
            "install them with: pip install 's2mts2[onnx]' (from a checkout: pip install '.[onnx]')"
        )
