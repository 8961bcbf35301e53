"""``method: bcp_pretrain`` and ``method: bcp`` -- BCP (Bai et al., "Bidirectional Copy-Paste for
Semi-Supervised Medical Image Segmentation", CVPR 2023), as its ACDC code trains, on the shared loop.

Both stages use one box mask per step, ``M [H, W]``: 1 everywhere except one zero box of
``round(patch_fraction * H) x round(patch_fraction * W)`` (2/3) at a random position
(:func:`copy_paste_mask`). The loss of a mixed image whose outside-the-box part comes from image
``i`` (target ``t_i``) and whose box comes from image ``p`` (target ``t_p``) is :func:`mix_loss`::

    w_i (dice_weight * Dice_M(t_i) + ce_weight * CE_M(t_i)) + w_p (dice_weight * Dice_1-M(t_p) + ce_weight * CE_1-M(t_p))

with ``Dice_M`` the masked soft Dice over every class, background included
(:func:`~mona.train.methods.unimatch.masked_dice_loss`, the public code's masked ``DiceLoss``) and
``CE_M = sum(CE * M) / sum(M)``; dice_weight = ce_weight = 0.5 is the public code's ``(dice + ce) / 2``.

* Stage 1, ``bcp_pretrain`` (labeled slices only; the loop's unlabeled half is drawn and not used):
  the labeled half's weak views split in two halves ``a``, ``b``; the student sees ``a * M + b * (1 - M)``
  and learns ``lab_a`` outside and ``lab_b`` inside the box, both at weight 1.
* Stage 2, ``bcp`` (EMA teacher, initialised with the student from stage 1): labeled halves ``la, lb``,
  unlabeled halves ``ua, ub`` (``data.labeled_bs`` = unlabeled slices per batch, even); the teacher's
  argmax on the weak views of ``ua, ub`` are the pseudo-labels ``pa, pb`` (optionally reduced to each
  class's largest connected component, ``bcp.largest_component``); the student sees
  ``x_unl = ua * M + la * (1 - M)`` and ``x_l = lb * M + ub * (1 - M)`` (two passes, as the public code)::

      L = mix_loss(x_unl; pa at u_weight, lab_a at 1) + mix_loss(x_l; lab_b at 1, pb at u_weight)

  logged as ``sup`` (the two labeled parts) and ``unl`` (the two pseudo-labelled parts, unweighted):
  ``loss = sup + u_weight * unl``.

``method: bcp`` with ``pretrain_iterations: N > 0`` runs stage 1 first (``out_dir/pretrain_bcp``), as
``method: mona`` runs GLCon (:mod:`mona.train.pipeline`).

Where we differ from the public code: its ``generate_mask`` draws the box corner in ``[0, H - patch)``
(``np.random.randint``); we allow ``[0, H - patch]``; the largest-component filter is off by default
here (it assumes one region per class and slice: true of ACDC's RV, Myo and LV, false of the phantoms'
one-to-three PM blobs or of lesions) and on in the packaged ``acdc_bcp``; the schedule is the shared
loop's (``optim.*``) and the EMA decay has the shared warm-up (``ema_warmup``). The paper has neither a
ramp-up nor a pseudo-label warm-up, nor do we unless ``bcp.rampup: true``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...augment import weak
from ...errors import UsageError
from ..profile import region
from .base import Batch, Method
from .unimatch import masked_dice_loss


def copy_paste_mask(h: int, w: int, fraction: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``M [H, W]`` float: 1 except one 0 box of ``round(fraction * h) x round(fraction * w)`` pixels whose
    top-left corner is uniform over the positions that keep the box inside the image."""
    ph, pw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top = int(torch.randint(0, h - ph + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - pw + 1, (1,), generator=gen))
    m = torch.ones(h, w, device=device)
    m[top : top + ph, left : left + pw] = 0
    return m


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(CE(logits, target) * mask) / sum(mask)`` (``logits [B, C, H, W]``, ``target [B, H, W]``,
    ``mask [H, W]`` or ``[B, H, W]``); 0 where the mask is empty."""
    ce = F.cross_entropy(logits.float(), target.long(), reduction="none")
    m = mask.expand_as(ce)
    return (ce * m).sum() / m.sum().clamp_min(1e-16)


def mix_loss(
    logits: torch.Tensor,
    image_target: torch.Tensor,
    patch_target: torch.Tensor,
    mask: torch.Tensor,
    dice_weight: float,
    ce_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of a copy-pasted image's loss, unweighted: (outside the box against ``image_target``,
    inside it against ``patch_target``), each ``dice_weight * Dice + ce_weight * CE`` on its pixels
    (``mask [H, W]``: 1 outside the box)."""
    keep = mask.expand(logits.shape[0], *mask.shape)
    parts = []
    for target, m in ((image_target, keep), (patch_target, 1 - keep)):
        parts.append(dice_weight * masked_dice_loss(logits, target, m > 0.5) + ce_weight * masked_ce(logits, target, m))
    return parts[0], parts[1]


