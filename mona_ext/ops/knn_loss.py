"""``torch.ops.mona.knn_loss``: MONA's nearest-neighbour loss L_nn, with a gradient to the student.

Kernels: ``csrc/knn_loss/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.knn_loss``.
"""

from __future__ import annotations

import torch

from ._common import check, check_student_teacher_queue, shape_str

# Largest k on every device (kMaxK in csrc/knn_loss/knn_loss_checks.h: the CUDA kernel keeps each
# warp's sorted top-k list in shared memory; the CPU kernel applies the same limit).
MAX_K = 256


def knn_loss(student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Negative mean cosine between each student embedding and the ``k`` queue entries nearest
    (cosine) to the matching teacher embedding.

    Args:
        student: ``[B, d]`` u_g (the gradient flows here — unlike the public code's version).
        teacher: ``[B, d]`` v'_g, used only to pick the neighbours (no gradient).
        queue: ``[K, d]`` e.g. ``FeatureQueue.filled()`` (no gradient); ``1 <= k <= min(K, 256)`` on every device.
        k: neighbours per row (the training configs' ``mona.knn_k`` defaults to 5, the paper's value).
            Ties between equal similarities go to the lower index; a NaN similarity ranks first (as in
            ``torch.topk``), so a NaN queue row reaches the loss; a NaN teacher row ties everything and
            picks entries 0..k-1 (on every device).

    Returns:
        0-dim tensor in the student's dtype; 0 for ``B == 0``.

    The op itself: ``torch.ops.mona.knn_loss(student, teacher, queue, k)`` returns a tuple
    ``(loss, indices)``, not the loss alone: ``loss`` 0-dim (as above) and ``indices`` ``[B, k]`` int64,
    the neighbours' queue rows, most similar first (saved for the backward; ``knn_indices`` returns
    them). Autograd flows through ``loss`` only. ``mona_ext.knn_loss`` returns the loss alone.
    """
    loss, _ = torch.ops.mona.knn_loss(student, teacher, queue, int(k))
    return loss


def knn_indices(student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The neighbour indices ``[B, k]`` (most similar first) that ``knn_loss`` uses."""
    return torch.ops.mona.knn_loss(student, teacher, queue, int(k))[1]


@torch.library.register_fake("mona::knn_loss")
def _knn_loss_fake(student, teacher, queue, k):
    op = "knn_loss"
    check_student_teacher_queue(op, student, teacher, queue)
    K = queue.shape[0]
    check(k >= 1, op, lambda: f"k must be >= 1, got {k}")
    check(k <= MAX_K, op, lambda: f"k must be <= {MAX_K} (on every device), got k={k}")
    check(k <= K, op, lambda: f"k={k} exceeds the queue size K={K} (need k <= K)")
    return student.new_empty(()), student.new_empty((student.shape[0], k), dtype=torch.int64)


@torch.library.register_fake("mona::knn_loss_backward")
def _knn_loss_backward_fake(grad_loss, student, queue, indices):
    op = "knn_loss_backward"
    check_student_teacher_queue(op, student, student, queue)
    B = student.shape[0]
    check(
        indices.dim() == 2 and indices.shape[0] == B,
        op,
        lambda: f"indices must be [B, k] int64 with B = {B}, got {shape_str(indices)}",
    )
    check(indices.shape[1] <= MAX_K, op, lambda: f"indices has k={indices.shape[1]} columns, at most {MAX_K}")
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, queue, k = inputs
    _, indices = output
    ctx.save_for_backward(student, queue, indices)
    ctx.mark_non_differentiable(indices)


def _backward(ctx, grad_loss, _grad_indices):
    student, queue, indices = ctx.saved_tensors
    grad_student = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_student = torch.ops.mona.knn_loss_backward(grad_loss, student, queue, indices)
    return grad_student, None, None, None  # teacher / queue: constants (neighbour targets)


torch.library.register_autograd("mona::knn_loss", _backward, setup_context=_setup_context)
