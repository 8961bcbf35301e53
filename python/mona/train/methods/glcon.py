"""``method: glcon`` -- stage 1, GLCon pre-training (global + local relational distillation, ISD-style).

Per step, with B = labeled half + unlabeled half of the batch:

* one weak geometric transform T per image; the teacher sees ``T(x)`` (weak view), the student the
  same geometry with random contrast / brightness (strong view). Sharing the geometry is what makes
  "crops at the same location" of the two decoder outputs the same anatomy;
* ``glcon.mined_views`` unlabeled slices (weakly augmented) go through the teacher only: their global
  embeddings fill the global queue and one random crop of each fills the local queue (FIFO
  ``mona_ext.FeatureQueue`` of that size, so the queue holds this step's mined views);
* global: bottleneck -> projection head (+ predictor on the student) ->
  ``similarity_kl(student, teacher, queue, tau_student, tau_teacher)``;
* local: ``glcon.local_crops`` random square crops (``local_crop_size`` at 256 px, scaled to the input)
  at the same places of the student's and the teacher's finest decoder map, one vector per crop from
  the local head, the same KL against the local queue (one vector per crop, not the public code's
  49-wide reshape);
* ``+ L_sup`` (Dice + CE) on the labeled half.

The global and local terms are multiplied by the sigmoid ramp-up (:meth:`Method.ramp`).
"""

from __future__ import annotations

import torch

import mona_ext

from ...augment import random_contrast_brightness, weak
from ...data.sampler import EpochShuffler
from ..config import TrainConfig
from ..distributed import shard
from ..losses import supervised_loss
from ..profile import region
from .base import Batch, Method, RunContext