def largest_component(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image of ``labels [B, H, W]`` and foreground class: only its largest 8-connected component
    keeps the class, the class's other pixels become background (the public code's
    ``get_ACDC_2DLargestCC``). Runs on the CPU (scipy); returns a tensor on ``labels``' device."""
    from scipy import ndimage

    arr = labels.detach().cpu().numpy()
    out = np.zeros_like(arr)
    eight = np.ones((3, 3), dtype=bool)
    for i in range(arr.shape[0]):
        for c in range(1, num_classes):
            comp, n = ndimage.label(arr[i] == c, structure=eight)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            out[i][comp == int(np.argmax(sizes)) + 1] = c
    return torch.from_numpy(out).to(labels.device)


def _halves(x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    if n < 2 or n % 2:
        raise UsageError(
            f"config: bcp copy-pastes between two halves of the {what}: it needs an even number >= 2, got {n}"
        )
    return x[: n // 2], x[n // 2 :]


class BCPPretrain(Method):
    """Stage 1: copy-paste between the two halves of the labeled batch, both parts supervised."""

    name = "bcp_pretrain"

    def terms(self) -> tuple[str, ...]:
        return ("sup",)

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        x, y = weak(batch.x_l, batch.y_l, self.aug_gen, cfg.augment)
        (xa, xb), (ya, yb) = _halves(x, "labeled half (data.labeled_bs)"), _halves(y, "labeled half")
        m = copy_paste_mask(x.shape[2], x.shape[3], cfg.bcp.patch_fraction, self.aug_gen, x.device)
        x_mix = xa * m + xb * (1 - m)
        with self.autocast():
            logits = self.forward_student(lambda model, x: model(x, with_heads=False).logits, x_mix).float()
        outside, inside = mix_loss(logits, ya, yb, m, cfg.dice_weight, cfg.ce_weight)
        loss = outside + inside
        self.record("sup", loss)
        return loss, {"sup": float(loss.detach())}


class BCP(Method):
    """Stage 2: bidirectional copy-paste between labeled and unlabeled slices, pseudo-labels of the EMA teacher."""

    name = "bcp"
    uses_teacher = True
    pseudo_labels = True

    def terms(self) -> tuple[str, ...]:
        return ("sup", "unl")

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, bc = self.cfg, self.cfg.bcp
        bl = batch.x_l.shape[0]  # = the unlabeled half's size (TrainConfig.validate)
        x_weak, y_l = self.weak_views(batch)
        (la, lb), (ya, yb) = _halves(x_weak[:bl], "labeled half (data.labeled_bs)"), _halves(y_l, "labeled half")
        ua, ub = _halves(x_weak[bl:], "unlabeled half")
        with region("teacher forward"), torch.no_grad(), self.autocast():
            t_logits = self.teacher(x_weak[bl:], with_heads=False).logits
        conf, pseudo = torch.softmax(t_logits.float(), dim=1).max(dim=1)  # [bu, H, W]
        if bc.largest_component:
            pseudo = largest_component(pseudo, self.num_classes)
        if self.keep_terms and cfg.log_pseudo_quality:
            self.log_pseudo_quality(pseudo, conf, 0.0)  # every pixel is pseudo-labelled
        pa, pb = _halves(pseudo, "unlabeled half")
        m = copy_paste_mask(x_weak.shape[2], x_weak.shape[3], bc.patch_fraction, self.aug_gen, x_weak.device)
        x_unl, x_l = ua * m + la * (1 - m), lb * m + ub * (1 - m)

        def student_pass(model, x_unl, x_l):
            """Both mixed batches (each its own BatchNorm batch, as the public code's two calls) as one DDP forward."""
            with self.autocast():
                return model(x_unl, with_heads=False).logits.float(), model(x_l, with_heads=False).logits.float()

        out_unl, out_l = self.forward_student(student_pass, x_unl, x_l)
        unl_a, sup_a = mix_loss(out_unl, pa, ya, m, cfg.dice_weight, cfg.ce_weight)
        sup_b, unl_b = mix_loss(out_l, yb, pb, m, cfg.dice_weight, cfg.ce_weight)
        sup, unl = sup_a + sup_b, unl_a + unl_b
        factor = (self.ramp() if self.pseudo_ready() else 0.0) if bc.rampup else 1.0
        self.record("sup", sup)
        loss = sup
        if bc.u_weight > 0 and factor > 0:
            loss = loss + bc.u_weight * factor * unl
            self.record("unl", bc.u_weight * factor * unl)
        return loss, {"sup": float(sup.detach()), "unl": float(unl.detach())}
