"""Intensity and mixing augmentations (images only, or images + labels for CutMix)."""

from __future__ import annotations

import torch


def random_contrast_brightness(x: torch.Tensor, gen: torch.Generator, *, contrast: tuple[float, float] = (0.75, 1.25),
                               brightness: float = 0.1) -> torch.Tensor:
    """x ``[B, C, H, W]``: per image ``(x - mean) * c + mean + b``, c uniform in ``contrast``, b in +-brightness."""
    b = x.shape[0]
    u = torch.rand(b, 2, generator=gen)
    c = (contrast[0] + u[:, 0] * (contrast[1] - contrast[0])).to(x)[:, None, None, None]
    br = ((u[:, 1] * 2 - 1) * brightness).to(x)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + br


def cutmix(x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator, *, prob: float = 0.5,
           area: tuple[float, float] = (0.1, 0.4)) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """CutMix within the batch: with probability ``prob`` image i receives a random box from image
    ``perm[i]`` (box area fraction uniform in ``area``); labels ``[B, H, W]`` follow the same box.

    Returns (images ``[B, C, H, W]``, labels or None, box mask ``[B, H, W]`` bool).
    """
    bsz, _, h, w = x.shape
    perm = torch.randperm(bsz, generator=gen)
    u = torch.rand(bsz, 4, generator=gen)
    mask = torch.zeros(bsz, h, w, dtype=torch.bool)
    for i in range(bsz):
        if u[i, 0] >= prob or bsz < 2:
            continue
        frac = area[0] + float(u[i, 1]) * (area[1] - area[0])
        bh, bw = max(1, int(round(h * frac ** 0.5))), max(1, int(round(w * frac ** 0.5)))
        top, left = int(float(u[i, 2]) * (h - bh + 1)), int(float(u[i, 3]) * (w - bw + 1))
        mask[i, top:top + bh, left:left + bw] = True
    mask = mask.to(x.device)
    perm = perm.to(x.device)
    x_out = torch.where(mask[:, None], x[perm], x)
    y_out = torch.where(mask, y[perm], y) if y is not None else None
    return x_out, y_out, mask
