"""Batched augmentation on tensors (CPU or GPU), labels kept consistent.

weak: flip + rotation + crop (one affine warp). strong: weak + smooth diffeomorphic deformation,
contrast, brightness, CutMix. Randomness comes from a CPU ``torch.Generator`` so runs are
reproducible and resumable. Warps use ``torch.nn.functional.grid_sample`` on grids we compose
ourselves (not kornia): the equivariance loss needs the sampling grid of an affine + a deformation
whose exact inverse is known (``exp(-v)``), applied identically to images, labels and logit maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .intensity import apply_cutmix, cutmix, cutmix_box_list, cutmix_boxes, paste_boxes_, random_contrast_brightness
from .spatial import SpatialTransform, integrate_velocity, random_affine, random_transform


@dataclass
class AugmentConfig:
    rotate_deg: float = 20.0
    flip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    deform: float = 0.03  # strong only: velocity std, normalised units
    deform_control: int = 5
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    cutmix_prob: float = 0.5
    cutmix_area: tuple[float, float] = (0.1, 0.4)


def weak(
    x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x ``[B, C, H, W]`` float, y ``[B, H, W]`` int or None -> the same shapes: flip, rotation, crop."""
    b, _, h, w = x.shape
    t = random_transform(b, h, w, gen, rotate_deg=cfg.rotate_deg, flip=cfg.flip, scale=cfg.crop_scale, device=x.device)
    return t.apply_image(x), (t.apply_label(y) if y is not None else None)


def strong(
    x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weak + deformation + contrast/brightness + CutMix. Same shapes as :func:`weak`."""
    b, _, h, w = x.shape
    t = random_transform(
        b,
        h,
        w,
        gen,
        rotate_deg=cfg.rotate_deg,
        flip=cfg.flip,
        scale=cfg.crop_scale,
        deform=cfg.deform,
        deform_control=cfg.deform_control,
        device=x.device,
    )
    x, y = t.apply_image(x), (t.apply_label(y) if y is not None else None)
    x = random_contrast_brightness(x, gen, contrast=cfg.contrast, brightness=cfg.brightness)
    x, y, _ = cutmix(x, y, gen, prob=cfg.cutmix_prob, area=cfg.cutmix_area)
    return x, y


__all__ = [
    "AugmentConfig",
    "weak",
    "strong",
    "SpatialTransform",
    "random_transform",
    "random_affine",
    "integrate_velocity",
    "cutmix",
    "cutmix_boxes",
    "apply_cutmix",
    "cutmix_box_list",
    "paste_boxes_",
    "random_contrast_brightness",
]
