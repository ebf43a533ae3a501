"""Mean teacher: an exponential moving average of the student that never receives gradients."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_alpha(step: int, momentum: float) -> float:
    """``alpha = min(1 - 1/(t+1), momentum)``: the teacher follows the student closely early on."""
    return min(1.0 - 1.0 / (step + 1), momentum)


def make_teacher(student: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, momentum: float) -> float:
    """teacher <- alpha * teacher + (1 - alpha) * student, for parameters and float buffers.

    Normalisation statistics (float buffers) are averaged like weights so the teacher's eval-mode
    statistics track the student's; integer buffers (batch counters) are copied. Returns alpha.
    """
    alpha = ema_alpha(step, momentum)
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(alpha).add_(s_buf.detach(), alpha=1.0 - alpha)
        else:
            t_buf.copy_(s_buf)
    return alpha
