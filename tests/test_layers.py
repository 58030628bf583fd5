"""The package's layers (README, Layout): a module imports only from its own layer and those
before it, and inference loads no training loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import s2mts2

PACKAGE = Path(s2mts2.__file__).parent
# in order; a module may import from its own layer and the ones before it
LAYERS = [
    {"errors", "files", "config", "task"},
    {"runtime"},
    {"data"},
    {"models"},
    {"losses"},
    {"methods"},
    {"eval"},
    {"engine"},
    {"infer"},
    {"cli", "bench", "demo", "__main__"},
]


def _layer(name: str) -> int:
    """Layer index of ``s2mts2.<name>...`` (its first component)."""
    top = name.split(".")[0]
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"s2mts2.{top} is in no layer: add it to LAYERS and to README's Layout")


def _imports(path: Path) -> set[str]:
    """The s2mts2 modules ``path`` imports, without the ``s2mts2.`` prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix("s2mts2.") for n in names if n.startswith("s2mts2.")}
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.name == "__init__" and len(rel.parts) == 1:
            continue  # the package's own __init__ (version only)
        own = _layer(".".join(rel.parts))
        upward += [f"{rel} -> {name}" for name in _imports(path) if _layer(name) > own]
    assert not upward, upward


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from s2mts2.engine.loop import run_epochs\nimport s2mts2.infer.predict\n")
    assert _imports(bad) == {"engine.loop", "infer.predict"}
    assert _layer("engine.loop") > _layer("models.queue")


def test_inference_loads_no_training_loop():
    code = (
        "import sys, s2mts2.infer.predict, s2mts2.infer.export\n"
        "print(sorted(m for m in sys.modules if m.startswith('s2mts2.engine')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    for training in ("s2mts2.engine.loop", "s2mts2.engine.pretrain", "s2mts2.engine.finetune"):
        assert training not in loaded, loaded
