"""The ONNX packages check: one clear error naming what is missing or too old."""

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest

from s2mts2.errors import ConfigError
from s2mts2.infer import onnx_packages
from s2mts2.infer.onnx_packages import MINIMUM_VERSIONS, require_onnx_packages

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_minimums_are_the_onnx_extra_of_pyproject():
    line = re.search(r"^onnx = (\[.*\])$", PYPROJECT.read_text(), re.MULTILINE)
    pinned = dict(req.split(">=") for req in ast.literal_eval(line.group(1)))
    assert {name: ".".join(map(str, v)) for name, v in MINIMUM_VERSIONS.items()} == pinned


def test_installed_packages_pass():
    require_onnx_packages("onnx", "onnxruntime", "onnxscript")


def test_missing_and_old_packages_are_named_with_the_fix(monkeypatch):
    installed = {"onnx": "1.16.2", "onnxruntime": "1.18.0"}

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(onnx_packages.metadata, "version", version)
    with pytest.raises(ConfigError) as err:
        require_onnx_packages("onnx", "onnxruntime", "onnxscript")
    message = str(err.value)
    assert "onnx 1.16.2 is older than 1.17" in message
    assert "onnxscript is not installed" in message
    assert "onnxruntime 1.18.0" not in message  # new enough
    assert "pip install 's2mts2[onnx]'" in message
    installed["onnxscript"] = "0.10.1rc2"  # a two-digit minor compares as a number
    installed["onnx"] = "1.17.0"
    require_onnx_packages("onnx", "onnxruntime", "onnxscript")