def crop_boxes(n: int, batch: int, size: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` int64 (image index, top, left) of ``crop x crop`` boxes inside ``size x size`` images."""
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    room = size - crop + 1
    return torch.stack([(u[:, 0] * batch).long(), (u[:, 1] * room).long(), (u[:, 2] * room).long()], 1)


def take_crops(fmap: torch.Tensor, boxes: torch.Tensor, crop: int) -> torch.Tensor:
    """``fmap [B, C, H, W]`` -> ``[n, C, crop, crop]`` at ``boxes`` (from :func:`crop_boxes`)."""
    return torch.stack([fmap[b, :, t : t + crop, l : l + crop] for b, t, l in boxes.tolist()])


class GLCon(Method):
    name = "glcon"
    uses_teacher = True
    find_unused_parameters = True  # a zero global / local weight leaves its head without a gradient

    def heads(self, cfg: TrainConfig) -> tuple[str, ...]:
        return ("global", "local")

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        g, dim = self.cfg.glcon, self.cfg.model.embed_dim
        if g.mined_views < 2 * self.dist.world_size:
            raise ValueError(
                f"config: glcon.mined_views ({g.mined_views}) is split over the "
                f"{self.dist.world_size} processes: it must be >= 2 per process "
                f"(>= {2 * self.dist.world_size})"
            )
        self.queue_global = mona_ext.FeatureQueue(g.mined_views, dim, device=self.device)
        self.queue_local = mona_ext.FeatureQueue(g.mined_views, dim, device=self.device)
        # mined views: the unlabeled slices (all train slices when every slice is labeled)
        self.pool = ctx.split.unlabeled or ctx.split.labeled
        self.method_gen = torch.Generator().manual_seed(self.cfg.seed + 3)
        self.mined = EpochShuffler(len(self.pool), self.method_gen)
        size = ctx.cache.size
        self.crop = max(1, min(size, round(g.local_crop_size * size / 256)))

    def terms(self) -> tuple[str, ...]:
        g = self.cfg.glcon
        return tuple(n for n, w in (("global", g.global_weight), ("local", g.local_weight)) if w > 0) + (
            ("sup", "ce", "dice_loss") if g.sup_weight > 0 else ()
        )

    def stateful(self):
        return {
            **super().stateful(),
            "queue.global": self.queue_global,
            "queue.local": self.queue_local,
            "sampler.mined": self.mined,
            "generator.method": self.method_gen,
        }

    def discard_step(self) -> None:
        """Nothing to undo: the mined views entered the queues during ``step`` (this step's losses compare
        against them) as embeddings of the teacher, which a skipped step leaves unchanged."""

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, g, a = self.cfg, self.cfg.glcon, self.cfg.augment
        bl = batch.x_l.shape[0]
        x_weak, y_l = self.weak_views(batch)
        b, _, h, w = x_weak.shape
        x_strong = random_contrast_brightness(x_weak, self.aug_gen, contrast=a.contrast, brightness=a.brightness)
        # the mined views and crop boxes of the global step (method_gen is seeded alike on every rank),
        # then this rank's part: under torchrun the gathered queue holds the step's mined_views views
        r, world = self.dist.rank, self.dist.world_size
        mined_all = self.mined.take(g.mined_views)
        boxes_all = crop_boxes(len(mined_all), len(mined_all), h, self.crop, self.method_gen)
        boxes_all[:, 0] = torch.arange(len(mined_all))
        boxes = crop_boxes(g.local_crops * world, b, h, self.crop, self.method_gen)
        boxes = boxes[r * g.local_crops : (r + 1) * g.local_crops]
        part = shard(range(len(mined_all)), r, world)
        mined = [self.pool[mined_all[i]] for i in part]
        mined_boxes = boxes_all[part[0] : part[-1] + 1]
        mined_boxes[:, 0] -= part[0]
        x_mined, _ = self.ctx.cache.load_batch(mined)
        x_mined, _ = weak(x_mined.to(self.device), None, self.aug_gen, a)

        with self.autocast():
            with region("teacher forwards"), torch.no_grad():
                tm = self.teacher(x_mined)
                self.queue_global.push(tm.global_proj.float())
                self.queue_local.push(
                    self.teacher.heads["local"](take_crops(tm.unet.decoder[-1], mined_boxes, self.crop)).float()
                )
                tv = self.teacher(x_weak)
                t_local = self.teacher.heads["local"](take_crops(tv.unet.decoder[-1], boxes, self.crop)).float()

            def student_pass(model, x, boxes):
                sv = model(x)
                if g.global_weight == 0:  # DDP: no output that no loss uses (it would wait for its gradient)
                    sv.global_proj = sv.global_pred = None
                local = (
                    model.heads["local"](take_crops(sv.unet.decoder[-1], boxes, self.crop))
                    if g.local_weight > 0
                    else None
                )
                return sv, local

            sv, s_local = self.forward_student(student_pass, x_strong, boxes)
            s_local = s_local.float() if s_local is not None else None
        L = self.losses
        loss = x_weak.new_zeros(())
        parts: dict[str, float] = {}
        ramp = self.ramp()
        if g.global_weight > 0:
            lg = L.similarity_kl(
                sv.global_pred.float(), tv.global_proj.float(), self.queue_global.filled(), g.tau_student, g.tau_teacher
            )
            loss = loss + g.global_weight * ramp * lg
            self.record("global", g.global_weight * ramp * lg)
            parts["global"] = float(lg.detach())
        if g.local_weight > 0:
            ll = L.similarity_kl(s_local, t_local, self.queue_local.filled(), g.tau_student, g.tau_teacher)
            loss = loss + g.local_weight * ramp * ll
            self.record("local", g.local_weight * ramp * ll)
            parts["local"] = float(ll.detach())
        if g.sup_weight > 0:
            ls, sup_parts = supervised_loss(sv.logits[:bl], y_l, cfg.dice_weight, cfg.ce_weight)
            loss = loss + g.sup_weight * ls
            self.record("sup", g.sup_weight * ls)
            parts.update(sup=float(ls.detach()), **sup_parts)
        return loss, parts
