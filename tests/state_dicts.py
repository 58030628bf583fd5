"""Test helpers: nested state dicts (modules, optimisers, checkpoints) flattened and compared."""

import torch


def flat_tensors(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested dict / list state, keyed by its dotted path (``state.0.x``)."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict | list | tuple):
            out.update(flat_tensors(v, f"{prefix}{k}."))
    return out


def max_diff(a, b) -> float:
    """Largest absolute difference between two states of the same keys (float64)."""
    ta, tb = flat_tensors(a), flat_tensors(b)
    assert ta.keys() == tb.keys()
    return max((x.double() - tb[k].double()).abs().max().item() for k, x in ta.items() if x.numel())
