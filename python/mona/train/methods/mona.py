"""``method: mona`` -- stage 2, anatomical contrastive reconstruction (ACR) fine-tuning.

``L = sup_weight L_sup + contrast_weight L_contrast + eqv_weight L_eqv + unsup_weight L_unsup + nn_weight L_nn``
(paper: 1, 0.01, 1, 1, 1); a weight of 0 skips the term, its head and its bank/queue entirely.

Per step (B = labeled half bl + unlabeled half bu):

1. One weak geometric transform T_w per image: ``x_w = T_w(x)``, labels ``T_w(y)``. The EMA teacher
   sees ``x_w``: pseudo-labels, confidences, representation keys and global embeddings.
2. Student input: ``x_w`` with random contrast / brightness, and CutMix inside the unlabeled half,
   applied consistently to the images, the pseudo-labels, the confidences and the teacher keys.
   (The paper's diffeomorphic deformation enters through L_eqv's transform, below.)
3. L_sup: Dice + CE on the labeled half.
   L_unsup: CE against the mixed pseudo-labels on the pixels with teacher confidence >= strong_threshold
   (0.97), averaged over all pixels (``unsup_mask: pixel``; ``image``: the public code's per-image
   weighting by the confident fraction).
   L_contrast: ``contrast_loss`` on the student's representation map (channels-last), labels = ground
   truth (labeled half) and pseudo-labels (unlabeled half; valid where confidence >= weak_threshold,
   0.7), ``prob`` = student probabilities for the hard/easy split, keys from the teacher's
   representation map, negatives from the batch and a ``ClassMemoryBank`` that receives a capped random
   subset of valid teacher keys per class after every step.
   L_eqv: a random T (affine + diffeomorphic deformation): ``pixel_kl(T(F(x)), F(T(x)), mask=valid(T),
   symmetric)`` on both halves (one extra student forward on ``T(x)``, whose BatchNorm layers leave
   their running statistics alone: warped, zero-padded images must not move what evaluation uses).
   L_nn: ``knn_loss(student global (predictor), teacher global, queue, k)``; the teacher global
   embeddings enter a FIFO ``FeatureQueue`` after each step (skipped until it holds k entries).

``mona.class_thresholds: adaptive`` replaces both thresholds by per-class ones (:mod:`..thresholds`),
each pixel judged by the threshold of its pseudo-label's class.

Stabilisers (:mod:`.base`): every term but L_sup is multiplied by the sigmoid ramp-up; L_unsup and the
pseudo-labelled half of L_contrast start after the pseudo-label warm-up (until then the contrast
term sees the labeled half only).
"""

from __future__ import annotations

import torch

import mona_ext

from ...augment import apply_cutmix, cutmix_box_list, paste_boxes_, random_contrast_brightness, random_transform
from ..alignment import DistributionAlignment
from ..config import TrainConfig
from ..distributed import rank_seed
from ..losses import confidence_weighted_ce, pixel_masked_ce, supervised_loss
from ..profile import region
from ..thresholds import AdaptiveClassThresholds
from .base import Batch, Method, RunContext, frozen_bn_statistics


