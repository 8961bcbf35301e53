"""Intensity and mixing augmentations (images only, or images + labels for CutMix)."""

from __future__ import annotations

import torch


def random_contrast_brightness(
    x: torch.Tensor, gen: torch.Generator, *, contrast: tuple[float, float] = (0.75, 1.25), brightness: float = 0.1
) -> torch.Tensor:
    """x ``[B, C, H, W]``: per image ``(x - mean) * c + mean + b``, c uniform in ``contrast``, b in +-brightness."""
    b = x.shape[0]
    u = torch.rand(b, 2, generator=gen)
    c = (contrast[0] + u[:, 0] * (contrast[1] - contrast[0])).to(x)[:, None, None, None]
    br = ((u[:, 1] * 2 - 1) * brightness).to(x)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + br


def cutmix_boxes(
    bsz: int,
    h: int,
    w: int,
    gen: torch.Generator,
    *,
    prob: float = 0.5,
    area: tuple[float, float] = (0.1, 0.4),
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw CutMix boxes for a batch: with probability ``prob`` image i receives a random box (area
    fraction uniform in ``area``) from image ``perm[i]``. Returns (perm ``[B]`` int64, box mask
    ``[B, H, W]`` bool), to be applied with :func:`apply_cutmix` to every tensor that must stay
    consistent (images, pseudo-labels, confidences, teacher features)."""
    perm = torch.randperm(bsz, generator=gen)
    u = torch.rand(bsz, 4, generator=gen)
    mask = torch.zeros(bsz, h, w, dtype=torch.bool)
    for i in range(bsz):
        if u[i, 0] >= prob or bsz < 2:
            continue
        frac = area[0] + float(u[i, 1]) * (area[1] - area[0])
        bh, bw = max(1, int(round(h * frac**0.5))), max(1, int(round(w * frac**0.5)))
        top, left = int(float(u[i, 2]) * (h - bh + 1)), int(float(u[i, 3]) * (w - bw + 1))
        mask[i, top : top + bh, left : left + bw] = True
    return perm.to(device), mask.to(device)


def apply_cutmix(t: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the boxes of :func:`cutmix_boxes` into ``t`` (``[B, H, W]`` or ``[B, C, H, W]``). A ``t`` at a
    coarser resolution (e.g. a stride-s feature map) takes the box mask subsampled at its pixel centres."""
    h, w = t.shape[-2:]
    if tuple(mask.shape[-2:]) != (h, w):
        sy, sx = mask.shape[-2] // h, mask.shape[-1] // w
        if sy * h != mask.shape[-2] or sx * w != mask.shape[-1]:
            raise ValueError(
                f"apply_cutmix: tensor {tuple(t.shape)} is not a whole-stride view of mask {tuple(mask.shape)}"
            )
        mask = mask[:, sy // 2 :: sy, sx // 2 :: sx]
    m = mask if t.dim() == 3 else mask[:, None]
    return torch.where(m, t[perm], t)


def cutmix(
    x: torch.Tensor,
    y: torch.Tensor | None,
    gen: torch.Generator,
    *,
    prob: float = 0.5,
    area: tuple[float, float] = (0.1, 0.4),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """CutMix within the batch (:func:`cutmix_boxes` + :func:`apply_cutmix`); labels ``[B, H, W]``
    follow the same box. Returns (images ``[B, C, H, W]``, labels or None, box mask ``[B, H, W]`` bool)."""
    bsz, _, h, w = x.shape
    perm, mask = cutmix_boxes(bsz, h, w, gen, prob=prob, area=area, device=x.device)
    return apply_cutmix(x, perm, mask), (apply_cutmix(y, perm, mask) if y is not None else None), mask
