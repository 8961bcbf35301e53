"""Supervised segmentation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over classes of ``1 - (2 sum(p*g) + eps) / (sum(p^2) + sum(g) + eps)`` on softmax probabilities
    (SSL4MIS DiceLoss). logits ``[B, C, H, W]``, target int ``[B, H, W]``; returns a scalar."""
    c = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    g = F.one_hot(target.long(), c).permute(0, 3, 1, 2).float()
    inter = (p * g).sum(dim=(0, 2, 3))
    denom = (p * p).sum(dim=(0, 2, 3)) + g.sum(dim=(0, 2, 3))
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.5,
                    ce_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """``dice_weight * Dice + ce_weight * CE``. Returns (loss, {"dice": .., "ce": ..})."""
    ce = F.cross_entropy(logits.float(), target.long())
    dl = soft_dice_loss(logits, target)
    return dice_weight * dl + ce_weight * ce, {"ce": float(ce.detach()), "dice_loss": float(dl.detach())}
