"""Test helpers that record the calls of a function: ``spy`` still runs it, ``stub`` does not."""

from pathlib import Path
from typing import Any


def _record(monkeypatch, owner: Any, name: str, answer) -> list[tuple[tuple, dict]]:
    calls: list[tuple[tuple, dict]] = []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return answer(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def spy(monkeypatch, owner: Any, name: str) -> list[tuple[tuple, dict]]:
    """Replace ``owner.name`` (a module's function or a class's method) by a wrapper that
    records each call's (args, kwargs), then calls the original; returns the record."""
    return _record(monkeypatch, owner, name, getattr(owner, name))


def stub(monkeypatch, owner: Any, name: str, result: Any) -> list[tuple[tuple, dict]]:
    """Like ``spy``, but the original is not run: every call returns ``result``."""
    return _record(monkeypatch, owner, name, lambda *args, **kwargs: result)


def interrupt_after_first_checkpoint(monkeypatch, module: Any) -> list[Path]:
    """Make ``module.save_checkpoint`` write, then raise KeyboardInterrupt after its first
    ``last.pt`` (a run stopped by Ctrl-C with one epoch on disk); returns the paths written."""
    real = module.save_checkpoint
    calls: list[Path] = []

    def save_then_stop(state, path):
        real(state, path)
        calls.append(path)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_checkpoint", save_then_stop)
    return calls
