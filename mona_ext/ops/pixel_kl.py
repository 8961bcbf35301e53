"""``torch.ops.mona.pixel_kl``: fused per-pixel KL between two class distributions (L_eqv).

Kernels: ``csrc/pixel_kl/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.pixel_kl``.
"""

from __future__ import annotations

import torch

from ._common import acc_dtype, check, scaled, shape_str


def pixel_kl(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    mask: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Masked mean over pixels of the per-pixel KL divergence between ``softmax(logits_a)`` and
    ``softmax(logits_b)`` over the class dimension.

    Direction: with ``p = softmax(logits_a)``, ``q = softmax(logits_b)``, the per-pixel term is
    ``KL(p || q) = sum_c p_c (log p_c - log q_c)``, i.e. ``logits_a`` is the *target* and ``logits_b``
    the *input* of ``F.kl_div(input=log q, target=p)``. ``symmetric=True`` (default) adds ``KL(q || p)``.

    Args:
        logits_a, logits_b: ``[B, C, H, W]`` (any strides; read in place) or ``[N, C]``, same shape and
            dtype (float32/float64/float16/bfloat16; accumulation in fp32 / fp64).
        mask: optional ``[B, H, W]`` / ``[N]`` float (weights) or bool; no gradient flows to it.
        symmetric: add the reverse direction.

    Returns:
        0-dim tensor (logits' dtype): ``sum(mask * kl) / sum(mask)``; an all-zero mask gives 0 and zero
        gradients (never nan). Differentiable w.r.t. whichever logits require grad.

    The op itself: ``torch.ops.mona.pixel_kl(logits_a, logits_b, mask, symmetric, compute_grad_a,
    compute_grad_b)`` returns a tuple ``(loss, weight_sum, grad_a, grad_b)``, not the loss alone:
    ``loss`` 0-dim (as above); ``weight_sum`` 0-dim float32 (float64 for float64 logits), ``sum(mask)``
    or the number of pixels without a mask; ``grad_a`` / ``grad_b`` d loss / d logits_a / logits_b
    (logits-shaped, for a unit upstream gradient) when ``compute_grad_a`` / ``compute_grad_b``, else
    empty ``[0]`` tensors. Autograd flows through ``loss`` only. ``mona_ext.pixel_kl`` returns the loss
    alone, asking for the gradients that autograd will need.
    """
    # Gradients in the same pass as the loss when autograd will ask for them (the backward then
    # only scales them by grad_loss); the logits are read once.
    grad = torch.is_grad_enabled()
    loss, *_ = torch.ops.mona.pixel_kl(
        logits_a, logits_b, mask, symmetric, grad and logits_a.requires_grad, grad and logits_b.requires_grad
    )
    return loss


def _check_fake(op, a, b, mask):
    """The shape checks of ``pixel_kl_checks::check_inputs`` (csrc/pixel_kl/pixel_kl_checks.h)."""
    check(a.dim() in (4, 2), op, lambda: f"logits_a must be [B, C, H, W] or [N, C], got shape {shape_str(a)}")
    check(a.shape == b.shape, op, lambda: f"logits_b must have logits_a's shape {shape_str(a)}, got {shape_str(b)}")
    check(a.shape[1] > 0, op, lambda: f"need at least one class, got logits of shape {shape_str(a)}")
    if mask is not None:
        pixels = a.select(1, 0)
        check(
            mask.shape == pixels.shape,
            op,
            lambda: (
                f"mask must be {'[B, H, W]' if a.dim() == 4 else '[N]'} = {shape_str(pixels)}, got {shape_str(mask)}"
            ),
        )


@torch.library.register_fake("mona::pixel_kl")
def _pixel_kl_fake(logits_a, logits_b, mask=None, symmetric=True, compute_grad_a=False, compute_grad_b=False):
    _check_fake("pixel_kl", logits_a, logits_b, mask)
    ga = torch.empty_like(logits_a) if compute_grad_a else logits_a.new_empty((0,))
    gb = torch.empty_like(logits_b) if compute_grad_b else logits_b.new_empty((0,))
    return logits_a.new_empty(()), logits_a.new_empty((), dtype=acc_dtype(logits_a.dtype)), ga, gb


@torch.library.register_fake("mona::pixel_kl_backward")
def _pixel_kl_backward_fake(grad_loss, logits_a, logits_b, mask, weight_sum, symmetric, need_grad_a, need_grad_b):
    _check_fake("pixel_kl_backward", logits_a, logits_b, mask)
    ga = torch.empty_like(logits_a) if need_grad_a else logits_a.new_empty((0,))
    gb = torch.empty_like(logits_b) if need_grad_b else logits_b.new_empty((0,))
    return ga, gb


def _setup_context(ctx, inputs, output):
    logits_a, logits_b, mask, symmetric, compute_a, compute_b = inputs
    _, weight_sum, grad_a, grad_b = output
    ctx.mark_non_differentiable(weight_sum, grad_a, grad_b)
    ctx.set_materialize_grads(False)  # no zero-filled B x C x H x W "gradients" of grad_a / grad_b
    ctx.symmetric = symmetric
    ctx.need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    # The forward's gradients are kept as attributes, not saved tensors: the first backward hands
    # them on (scaled in place) and drops the reference, so autograd can take the buffer as .grad
    # instead of copying it. A second backward through the same graph (retain_graph) recomputes.
    ctx.fused = [grad_a if compute_a else None, grad_b if compute_b else None]
    ctx.save_for_backward(logits_a, logits_b, mask, weight_sum)


def _backward(ctx, grad_loss, *_unused_grads):
    logits_a, logits_b, mask, weight_sum = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = torch.zeros((), dtype=weight_sum.dtype, device=weight_sum.device)
    fused, ctx.fused = ctx.fused, [None, None]
    if all(g is not None for g, need in zip(fused, ctx.need) if need):
        grads = [scaled(g, grad_loss) if need else None for g, need in zip(fused, ctx.need)]
        return grads[0], grads[1], None, None, None, None
    ga, gb = torch.ops.mona.pixel_kl_backward(
        grad_loss, logits_a, logits_b, mask, weight_sum, ctx.symmetric, ctx.need[0], ctx.need[1]
    )
    return (ga if ctx.need[0] else None, gb if ctx.need[1] else None, None, None, None, None)


torch.library.register_autograd("mona::pixel_kl", _backward, setup_context=_setup_context)
