"""Mean teacher: an exponential moving average of the student's parameters.

After every optimiser step ``teacher.update(student)`` does θ' ← m·θ' + (1−m)·θ over all
parameters at once (``torch._foreach_lerp_``). The momentum m is called ``ema`` in the code and
the config (``pretrain.ema``, ``finetune.ema``); the paper writes it m in stage 1 and α in
stage 2. BatchNorm statistics follow one explicit policy:

- ``own`` (default, the released S²MTS²/MoCo behaviour): the teacher keeps the running statistics
  it accumulates in its own forward passes (it forwards in train mode during stage 1 and 2).
- ``copy``: the student's buffers are copied into the teacher after each update.
- ``ema``: floating-point buffers are averaged like parameters; integer buffers
  (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

BufferPolicy = Literal["own", "copy", "ema"]
BUFFER_POLICIES: tuple[str, ...] = ("own", "copy", "ema")


def _unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of a DistributedDataParallel student, else the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class EmaTeacher(nn.Module):
    """Teacher θ' = EMA of a student θ; holds its own deep copy (``.module``), never trained.

    Args:
        student: the network to copy (a DDP wrapper is unwrapped).
        ema: m, the EMA momentum (0.999 in S²MTS²).
        buffers: buffer policy ``own`` | ``copy`` | ``ema`` (see the module docstring).
        warmup: when True the momentum used at update t is min(m, (1+t)/(10+t)).

    ``forward(x)`` runs the teacher. The update count is saved in ``state_dict()`` (extra state).

    Example:
        >>> student = nn.Linear(4, 2)
        >>> teacher = EmaTeacher(student, ema=0.9)
        >>> teacher.update(student)
        >>> teacher.steps
        1
    """

    def __init__(
        self,
        student: nn.Module,
        ema: float = 0.999,
        buffers: BufferPolicy = "own",
        warmup: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema <= 1.0:
            raise ValueError(f"EMA momentum must lie in [0, 1], got {ema}")
        if buffers not in BUFFER_POLICIES:
            raise ValueError(
                f"EMA buffers policy must be one of {BUFFER_POLICIES}, got {buffers!r}"
            )
        self.module = copy.deepcopy(_unwrap(student))
        self.module.requires_grad_(False)
        self.ema = ema
        self.buffers_policy = buffers
        self.warmup = warmup
        self.steps = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def current_ema(self) -> float:
        """The momentum the next ``update()`` uses (warm-up applied when enabled)."""
        if self.warmup:
            return min(self.ema, (1 + self.steps) / (10 + self.steps))
        return self.ema

    @torch.no_grad()
    def update(self, student: nn.Module, ema: float | None = None) -> None:
        """θ' ← m·θ' + (1−m)·θ, then apply the buffer policy; ``ema`` overrides m (no warm-up)."""
        student = _unwrap(student)
        m = self.current_ema() if ema is None else ema
        teacher_params = list(self.module.parameters())
        student_params = list(student.parameters())
        if len(teacher_params) != len(student_params):
            raise ValueError(
                f"student has {len(student_params)} parameters, teacher {len(teacher_params)}"
            )
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - m)
        if self.buffers_policy != "own":
            self._update_buffers(student, m)
        self.steps += 1

    def _update_buffers(self, student: nn.Module, m: float) -> None:
        average = ([], [])
        replace = ([], [])
        for t, s in zip(self.module.buffers(), student.buffers()):
            group = average if self.buffers_policy == "ema" and t.is_floating_point() else replace
            group[0].append(t)
            group[1].append(s)
        if average[0]:
            torch._foreach_lerp_(average[0], average[1], 1.0 - m)
        if replace[0]:
            torch._foreach_copy_(replace[0], replace[1])

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
