"""Class-wise adaptive confidence thresholds for pseudo-labels (``mona.class_thresholds: adaptive``).

One threshold for every class (0.97) lets the frequent classes through and almost never a tail class:
the teacher is rarely that sure of a class it has seen in a few labeled pixels. FlexMatch (Zhang et al.,
NeurIPS 2021) scales the threshold of each class by its *learning status*; here the status is measured
per pixel and normalised by how often the teacher predicts the class, so that class frequency (which
background dominates) does not enter:

    r_c   = EMA(#pixels predicted c with confidence >= tau) / EMA(#pixels predicted c)
    beta_c = r_c / max_k r_k                      (1 for the best-learned class)
    t_c   = max(floor, tau * beta_c / (2 - beta_c))   (FlexMatch's convex mapping M(x) = x / (2 - x))

Counts, not per-step ratios, are averaged (a step with a handful of tail-class pixels moves the ratio
little); until a class has been predicted at all its status is the best one (threshold ``tau``). The
counts are summed over the ranks under torchrun, so every rank uses the same thresholds.
"""

from __future__ import annotations

import torch

from .class_ema import ClassSumsEMA


class AdaptiveClassThresholds(ClassSumsEMA):
    """EMA learning status per class -> per-class thresholds. State: ``confident``, ``predicted`` ``[C]``."""

    names = ("confident", "predicted")
    what = "class thresholds"

    def __init__(self, num_classes: int, momentum: float = 0.95, floor: float = 0.5):
        super().__init__(num_classes, momentum)
        self.floor = floor

    @torch.no_grad()
    def update(self, pseudo: torch.Tensor, conf: torch.Tensor, tau: float) -> None:
        """One step of the teacher's pseudo-labels ``pseudo`` int ``[B, H, W]``, confidences ``conf``."""
        c = self.num_classes
        # on the pseudo-labels' device, masked rather than indexed: no host sync on the step's path
        flat = pseudo.reshape(-1).long()
        pred = torch.bincount(flat, minlength=c)[:c].double()
        sure = torch.bincount(flat, weights=(conf.reshape(-1) >= tau).double(), minlength=c)[:c]
        self.accumulate(confident=sure, predicted=pred)

    def status(self) -> torch.Tensor:
        """``beta [C]`` in [0, 1]: each class's confident fraction over the best class's."""
        seen = self.predicted > 0
        r = torch.where(seen, self.confident / self.predicted.clamp_min(1e-12), torch.zeros_like(self.predicted))
        best = r.max()
        beta = torch.where(seen, r / best.clamp_min(1e-12), torch.ones_like(r))
        return torch.where(best > 0, beta, torch.ones_like(r))  # nothing confident yet: the fixed thresholds

    def thresholds(self, tau: float) -> torch.Tensor:
        """``t [C]`` (float32): ``max(floor, tau * M(beta_c))``, never above ``tau``."""
        beta = self.status()
        t = tau * beta / (2 - beta)
        return t.clamp(min=min(self.floor, tau), max=tau).float()
