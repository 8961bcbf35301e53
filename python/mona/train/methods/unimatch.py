"""``method: unimatch`` -- UniMatch (Yang et al., "Revisiting Weak-to-Strong Consistency in
Semi-Supervised Semantic Segmentation", CVPR 2023), as its medical (ACDC) version trains, on the shared
loop and views.

Per step (B = labeled half bl + unlabeled half bu); no EMA teacher, the student labels its own data:

1. one weak geometric transform per image (:meth:`Method.weak_views`): ``x_w``;
2. one pass of the student over ``x_w`` (both halves) with the feature-perturbation stream
   (``MonaNet(..., feature_perturbation=fp_dropout)``: the decoder also runs on the encoder's maps
   under ``Dropout2d(0.5)``, in the same batch): logits of the labeled half (L_sup), of the unlabeled
   weak view (the pseudo-labels: argmax and confidence of the detached softmax) and of its perturbed
   stream (L_fp);
3. two strong views of the unlabeled half, each the weak view with its own random contrast /
   brightness and its own CutMix inside the unlabeled half, the pseudo-labels and confidences mixed
   with the same boxes; one more student pass over both: L_s1, L_s2;
4. each unlabeled term is the soft Dice (``soft_dice_loss``'s formula) against the pseudo-labels on the
   pixels with confidence >= ``threshold`` (0.95), the others masked out of both the prediction and the
   one-hot target (the public code's ``DiceLoss(..., ignore=...)``);
   ``L = (L_sup + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2`` (``unimatch.*_weight``).

Where we differ from the public code: its strong view adds colour jitter with saturation / hue (no
meaning for one MR channel) and a Gaussian blur (p 0.5); ours is MONA's and mean teacher's student
augmentation (contrast / brightness, CutMix), so that every method sees the same views. The paper has no
ramp-up and no warm-up, nor do we unless ``unimatch.rampup: true``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...augment import apply_cutmix, cutmix_boxes, random_contrast_brightness
from ..losses import supervised_loss
from .base import Batch, Method


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice of ``softmax(logits) [B, C, H, W]`` against int ``target [B, H, W]`` on the pixels where
    ``keep [B, H, W]`` (bool) holds: mean over classes of ``1 - (2 sum(p g m) + eps) / (sum(p^2 m) +
    sum(g m) + eps)``; ``keep`` all true is :func:`~mona.train.losses.soft_dice_loss`."""
    c = logits.shape[1]
    m = keep.unsqueeze(1).float()
    p = torch.softmax(logits.float(), dim=1) * m
    g = F.one_hot(target.long(), c).permute(0, 3, 1, 2).float() * m
    inter = (p * g).sum(dim=(0, 2, 3))
    denom = (p * p).sum(dim=(0, 2, 3)) + g.sum(dim=(0, 2, 3))
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


class UniMatch(Method):
    name = "unimatch"
    pseudo_labels = True
    uses_teacher = False

    def terms(self) -> tuple[str, ...]:
        return ("sup", "ce", "dice_loss", "s1", "s2", "fp")

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, um, a = self.cfg, self.cfg.unimatch, self.cfg.augment
        bl = batch.x_l.shape[0]
        x_weak, y_l = self.weak_views(batch)
        b, _, h, w = x_weak.shape
        views, mixes = [], []
        for _ in range(2):  # two strong views, each with its own intensity draw and CutMix boxes
            x_s = random_contrast_brightness(x_weak[bl:], self.aug_gen, contrast=a.contrast, brightness=a.brightness)
            perm, box = cutmix_boxes(
                b - bl, h, w, self.aug_gen, prob=a.cutmix_prob, area=a.cutmix_area, device=x_weak.device
            )
            views.append(apply_cutmix(x_s, perm, box))
            mixes.append((perm, box))

        def student_pass(model, x_w, x_s):
            """Both student passes as one (DDP) forward: the weak view with its perturbed stream, then
            the two strong views."""
            with self.autocast():
                weak = model(x_w, with_heads=False, feature_perturbation=um.fp_dropout)
                strong = model(x_s, with_heads=False).logits
            return weak.logits.float(), weak.unet.logits_fp.float(), strong.float()

        logits_w, logits_fp, logits_s = self.forward_student(student_pass, x_weak, torch.cat(views))
        with torch.no_grad():
            conf, pseudo = torch.softmax(logits_w[bl:].detach(), dim=1).max(dim=1)  # [bu, H, W]
        if self.keep_terms and cfg.log_pseudo_quality:
            self.log_pseudo_quality(pseudo, conf, um.threshold)
        ls, parts = supervised_loss(logits_w[:bl], y_l, cfg.dice_weight, cfg.ce_weight)
        parts = {"sup": float(ls.detach()), **parts}
        self.record("sup", 0.5 * ls)
        loss = 0.5 * ls
        factor = (self.ramp() if self.pseudo_ready() else 0.0) if um.rampup else 1.0
        keep = conf >= um.threshold
        terms = {"fp": (um.fp_weight, masked_dice_loss(logits_fp[bl:], pseudo, keep))}
        for i, (perm, box) in enumerate(mixes):
            target, mask = apply_cutmix(pseudo, perm, box), apply_cutmix(keep, perm, box)
            terms[f"s{i + 1}"] = (
                getattr(um, f"s{i + 1}_weight"),
                masked_dice_loss(logits_s[i * (b - bl) : (i + 1) * (b - bl)], target, mask),
            )
        for name, (weight, term) in terms.items():
            parts[name] = float(term.detach())
            if weight > 0 and factor > 0:
                loss = loss + 0.5 * weight * factor * term
                self.record(name, 0.5 * weight * factor * term)
        return loss, parts
