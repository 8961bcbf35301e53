"""``torch.ops.mona.class_mean``: per-class mean of pixel features (prototypes).

Kernels: ``csrc/class_mean/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.class_mean``.
"""

from __future__ import annotations

import torch

from ._common import acc_dtype, check, check_features_labels


def class_mean(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight: torch.Tensor | None = None,
    ignore_index: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class (weighted) mean of features over valid pixels, in one pass.

    Args:
        features: ``[B, D, H, W]`` (any strides; channels-last is read in place) or ``[N, D]``;
            float32/float64/float16/bfloat16.
        labels: ``[B, H, W]`` or ``[N]``, int64/int32, values in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: C, the number of classes (output sizes never depend on the data).
        weight: optional ``labels``-shaped float tensor: a 0/1 mask or soft per-pixel confidence.
        ignore_index: label value that marks pixels to skip.

    Returns:
        ``(means [C, D], counts [C])``: means in the features' dtype (zeros for an absent class),
        counts = sum of weights per class (float32; float64 for float64 features).
        Differentiable w.r.t. ``features`` and ``weight``.

    Reproducibility: the CPU kernel gives the same bits on every run (for a thread count); the
    CUDA forward adds with atomics (last-bit differences between runs) unless
    ``torch.use_deterministic_algorithms(True)``, under which it sums in a fixed order (slower).
    The backward is reproducible on both devices.
    """
    return torch.ops.mona.class_mean(features, labels, num_classes, weight, ignore_index)


@torch.library.register_fake("mona::class_mean")
def _class_mean_fake(features, labels, num_classes, weight=None, ignore_index=-1):
    check_features_labels("class_mean", features, labels, weight, num_classes)
    D = features.shape[1]
    means = features.new_empty((num_classes, D))
    counts = features.new_empty((num_classes,), dtype=acc_dtype(features.dtype))
    return means, counts


@torch.library.register_fake("mona::class_mean_backward")
def _class_mean_backward_fake(
    grad_means, grad_counts, features, labels, weight, means, counts, ignore_index, weight_requires_grad
):
    op = "class_mean_backward"
    check_features_labels(op, features, labels, weight, means.shape[0])
    check(not weight_requires_grad or weight is not None, op, lambda: "weight_requires_grad=True needs a weight")
    grad_features = torch.empty_like(features)
    if weight_requires_grad:
        grad_weight = torch.empty_like(weight)
    else:
        grad_weight = features.new_empty((0,), dtype=acc_dtype(features.dtype))
    return grad_features, grad_weight


def _setup_context(ctx, inputs, output):
    features, labels, num_classes, weight, ignore_index = inputs
    means, counts = output
    ctx.weight_requires_grad = weight is not None and ctx.needs_input_grad[3]
    ctx.ignore_index = ignore_index
    ctx.save_for_backward(features, labels, weight, means, counts)


def _backward(ctx, grad_means, grad_counts):
    features, labels, weight, means, counts = ctx.saved_tensors
    if grad_means is None:
        grad_means = torch.zeros_like(means)
    if grad_counts is None:
        grad_counts = torch.zeros_like(counts)
    grad_features, grad_weight = torch.ops.mona.class_mean_backward(
        grad_means,
        grad_counts,
        features,
        labels,
        weight,
        means,
        counts,
        ctx.ignore_index,
        ctx.weight_requires_grad,
    )
    return (
        grad_features if ctx.needs_input_grad[0] else None,
        None,
        None,
        grad_weight if ctx.weight_requires_grad else None,
        None,
    )


torch.library.register_autograd("mona::class_mean", _backward, setup_context=_setup_context)
