"""The EMA teacher: a frozen copy of the student whose weights follow ``xi <- m xi + (1 - m) theta``."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off, in training mode except for dropout.

    BatchNorm normalises with the batch's statistics, as in ISD / Mean Teacher: with the running
    statistics (eval mode) a young teacher maps every image to nearly the same embedding, and the
    relational KL of GLCon starts at ~0 with no signal. Dropout is off so that pseudo-labels do
    not carry dropout noise. Keep the teacher in this mode: :func:`teacher_mode`."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher_mode(teacher)


def teacher_mode(teacher: nn.Module) -> nn.Module:
    """Training mode (batch-statistics BatchNorm) with every dropout layer in eval mode."""
    teacher.train()
    for mod in teacher.modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            mod.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Parameters and floating buffers (BN running mean / var): EMA with ``decay``; integer buffers
    (``num_batches_tracked``) copied. Called after every optimiser step."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("ema_update: teacher and student have different parameter lists")
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.is_floating_point():
            tb.mul_(decay).add_(sb, alpha=1.0 - decay)
        else:
            tb.copy_(sb)
