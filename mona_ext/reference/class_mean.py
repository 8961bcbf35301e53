"""Reference of ``mona.class_mean``: ``index_add_`` over a permuted copy."""

from __future__ import annotations

import torch

from ..ops._common import acc_dtype


def _pixels_by_channel(features: torch.Tensor) -> torch.Tensor:
    """``[B, D, H, W]`` -> ``[B*H*W, D]`` (a permuted copy), ``[N, D]`` unchanged."""
    if features.dim() == 4:
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    return features


def class_mean(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight: torch.Tensor | None = None,
    ignore_index: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``mona.class_mean`` with ``index_add_`` (same arguments and outputs)."""
    acc = acc_dtype(features.dtype)
    x = _pixels_by_channel(features).to(acc)
    lab = labels.reshape(-1).long()
    w = torch.ones_like(lab, dtype=acc) if weight is None else weight.reshape(-1).to(acc)
    valid = (lab >= 0) & (lab < num_classes)
    bad = ~valid & (lab != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"class_mean: labels contain {int(lab[bad][0])} outside [0, {num_classes})")
    w = torch.where(valid, w, torch.zeros_like(w))
    idx = torch.where(valid, lab, torch.zeros_like(lab))
    sums = torch.zeros(num_classes, x.shape[1], dtype=acc, device=x.device).index_add(0, idx, x * w[:, None])
    counts = torch.zeros(num_classes, dtype=acc, device=x.device).index_add(0, idx, w)
    safe = torch.where(counts > 0, counts, torch.ones_like(counts))
    means = torch.where(counts[:, None] > 0, sums / safe[:, None], torch.zeros_like(sums))
    return means.to(features.dtype), counts
