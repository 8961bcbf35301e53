"""``method: supervised`` -- the paper's UNet-L / UNet-F baseline: Dice + CE on labeled slices."""

from __future__ import annotations

import torch

from ...augment import weak
from ..losses import supervised_loss
from .base import Batch, Method


class Supervised(Method):
    """Weakly augmented labeled slices, ``dice_weight * Dice + ce_weight * CE``."""

    name = "supervised"

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x, y = weak(batch.x_l, batch.y_l, self.aug_gen, cfg.augment)
        with self.autocast():
            logits = self.forward_student(lambda model, x: model(x, with_heads=False).logits, x)
        return supervised_loss(logits, y, cfg.dice_weight, cfg.ce_weight)
