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
    perm, mask, _ = cutmix_box_list(bsz, h, w, gen, prob=prob, area=area, device=device)
    return perm, mask


def cutmix_box_list(
    bsz: int,
    h: int,
    w: int,
    gen: torch.Generator,
    *,
    prob: float = 0.5,
    area: tuple[float, float] = (0.1, 0.4),
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int, int, int]]]:
    """:func:`cutmix_boxes` (the same draws) plus the boxes as host integers ``(i, source, top, bottom,
    left, right)`` (half-open), for :func:`paste_boxes_`."""
    perm = torch.randperm(bsz, generator=gen)
    u = torch.rand(bsz, 4, generator=gen)
    mask = torch.zeros(bsz, h, w, dtype=torch.bool)
    boxes = []
    for i in range(bsz):
        if u[i, 0] >= prob or bsz < 2:
            continue
        frac = area[0] + float(u[i, 1]) * (area[1] - area[0])
        bh, bw = max(1, int(round(h * frac**0.5))), max(1, int(round(w * frac**0.5)))
        top, left = int(float(u[i, 2]) * (h - bh + 1)), int(float(u[i, 3]) * (w - bw + 1))
        mask[i, top : top + bh, left : left + bw] = True
        boxes.append((i, int(perm[i]), top, top + bh, left, left + bw))
    return perm.to(device), mask.to(device), boxes


def _strided_range(lo: int, hi: int, stride: int, n: int) -> tuple[int, int]:
    """The pixels j of a stride-``stride`` map (centres ``stride * j + stride // 2``) inside ``[lo, hi)``."""
    c = stride // 2
    j0 = max(0, -((c - lo) // stride))  # ceil((lo - c) / stride)
    j1 = min(n, (hi - 1 - c) // stride + 1)
    return j0, max(j0, j1)


def paste_boxes_(
    t: torch.Tensor, boxes: list[tuple[int, int, int, int, int, int]], full_hw: tuple[int, int]
) -> torch.Tensor:
    """In place, the values of ``apply_cutmix(t, perm, mask)`` for the boxes of :func:`cutmix_box_list`
    drawn at ``full_hw``: only the boxes' pixels are read and written (a ``[B, D, H, W]`` teacher key
    map at full resolution is hundreds of MB; the out-of-place form reads it twice and writes it twice).
    A ``t`` at a coarser resolution takes the pixels whose centres lie in the box, as :func:`apply_cutmix`.
    Returns ``t``."""
    h, w = t.shape[-2:]
    sy, sx = full_hw[0] // h, full_hw[1] // w
    if sy * h != full_hw[0] or sx * w != full_hw[1]:
        raise ValueError(f"paste_boxes_: tensor {tuple(t.shape)} is not a whole-stride view of {tuple(full_hw)}")
    regions = []
    for i, src, top, bottom, left, right in boxes:
        (r0, r1), (c0, c1) = _strided_range(top, bottom, sy, h), _strided_range(left, right, sx, w)
        if r1 > r0 and c1 > c0 and src != i:
            regions.append((i, r0, r1, c0, c1, t[src, ..., r0:r1, c0:c1].clone()))  # every source read first
    for i, r0, r1, c0, c1, patch in regions:
        t[i, ..., r0:r1, c0:c1] = patch
    return t


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
