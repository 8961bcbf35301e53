"""``torch.ops.mona.class_pools``: valid pixels grouped by class, hard | easy (step 1 of ``contrast_loss``).

Kernels: ``csrc/class_pools/`` (schema, CPU, CUDA). Reference: ``mona_ext.reference.class_pools``.
"""

from __future__ import annotations

import torch

from ._common import check, shape_str


def class_pools(
    labels: torch.Tensor,
    num_classes: int,
    valid: torch.Tensor | None = None,
    prob: torch.Tensor | None = None,
    strong_threshold: float = 1.0,
    ignore_index: int = -1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group valid pixels by class, hard pixels first (``prob[c] < strong_threshold``).

    Args:
        labels: ``[B, H, W]`` or ``[N]`` int64/int32 (``ignore_index`` = not a pixel of any class).
        num_classes: C.
        valid: optional labels-shaped mask; a pixel takes part only where it is nonzero.
        prob: optional ``[B, C, H, W]`` (or ``[N, C]``) class probabilities; without it every pixel is hard.
        strong_threshold: a pixel of class c is hard when ``prob[c] < strong_threshold``.
        ignore_index: label value of pixels that belong to no class.

    Returns:
        ``(offsets [C], counts [C], hard_counts [C], permutation [N])``, int64:
        ``permutation[offsets[c] : offsets[c] + counts[c]]`` are class c's flat pixel indices, the
        first ``hard_counts[c]`` of them hard; unused tail entries are -1.
    """
    return torch.ops.mona.class_pools(labels, num_classes, valid, prob, strong_threshold, ignore_index)


@torch.library.register_fake("mona::class_pools")
def _class_pools_fake(labels, num_classes, valid=None, prob=None, strong_threshold=1.0, ignore_index=-1):
    op = "class_pools"
    check(num_classes > 0, op, lambda: f"num_classes must be positive, got {num_classes}")
    check(labels.dim() in (3, 1), op, lambda: f"labels must be [B, H, W] or [N], got shape {shape_str(labels)}")
    if valid is not None:
        check(
            valid.shape == labels.shape,
            op,
            lambda: f"valid must have the labels' shape {shape_str(labels)}, got {shape_str(valid)}",
        )
    if prob is not None:
        if labels.dim() == 3:
            B, H, W = labels.shape
            ok = prob.dim() == 4 and tuple(prob.shape) == (B, num_classes, H, W)
        else:
            ok = prob.dim() == 2 and tuple(prob.shape) == (labels.shape[0], num_classes)
        check(
            ok,
            op,
            lambda: (
                f"prob must be [B, C, H, W] (or [N, C]) with C = num_classes = {num_classes} "
                f"matching labels {shape_str(labels)}, got {shape_str(prob)}"
            ),
        )
    small = [labels.new_empty((num_classes,), dtype=torch.long) for _ in range(3)]
    return (*small, labels.new_empty((labels.numel(),), dtype=torch.long))
