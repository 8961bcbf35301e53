"""``method: supervised`` -- the paper's UNet-L / UNet-F baseline: Dice + CE on labeled slices;
``method: supervised_strong`` -- the same with the semi-supervised student's augmentation, the fair
baseline of every semi-supervised method here (same augmentation, no unlabeled data)."""

from __future__ import annotations

import torch

from ...augment import random_contrast_brightness, weak
from ..losses import supervised_loss
from ..profile import region
from .base import Batch, Method


class Supervised(Method):
    """Weakly augmented labeled slices (flip, rotation, crop), ``dice_weight * Dice + ce_weight * CE``."""

    name = "supervised"

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return weak(x, y, self.aug_gen, self.cfg.augment)

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        with region("augmentation"):
            x, y = self.augment(batch.x_l, batch.y_l)
        with self.autocast():
            logits = self.forward_student(lambda model, x: model(x, with_heads=False).logits, x)
        return supervised_loss(logits, y, cfg.dice_weight, cfg.ce_weight)


class SupervisedStrong(Supervised):
    """The labeled half of the MONA / mean-teacher student exactly: one weak geometric transform, then
    random contrast and brightness (``augment.contrast``, ``augment.brightness``). CutMix is not applied:
    the semi-supervised methods mix inside the unlabeled half only, so their labeled images never see it."""

    name = "supervised_strong"

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.cfg.augment
        x, y = weak(x, y, self.aug_gen, a)
        return random_contrast_brightness(x, self.aug_gen, contrast=a.contrast, brightness=a.brightness), y
