"""``torch.ops.mona.similarity_kl``: ISD / GLCon KL between teacher and student similarity distributions.

Kernels: ``csrc/similarity_kl/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.similarity_kl``.
"""

from __future__ import annotations

import torch

from ._common import acc_dtype, check_student_teacher_queue, scaled


def similarity_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    queue: torch.Tensor,
    tau_student: float = 0.1,
    tau_teacher: float = 0.01,
) -> torch.Tensor:
    """Mean over rows of ``KL(softmax(cos(teacher, queue) / tau_teacher) || softmax(cos(student, queue) / tau_student))``.

    This is ISD's ``kl_div(log_softmax(student_logits), softmax(teacher_logits), reduction='batchmean')``
    with cosine logits computed inside (no normalised copies of the queue).

    Args:
        student: ``[B, d]`` embeddings u (the gradient flows here).
        teacher: ``[B, d]`` teacher embeddings v' (no gradient: its ``.grad`` stays None).
        queue: ``[K, d]`` e.g. ``FeatureQueue.filled()`` (no gradient).
        tau_student, tau_teacher: positive temperatures (the training configs' ``glcon.tau_student`` /
            ``glcon.tau_teacher`` default to 0.1 / 0.01, the paper's values).

    Returns:
        0-dim tensor in the student's dtype (fp32 accumulation); 0 for ``B == 0``.

    The op itself: ``torch.ops.mona.similarity_kl(student, teacher, queue, tau_student, tau_teacher,
    compute_grad)`` returns a tuple ``(loss, lse_student, lse_teacher, grad_student)``, not the loss
    alone: ``loss`` 0-dim (as above); ``lse_student`` / ``lse_teacher`` ``[B]`` float32 (float64 for
    float64 inputs), the log-sum-exp over the queue of each row's logits (saved for the backward);
    ``grad_student`` d loss / d student ``[B, d]`` (for a unit upstream gradient) when
    ``compute_grad``, else an empty ``[0]`` tensor. Autograd flows through ``loss`` only.
    ``mona_ext.similarity_kl`` returns the loss alone.

    Under autograd (the student requires grad) the gradient is computed in the same call
    (``torch.ops.mona.similarity_kl(..., compute_grad=True)``; the backward only scales it): on the CPU
    the queue is multiplied by the embeddings three times per step, as in plain PyTorch, not five.

    Limit: on CUDA the gradient kernel keeps 8 partial d-vectors per row in shared memory, so ``d`` is at
    most (the GPU's opt-in shared memory per block - 8 words) / (8 words): 3167 in float32 / 1583
    in float64 on an RTX 3090 (99 KiB), more on an A100 / H100. The error names the limit. The CPU
    kernel has none.
    """
    # The gradient in the same pass as the loss when autograd will ask for it (the backward then
    # only scales it by grad_loss): on the CPU the queue is multiplied three times per step, not five.
    compute_grad = torch.is_grad_enabled() and student.requires_grad
    loss, *_ = torch.ops.mona.similarity_kl(
        student, teacher, queue, float(tau_student), float(tau_teacher), compute_grad
    )
    return loss


@torch.library.register_fake("mona::similarity_kl")
def _similarity_kl_fake(student, teacher, queue, tau_student, tau_teacher, compute_grad=False):
    check_student_teacher_queue("similarity_kl", student, teacher, queue)
    B = student.shape[0]
    acc = acc_dtype(student.dtype)
    grad = torch.empty_like(student, memory_format=torch.contiguous_format) if compute_grad else student.new_empty((0,))
    return student.new_empty(()), student.new_empty((B,), dtype=acc), student.new_empty((B,), dtype=acc), grad


@torch.library.register_fake("mona::similarity_kl_backward")
def _similarity_kl_backward_fake(
    grad_loss, student, teacher, queue, lse_student, lse_teacher, tau_student, tau_teacher
):
    check_student_teacher_queue("similarity_kl_backward", student, teacher, queue)
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    student, teacher, queue, tau_student, tau_teacher, compute_grad = inputs
    _, lse_s, lse_t, grad = output
    ctx.mark_non_differentiable(lse_s, lse_t, grad)
    ctx.set_materialize_grads(False)
    ctx.taus = (tau_student, tau_teacher)
    # The forward's gradient is kept as an attribute, not a saved tensor: the first backward hands it
    # on (scaled) and drops the reference; a second backward (retain_graph) recomputes.
    ctx.fused = grad if compute_grad else None
    ctx.save_for_backward(student, teacher, queue, lse_s, lse_t)


def _backward(ctx, grad_loss, *_unused_grads):
    student, teacher, queue, lse_s, lse_t = ctx.saved_tensors
    fused, ctx.fused = ctx.fused, None
    grad_student = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        if fused is not None:
            grad_student = scaled(fused, grad_loss)
        else:
            grad_student = torch.ops.mona.similarity_kl_backward(
                grad_loss, student, teacher, queue, lse_s, lse_t, *ctx.taus
            )
    # teacher and queue are treated as constants (EMA teacher, queue of detached embeddings).
    return grad_student, None, None, None, None, None


torch.library.register_autograd("mona::similarity_kl", _backward, setup_context=_setup_context)
