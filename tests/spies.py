"""Test helpers that record the calls of a function: ``spy`` still runs it, ``stub`` does not."""

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
