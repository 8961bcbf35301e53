"""Distribution alignment of the teacher's pixel probabilities (``mona.distribution_alignment``).

With one labeled patient the teacher hardly ever predicts a tail class on the other patients (on the
phantoms' PM: pseudo-label Dice 0.08, 13x more of its pixels confidently another class than itself),
so every confidence-masked pseudo-label term trains against it. A threshold cannot admit a class the
teacher does not predict (the class-wise thresholds, measured, made it worse). Distribution alignment
(ReMixMatch, Berthelot et al., ICLR 2020) corrects the teacher's class prior instead: each pixel's
probabilities are multiplied by the ratio of the labeled class frequencies to the teacher's mean
prediction on the unlabeled pixels, then renormalised,

    q(c | x) = p(c | x) * pi_lab(c) / pi_pred(c)  /  sum_k p(k | x) * pi_lab(k) / pi_pred(k)

    pi_lab  = EMA of the labeled pixels' class counts (the ground truth of the labeled half)
    pi_pred = EMA of the summed teacher probabilities of the unlabeled half (before alignment)

both normalised to sum 1. A class the teacher under-predicts is raised where it is plausible, and a
pixel it confidently gives to a neighbour with a small share of the tail class loses confidence (it
drops below the threshold instead of training against the tail class). The assumption is ReMixMatch's:
the unlabeled patients share the labeled ones' class proportions, which holds for one anatomy
(cardiac structures, liver) better than for classes of a varying number of lesions.

Measured on the phantoms (docs/training.md, "Distribution alignment, tried and rejected"): no effect,
and the premise does not hold there: the teacher's mean probability of the tail class is 1.5-4x its
labeled share (it is unsure of it everywhere rather than blind to it), so alignment lowers it. Off by default.

Sums (:class:`~.class_ema.ClassSumsEMA`), not per-step frequencies, are averaged, so the zero initial
state needs no bias correction: the ratio of two normalised vectors does not see the scale. No host
sync: the ratio stays on the device.
"""

from __future__ import annotations

import torch

from .class_ema import ClassSumsEMA


class DistributionAlignment(ClassSumsEMA):
    """EMA class priors -> aligned pixel probabilities. State: ``labeled``, ``predicted`` ``[C]`` (float64)."""

    names = ("labeled", "predicted")
    what = "distribution alignment"

    def __init__(self, num_classes: int, momentum: float = 0.99):
        super().__init__(num_classes, momentum)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, prob: torch.Tensor) -> None:
        """One step: ``labels`` int ``[B_l, H, W]`` (the labeled half's ground truth), ``prob`` ``[B_u, C, H, W]``
        (the teacher's probabilities on the unlabeled half, before alignment)."""
        c = self.num_classes
        if prob.dim() != 4 or prob.shape[1] != c:
            raise ValueError(f"distribution alignment: prob must be [B, {c}, H, W], got {tuple(prob.shape)}")
        lab = torch.bincount(labels.reshape(-1).long(), minlength=c)[:c].double()
        self.accumulate(labeled=lab, predicted=prob.double().sum(dim=(0, 2, 3)))

    def ratio(self) -> torch.Tensor:
        """``pi_lab / pi_pred`` ``[C]`` (float64); all ones before the first update."""
        lab, pred = self.labeled, self.predicted
        seen = (lab.sum() > 0) & (pred.sum() > 0)
        r = (lab / lab.sum().clamp_min(1e-300)) / (pred / pred.sum().clamp_min(1e-300)).clamp_min(1e-12)
        return torch.where(seen, r, torch.ones_like(r))

    def align(self, prob: torch.Tensor) -> torch.Tensor:
        """``prob [B, C, H, W]`` -> the aligned probabilities, same shape and dtype (rows sum to 1)."""
        q = prob * self.ratio().to(device=prob.device, dtype=prob.dtype).view(1, -1, 1, 1)
        return q / q.sum(dim=1, keepdim=True).clamp_min(torch.finfo(prob.dtype).tiny)
