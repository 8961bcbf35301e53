"""Small helpers shared by the op modules (``acc_dtype`` also by ``mona_ext.reference``)."""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels (C++ ``acc_dtype``), the fake kernels and the references:
    float64 for float64 inputs, float32 otherwise. The one Python definition."""
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


# ---- fake-kernel argument checks -----------------------------------------------------------------
# Every fake kernel checks ranks, shape relations and the integer arguments that set output sizes
# with ``torch._check_value`` (a ValueError, as in C++), worded like the C++ checks (messages "<op>: ..."), so that a wrong shape
# fails under torch.compile / meta tensors as it does in eager mode. Dtypes, devices and values that
# need the data (labels in range, temperatures) are left to the kernels.


def shape_str(t: torch.Tensor) -> str:
    """``[2, 3, 4]``: a shape as the C++ checks print it (``shape_str`` in csrc/common/tensor_utils.h)."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check(cond, op: str, message) -> None:
    """``torch._check_value(cond)`` with the message ``"<op>: " + message()`` (built only on failure):
    a ``ValueError``, as the C++ ``TORCH_CHECK_VALUE`` raises in eager mode."""
    torch._check_value(cond, lambda: f"{op}: {message()}")


def check_features_labels(
    op: str, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None, num_classes: int
) -> None:
    """Shapes of ``features [B, D, H, W] | [N, D]``, ``labels [B, H, W] | [N]``, ``weight`` (labels' shape)
    and ``num_classes > 0`` (C++ ``check_features_labels``: class_mean, class_mean_backward)."""
    check(num_classes > 0, op, lambda: f"num_classes must be positive, got {num_classes}")
    check(
        features.dim() in (4, 2),
        op,
        lambda: f"features must be [B, D, H, W] or [N, D], got shape {shape_str(features)}",
    )
    if features.dim() == 4:
        B, _, H, W = features.shape
        check(
            labels.dim() == 3 and labels.shape[0] == B and labels.shape[1] == H and labels.shape[2] == W,
            op,
            lambda: (
                f"labels must be [B, H, W] = [{B}, {H}, {W}] to match features {shape_str(features)}, "
                f"got {shape_str(labels)}"
            ),
        )
    else:
        N = features.shape[0]
        check(
            labels.dim() == 1 and labels.shape[0] == N,
            op,
            lambda: f"labels must be [N] = [{N}] to match features {shape_str(features)}, got {shape_str(labels)}",
        )
    if weight is not None:
        check(
            weight.shape == labels.shape,
            op,
            lambda: f"weight must have the labels' shape {shape_str(labels)}, got {shape_str(weight)}",
        )


def check_student_teacher_queue(op: str, student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor) -> None:
    """Shapes of ``student [B, d]``, ``teacher`` (student's shape) and ``queue [K, d]``, K > 0
    (C++ ``check_student_teacher_queue``: similarity_kl, knn_loss and their backwards)."""
    check(student.dim() == 2, op, lambda: f"student must be [B, d], got shape {shape_str(student)}")
    check(
        teacher.shape == student.shape,
        op,
        lambda: f"teacher must have the student's shape {shape_str(student)}, got {shape_str(teacher)}",
    )
    d = student.shape[1]
    check(
        queue.dim() == 2 and queue.shape[1] == d,
        op,
        lambda: f"queue must be [K, d] with d = {d}, got shape {shape_str(queue)}",
    )
    check(queue.shape[0] > 0, op, lambda: f"queue must hold at least one entry, got shape {shape_str(queue)}")
