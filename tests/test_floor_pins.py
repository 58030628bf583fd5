"""`make test-floor` pins exactly the floors pyproject.toml declares (dependencies + onnx extra)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _release(version: str) -> tuple[int, ...]:
    """'10' -> (10, 0, 0): versions compared with zero padding, as pip does."""
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_floor_pins_are_the_pyproject_floors():
    pyproject = ROOT.joinpath("pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    onnx_extra = re.search(r"^onnx = \[(.*?)\]$", pyproject, re.MULTILINE)
    declared = re.findall(r'"([\w-]+)>=([\d.]+)"', dependencies.group(1) + onnx_extra.group(1))
    makefile = ROOT.joinpath("Makefile").read_text().replace("\\\n", " ")
    pins = re.search(r"^FLOOR_PINS \?= (.*)$", makefile, re.MULTILINE).group(1).split()
    pinned = dict(pin.split("==") for pin in pins)
    assert len(declared) == 13
    assert {name: _release(v) for name, v in declared} == {
        name: _release(v) for name, v in pinned.items()
    }
