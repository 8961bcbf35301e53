"""``torch.ops.mona.contrast_infonce``: the fused InfoNCE over sampled indices (step 4 of ``contrast_loss``).

Queries and keys are gathered from the feature maps by index: the Q x (M+1) x D key tensor is never
built, and the backward only scatters the forward's per-query gradient into the query pixels.

Kernels: ``csrc/contrast_infonce/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.contrast_infonce``.
"""

from __future__ import annotations

import torch

from ._common import acc_dtype, check, shape_str


def contrast_infonce(
    features: torch.Tensor,
    key_features: torch.Tensor,
    prototypes: torch.Tensor,
    query_index: torch.Tensor,
    negative_index: torch.Tensor,
    class_weight: torch.Tensor,
    temperature: float = 0.5,
    bank: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused InfoNCE over sampled indices (0-dim loss); gradient to ``features`` only.

    Args:
        features: ``[B, D, H, W]`` / ``[N, D]`` the (student) map the queries come from, or ``[Nq, D]``
            query rows gathered beforehand (then ``query_index`` indexes these rows).
        key_features: the same shape, or (with query rows) any ``[B, D, H, W]`` / ``[N, D]`` of the same D:
            the map the negatives are read from (no gradient).
        prototypes: ``[C, D]`` positive key of each class (no gradient).
        query_index, negative_index, class_weight: ``[C, Q]``, ``[C, Q, M]``, ``[C]`` from ``sample_negatives``.
        temperature: t in ``cos(x, key) / t``.
        bank: optional ``[C, K, D]`` memory bank (``negative_index >= N`` points into it).

    Returns:
        ``sum_c class_weight[c] * mean_q [logsumexp_j(l_j) - l_0]`` (0-dim, float32; float64 for float64).

    The op itself: ``torch.ops.mona.contrast_infonce`` takes one more argument, ``compute_grad``, and
    returns a tuple ``(loss, grad_rows [C, Q, D])``: d loss / d query, computed in the same single pass
    over the keys (the backward only scatters it; an empty ``[0]`` tensor without ``compute_grad``).
    This wrapper asks for it when ``features`` needs a gradient and returns the loss alone.

    Limit: on CUDA each query's D-vector (and, with a gradient, its accumulator) is staged in shared
    memory, so D is at most the GPU's opt-in shared memory per block / (4 or 8 bytes x 1 or 2):
    12672 float32 / 6336 float64 with a gradient on an RTX 3090 (99 KiB). The error names the limit.
    The CPU kernel has none.
    """
    return torch.ops.mona.contrast_infonce(
        features,
        key_features,
        prototypes,
        query_index,
        negative_index,
        class_weight,
        temperature,
        bank,
        wants_grad(features),
    )[0]


def wants_grad(features: torch.Tensor) -> bool:
    """Whether autograd will ask for d loss / d features (then the forward computes it)."""
    return features.requires_grad and torch.is_grad_enabled()


def _check_features(op, features):
    check(
        features.dim() in (4, 2),
        op,
        lambda: f"features must be [B, D, H, W] or [N, D], got shape {shape_str(features)}",
    )


@torch.library.register_fake("mona::contrast_infonce")
def _contrast_infonce_fake(
    features,
    key_features,
    prototypes,
    query_index,
    negative_index,
    class_weight,
    temperature=0.5,
    bank=None,
    compute_grad=True,
):
    op = "contrast_infonce"  # the checks of prepare_infonce (csrc/contrast_infonce/contrast_infonce_host.cpp)
    _check_features(op, features)
    query_rows = features.dim() == 2 and key_features.dim() in (4, 2) and key_features.shape[1] == features.shape[1]
    check(
        key_features.shape == features.shape or query_rows,
        op,
        lambda: (
            f"key_features must have the features' shape {shape_str(features)} (or, with query rows [Nq, D], "
            f"any [B, D, H, W] / [N, D] with the same D), got {shape_str(key_features)}"
        ),
    )
    D = features.shape[1]
    check(
        prototypes.dim() == 2 and prototypes.shape[1] == D,
        op,
        lambda: f"prototypes must be [C, D] with D = {D}, got {shape_str(prototypes)}",
    )
    C = prototypes.shape[0]
    check(C > 0, op, lambda: "prototypes must have at least one class")
    check(
        query_index.dim() == 2 and query_index.shape[0] == C,
        op,
        lambda: f"query_index must be int64 [C, Q] with C = {C}, got {shape_str(query_index)}",
    )
    Q = query_index.shape[1]
    check(Q > 0, op, lambda: "num_queries must be positive, got 0 queries")
    check(
        negative_index.dim() == 3 and negative_index.shape[0] == C and negative_index.shape[1] == Q,
        op,
        lambda: f"negative_index must be int64 [C, Q, M] = [{C}, {Q}, M], got {shape_str(negative_index)}",
    )
    check(
        class_weight.dim() == 1 and class_weight.shape[0] == C,
        op,
        lambda: f"class_weight must be [C] = [{C}], got {shape_str(class_weight)}",
    )
    if bank is not None:
        check(
            bank.dim() == 3 and bank.shape[0] == C and bank.shape[2] == D,
            op,
            lambda: f"bank must be [C, K, D] = [{C}, K, {D}], got {shape_str(bank)}",
        )
    acc = acc_dtype(features.dtype)
    rows = (*query_index.shape, features.shape[1]) if compute_grad else (0,)
    return features.new_empty((), dtype=acc), features.new_empty(rows, dtype=acc)


@torch.library.register_fake("mona::contrast_infonce_backward")
def _contrast_infonce_backward_fake(grad_loss, features, query_index, class_weight, grad_rows):
    op = "contrast_infonce_backward"  # check_backward_args (contrast_infonce_host.cpp)
    _check_features(op, features)
    check(query_index.dim() == 2, op, lambda: f"query_index must be int64 [C, Q], got {shape_str(query_index)}")
    (C, Q), D = query_index.shape, features.shape[1]
    check(
        class_weight.dim() == 1 and class_weight.shape[0] == C,
        op,
        lambda: f"class_weight must be [C] = [{C}], got {shape_str(class_weight)}",
    )
    check(
        grad_rows.dim() == 3 and tuple(grad_rows.shape) == (C, Q, D),
        op,
        lambda: (
            f"grad_rows must be [C, Q, D] = [{C}, {Q}, {D}] (was the forward called with compute_grad=False?), "
            f"got {shape_str(grad_rows)}"
        ),
    )
    return torch.empty_like(features)


def _setup_context(ctx, inputs, output):
    features, _, _, query_index, _, class_weight, _, _, compute_grad = inputs
    _, grad_rows = output
    ctx.mark_non_differentiable(grad_rows)
    ctx.compute_grad = compute_grad
    ctx.save_for_backward(features, query_index, class_weight, grad_rows)


def _backward(ctx, grad_loss, _grad_rows):
    features, query_index, class_weight, grad_rows = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        if not ctx.compute_grad:
            raise RuntimeError(
                "contrast_infonce: backward through a forward called with compute_grad=False; "
                "call it with compute_grad=True when features need a gradient"
            )
        grad = torch.ops.mona.contrast_infonce_backward(grad_loss, features, query_index, class_weight, grad_rows)
    return grad, None, None, None, None, None, None, None, None


torch.library.register_autograd("mona::contrast_infonce", _backward, setup_context=_setup_context)