def _subsample(t: torch.Tensor, stride: int) -> torch.Tensor:
    """A ``[..., H, W]`` map at the pixel centres of a stride-``stride`` grid (the representation map's)."""
    return t if stride == 1 else t[..., stride // 2 :: stride, stride // 2 :: stride]


def _subsample_thr(t: float | torch.Tensor, stride: int) -> float | torch.Tensor:
    """A threshold (a float, or a per-pixel map) at the representation map's pixels."""
    return _subsample(t, stride) if isinstance(t, torch.Tensor) else t


class Mona(Method):
    name = "mona"
    pseudo_labels = True
    uses_teacher = True
    find_unused_parameters = True  # the global head and predictor get no gradient before L_nn starts

    def heads(self, cfg: TrainConfig) -> tuple[str, ...]:
        m = cfg.mona
        return (("representation",) if m.contrast_weight > 0 else ()) + (("global",) if m.nn_weight > 0 else ())

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        m, dim, dev = self.cfg.mona, self.cfg.model.embed_dim, self.device
        self.bank = None
        if m.contrast_weight > 0 and m.negatives != "batch":
            # the bank in the key map's dtype (the fused loss reads features, keys and bank in one dtype)
            self.bank = mona_ext.ClassMemoryBank(
                self.num_classes, m.bank_size, dim, dtype=self.map_dtype, device=dev, cap_per_push=m.bank_push_per_class
            )
        self.queue = mona_ext.FeatureQueue(m.knn_queue, dim, device=dev) if m.nn_weight > 0 else None
        # the contrastive sampler draws on the features' device (Philox on CUDA)
        rank = self.dist.rank
        self.contrast_gen = torch.Generator(device=dev).manual_seed(rank_seed(self.cfg.seed, 4, rank))
        self.push_gen = torch.Generator(device=dev).manual_seed(rank_seed(self.cfg.seed, 5, rank))
        self.class_thresholds = (
            AdaptiveClassThresholds(self.num_classes, m.threshold_momentum, m.threshold_floor)
            if m.class_thresholds == "adaptive"
            else None
        )
        self.alignment = (
            DistributionAlignment(self.num_classes, m.alignment_momentum) if m.distribution_alignment else None
        )
        self._pending: dict[str, object] = {}
        # L_contrast reads the student's representation at the query pixels only (mona.query_map)
        self.query_rows_only = m.contrast_weight > 0 and (
            m.query_map == "queries" or (m.query_map == "auto" and self.cfg.impl == "ext")
        )  # pushes for after_step: "bank" (keys, labels, valid), "queue"

    def terms(self) -> tuple[str, ...]:
        m = self.cfg.mona
        out = ("sup", "ce", "dice_loss") if m.sup_weight > 0 else ()
        return out + tuple(
            n
            for n, w in (
                ("unsup", m.unsup_weight),
                ("contrast", m.contrast_weight),
                ("eqv", m.eqv_weight),
                ("nn", m.nn_weight),
            )
            if w > 0
        )

    def stateful(self):
        objs = {**super().stateful(), "generator.contrast": self.contrast_gen, "generator.push": self.push_gen}
        if self.bank is not None:
            objs["bank"] = self.bank
        if self.queue is not None:
            objs["queue.knn"] = self.queue
        if self.class_thresholds is not None:
            objs["class_thresholds"] = self.class_thresholds
        if self.alignment is not None:
            objs["distribution_alignment"] = self.alignment
        return objs

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, m, a = self.cfg, self.cfg.mona, self.cfg.augment
        bl = batch.x_l.shape[0]
        x_weak, y_l = self.weak_views(batch)
        b, _, h, w = x_weak.shape
        with region("teacher forward"), torch.no_grad(), self.autocast():
            tv = self.teacher(x_weak)
        prob_t = torch.softmax(tv.logits[bl:].float(), dim=1)
        da = self.alignment
        if da is not None:  # the teacher's class prior moved to the labeled one (mona.alignment)
            da.update(y_l, prob_t)
            prob_t = da.align(prob_t)
            if self.keep_terms:
                names, r = self.ctx.cache.class_names, da.ratio()
                self.diagnostics.update({f"da_ratio_{names[c]}": float(r[c]) for c in range(self.num_classes)})
        conf, pseudo = prob_t.max(dim=1)  # [bu, H, W]
        # the thresholds of each pixel's pseudo-label class: L_unsup's (strong) and the contrastive
        # validity (weak); one value for every class unless mona.class_thresholds is adaptive
        strong_thr, weak_thr = m.strong_threshold, m.weak_threshold
        ct = self.class_thresholds
        if ct is not None:
            ct.update(pseudo, conf, m.strong_threshold)
            t_s, t_w = ct.thresholds(m.strong_threshold), ct.thresholds(m.weak_threshold)
            strong_thr, weak_thr = t_s.to(conf.device)[pseudo], t_w.to(conf.device)[pseudo]
            if self.keep_terms:
                names = self.ctx.cache.class_names
                self.diagnostics.update({f"thr_{names[c]}": float(t_s[c]) for c in range(1, self.num_classes)})
        if self.keep_terms and cfg.log_pseudo_quality:
            self.log_pseudo_quality(pseudo, conf, strong_thr, weak_thr if m.contrast_weight > 0 else None)
        ramp, pseudo_ready = self.ramp(), self.pseudo_ready()
        with region("strong views (contrast, CutMix, T)"):
            x_s = random_contrast_brightness(x_weak, self.aug_gen, contrast=a.contrast, brightness=a.brightness)
            perm, box, boxes = cutmix_box_list(
                b - bl, h, w, self.aug_gen, prob=a.cutmix_prob, area=a.cutmix_area, device=x_weak.device
            )
            x_s = torch.cat([x_s[:bl], apply_cutmix(x_s[bl:], perm, box)])
            pseudo, conf = apply_cutmix(pseudo, perm, box), apply_cutmix(conf, perm, box)
            if ct is not None:  # the maps follow their pixels' pseudo-labels through CutMix
                strong_thr, weak_thr = apply_cutmix(strong_thr, perm, box), apply_cutmix(weak_thr, perm, box)
            t_eqv = None
            if m.eqv_weight > 0:  # drawn here so the RNG order does not depend on the other weights
                t_eqv = random_transform(
                    b,
                    h,
                    w,
                    self.aug_gen,
                    rotate_deg=a.rotate_deg,
                    flip=a.flip,
                    scale=a.crop_scale,
                    deform=a.deform,
                    deform_control=a.deform_control,
                    device=x_weak.device,
                )

        use_nn = self.queue is not None and int(self.queue.fill) >= m.knn_k
        L = self.losses
        parts: dict[str, float] = {}

        def main_terms(model, sv) -> tuple[torch.Tensor, torch.Tensor]:
            """L_sup, L_unsup, L_contrast of the main pass (fp32, outside autocast). Returns (sum, logits)."""
            logits = sv.logits.float()
            loss = logits.new_zeros(())
            if m.sup_weight > 0:
                with region("L_sup"):
                    ls, sup_parts = supervised_loss(logits[:bl], y_l, cfg.dice_weight, cfg.ce_weight)
                    loss = loss + m.sup_weight * ls
                    self.record("sup", m.sup_weight * ls)
                    parts.update(sup=float(ls.detach()), **sup_parts)
            if m.unsup_weight > 0 and pseudo_ready:
                with region("L_unsup"):
                    unsup = pixel_masked_ce if m.unsup_mask == "pixel" else confidence_weighted_ce
                    lu = unsup(logits[bl:], pseudo, conf, strong_thr)
                    loss = loss + m.unsup_weight * ramp * lu
                    self.record("unsup", m.unsup_weight * ramp * lu)
                    parts["unsup"] = float(lu.detach())
            if m.contrast_weight > 0:
                with region("L_contrast"):
                    stride = cfg.model.rep_stride
                    labels = torch.cat([_subsample(y_l, stride), _subsample(pseudo, stride)])
                    # the pseudo-labelled half takes part once the warm-up is over
                    valid = torch.cat(
                        [
                            torch.ones_like(_subsample(y_l, stride), dtype=torch.bool),
                            (_subsample(conf, stride) >= _subsample_thr(weak_thr, stride)) & pseudo_ready,
                        ]
                    )
                    prob = _subsample(torch.softmax(logits.detach(), dim=1), stride)
                    # the teacher's key map (no grad, channels-last from the head) is mixed in place: at full
                    # resolution a concatenated copy would cost another B x D x H x W floats
                    keys = tv.embedding.to(self.map_dtype).contiguous(memory_format=torch.channels_last)
                    paste_boxes_(keys[bl:], boxes, (h, w))
                    sampling = dict(
                        valid=valid,
                        prob=prob,
                        strong_threshold=m.strong_threshold,
                        temperature=m.temperature,
                        num_queries=m.num_queries,
                        num_negatives=m.num_negatives,
                        bank=self.bank,
                        negatives=m.negatives,
                        generator=self.contrast_gen,
                    )
                    if self.query_rows_only:
                        # the student's representation at the sampled query pixels only: its last 1x1
                        # conv on those rows of the hidden map (the full B x D x H x W map and its dense
                        # gradient never exist)
                        head = model.heads["representation"]

                        def query_rows(pixels):
                            with self.autocast():
                                return head.project_rows(sv.embedding_hidden, pixels).to(self.map_dtype)

                        lc = mona_ext.contrast_loss_at_queries(query_rows, keys, labels, self.num_classes, **sampling)
                    else:
                        # the student's map as the head made it (channels-last; under autocast in its dtype,
                        # which the fused op accumulates in fp32): no converted copy of B x D x H x W values
                        lc = L.contrast(
                            sv.embedding.to(self.map_dtype), labels, self.num_classes, key_features=keys, **sampling
                        )
                    loss = loss + m.contrast_weight * ramp * lc
                    self.record("contrast", m.contrast_weight * ramp * lc)
                    parts["contrast"] = float(lc.detach())
                    if self.bank is not None:
                        # [N, D] rows of the channels-last key map: a view, no copy
                        self._pending["bank"] = (
                            keys.permute(0, 2, 3, 1).reshape(-1, keys.shape[1]),
                            labels.reshape(-1),
                            valid.reshape(-1),
                        )
            return loss, logits

        def student_pass(model, x_s, x_t):
            """Every use of the student, as one (DDP) forward: the main pass, the terms that read it, then
            the L_eqv pass on T(x_s). In this order the backward (newest first) frees the L_eqv pass's
            activations before the contrastive term's B x D x H x W gradient map is allocated (the other
            order measured 118 MB more peak per slice at 256 x 256, 512-d: benchmarks/memory_model.py)."""
            with region("student forward"):
                with self.autocast():
                    sv = model(x_s, representation="hidden" if self.query_rows_only else "map")
            if not use_nn:  # DDP: an output no loss uses would wait for a gradient that never comes
                sv.global_proj = sv.global_pred = None
            loss, logits = main_terms(model, sv)
            logits_t = None
            if x_t is not None:
                with region("student forward on T(x)"):
                    with self.autocast(), frozen_bn_statistics(model):
                        logits_t = model(x_t, with_heads=False).logits
            return sv, loss, logits, logits_t

        sv, loss, logits, logits_t = self.forward_student(
            student_pass, x_s, t_eqv.apply_image(x_s) if t_eqv is not None else None
        )
        if t_eqv is not None:
            with region("L_eqv"):
                le = L.pixel_kl(t_eqv.apply_image(logits), logits_t.float(), t_eqv.valid_mask(), m.eqv_symmetric)
                loss = loss + m.eqv_weight * ramp * le
                self.record("eqv", m.eqv_weight * ramp * le)
                parts["eqv"] = float(le.detach())
        if self.queue is not None:
            teacher_global = tv.global_proj.float()
            if use_nn:
                with region("L_nn"):
                    ln = L.knn(sv.global_pred.float(), teacher_global, self.queue.filled(), m.knn_k)
                    loss = loss + m.nn_weight * ramp * ln
                    self.record("nn", m.nn_weight * ramp * ln)
                    parts["nn"] = float(ln.detach())
            self._pending["queue"] = teacher_global
        return loss, parts

    def discard_step(self) -> None:
        self._pending.clear()

    def after_step(self) -> None:
        """EMA update, then the pushes (after backward: the losses read the bank / queue in place)."""
        super().after_step()
        if "bank" in self._pending:
            keys, labels, valid = self._pending["bank"]
            self.bank.push(keys, labels, valid, generator=self.push_gen)
        if "queue" in self._pending:
            self.queue.push(self._pending["queue"])
        self._pending.clear()
