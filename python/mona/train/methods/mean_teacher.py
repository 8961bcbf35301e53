"""``method: mean_teacher`` -- the field's standard semi-supervised control (SSL4MIS
``train_mean_teacher_2D.py``), on the same views as MONA so that the two are comparable.

Per step (B = labeled half bl + unlabeled half bu):

1. one weak geometric transform per image (:meth:`Method.weak_views`); the EMA teacher sees this weak
   view of the unlabeled half (no gradient, dropout off);
2. the student sees the strong view: the weak view with random contrast / brightness, and CutMix inside
   the unlabeled half, applied consistently to the teacher's predictions (as in :mod:`.mona`);
3. ``L = L_sup(labeled half) + weight * ramp(t) * L_cons(unlabeled half)``, with ``L_cons``

   * ``mse`` (SSL4MIS): mean squared difference of the student's and the teacher's softmax maps;
   * ``ce``: cross-entropy against the teacher's argmax on the pixels with teacher confidence >=
     ``threshold``, averaged over all pixels (FixMatch-style masking);

   no consistency term during the pseudo-label warm-up (``pseudo_warmup_iterations``); the ramp-up is
   SSL4MIS's sigmoid ``exp(-5 (1 - t / T)^2)`` over ``rampup_iterations``;
4. the EMA update (decay warmed up, ``ema_warmup``) after the optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...augment import apply_cutmix, cutmix_boxes, random_contrast_brightness
from ..losses import supervised_loss
from ..profile import region
from .base import Batch, Method


def consistency_loss(
    student_logits: torch.Tensor, teacher_prob: torch.Tensor, kind: str, threshold: float
) -> torch.Tensor:
    """``student_logits [B, C, H, W]`` against ``teacher_prob [B, C, H, W]`` (no gradient): ``mse`` =
    mean over pixels and classes of ``(softmax(s) - p_t)^2``; ``ce`` = mean over pixels of
    ``CE(s, argmax p_t) * [max p_t >= threshold]``."""
    if kind == "mse":
        return F.mse_loss(torch.softmax(student_logits.float(), dim=1), teacher_prob)
    conf, target = teacher_prob.max(dim=1)
    ce = F.cross_entropy(student_logits.float(), target, reduction="none")
    return (ce * (conf >= threshold).float()).mean()


class MeanTeacher(Method):
    name = "mean_teacher"
    pseudo_labels = True
    uses_teacher = True

    def terms(self) -> tuple[str, ...]:
        return ("sup", "ce", "dice_loss", "cons")

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, mt, a = self.cfg, self.cfg.mean_teacher, self.cfg.augment
        bl = batch.x_l.shape[0]
        x_weak, y_l = self.weak_views(batch)
        b, _, h, w = x_weak.shape
        with region("teacher forward"), torch.no_grad(), self.autocast():
            t_logits = self.teacher(x_weak[bl:], with_heads=False).logits
        prob_t = torch.softmax(t_logits.float(), dim=1)
        if self.keep_terms and cfg.log_pseudo_quality:
            conf, pseudo = prob_t.max(dim=1)
            self.log_pseudo_quality(pseudo, conf, mt.threshold)
        x_s = random_contrast_brightness(x_weak, self.aug_gen, contrast=a.contrast, brightness=a.brightness)
        perm, box = cutmix_boxes(
            b - bl, h, w, self.aug_gen, prob=a.cutmix_prob, area=a.cutmix_area, device=x_weak.device
        )
        x_s = torch.cat([x_s[:bl], apply_cutmix(x_s[bl:], perm, box)])
        prob_t = apply_cutmix(prob_t, perm, box)
        with self.autocast():
            logits = self.forward_student(lambda model, x: model(x, with_heads=False).logits, x_s).float()
        ls, parts = supervised_loss(logits[:bl], y_l, cfg.dice_weight, cfg.ce_weight)
        parts = {"sup": float(ls.detach()), **parts}
        self.record("sup", ls)
        loss = ls
        weight = mt.weight * self.ramp() if self.pseudo_ready() else 0.0
        lc = consistency_loss(logits[bl:], prob_t, mt.consistency, mt.threshold)
        parts["cons"] = float(lc.detach())
        if weight > 0:
            loss = loss + weight * lc
            self.record("cons", weight * lc)
        return loss, parts
