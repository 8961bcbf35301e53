"""Small helpers shared by the op modules."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scaled(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad * grad_loss``: in place in eager mode (``grad`` is the forward's buffer, used once), where
    the common ``grad_loss == 1`` of a CPU loss is skipped (reading a CPU scalar costs no sync; x * 1 == x).
    Under tracing (torch.compile, opcheck: fake / functional tensor subclasses) out of place, since
    a graph may not mutate a forward output in its backward, and the value of grad_loss is unknown."""
    eager = type(grad_loss) is torch.Tensor and type(grad) is torch.Tensor and not torch.compiler.is_compiling()
    if not eager:
        return grad * grad_loss.to(grad.dtype)
    if grad_loss.device.type == "cpu" and grad_loss.numel() == 1 and grad_loss.item() == 1:
        return grad
    return grad.mul_(grad_loss.to(grad.dtype))
