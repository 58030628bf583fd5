"""Test helper: record the calls of a function while still running it."""

from typing import Any


def spy(monkeypatch, owner: Any, name: str) -> list[tuple[tuple, dict]]:
    """Replace ``owner.name`` (a module's function or a class's method) by a wrapper that
    records each call's (args, kwargs), then calls the original; returns the record."""
    real = getattr(owner, name)
    calls: list[tuple[tuple, dict]] = []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls
