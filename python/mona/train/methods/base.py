"""What every training method shares: the student, its optimiser, the EMA teacher, init_from.

A method is built once per run from a :class:`RunContext`, and then the generic loop
(:mod:`mona.train.loop`) calls, per iteration::

    loss, parts = method.step(batch)        # forward + losses (the loop does backward / optimiser step)
    method.after_step()                     # EMA teacher update, bank / queue pushes

``method.stateful()`` names every object whose state a checkpoint must hold; the loop saves and
restores exactly that dictionary (plus the global RNG states), so resume is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...data.dataset import SliceCache
from ...data.labeled import LabeledSplit
from ...errors import DataError, MissingFileError
from ...models import MonaNet, build_model
from ..checkpoint import load_checkpoint, student_state
from ..config import TrainConfig
from ..ema import ema_update, make_teacher
from ..losses import loss_impl

log = logging.getLogger("mona.train")


@dataclass
class Batch:
    """One training batch on the device: the labeled half ``x_l [bl, 1, H, W]`` with labels
    ``y_l [bl, H, W]`` and the unlabeled half ``x_u [bu, 1, H, W]`` (``bu`` = 0 for supervised)."""

    x_l: torch.Tensor
    y_l: torch.Tensor
    x_u: torch.Tensor


@dataclass
class RunContext:
    """What a method may use: the (validated) config, device, data, and the model metadata."""

    cfg: TrainConfig
    device: torch.device
    cache: SliceCache
    split: LabeledSplit
    meta: dict
    resuming: bool = False


def load_init_weights(student: MonaNet, path: str | Path, meta: dict) -> list[str]:
    """Initialise ``student`` from the checkpoint at ``path`` (a stage-1 ``last.pt``/``best.pt``, or an
    exported ``model.pt``): the UNet must match exactly; heads present in both with the same shapes
    are loaded, the others keep their fresh initialisation. Returns the names of the fresh heads."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"init_from: checkpoint {p} does not exist")
    ck = load_checkpoint(p)
    theirs = ck["meta"]
    for key, norm in (("num_classes", int), ("channels", lambda c: [int(x) for x in c])):
        if norm(theirs[key]) != norm(meta[key]):
            raise DataError(f"init_from {p}: incompatible checkpoint: {key} {theirs[key]} != this run's {meta[key]}")
    state = student_state(ck)
    own = student.state_dict()
    unet_missing = [k for k in own if k.startswith("unet.") and k not in state]
    if unet_missing:
        raise DataError(f"init_from {p}: incompatible checkpoint: UNet weights missing ({unet_missing[:3]} ...)")
    take, fresh = {}, set()
    for k, v in own.items():
        if k in state and state[k].shape == v.shape:
            take[k] = state[k]
        elif k.startswith("unet."):
            raise DataError(f"init_from {p}: incompatible checkpoint: {k} has shape {tuple(state[k].shape)}, "
                             f"this model {tuple(v.shape)}")
        else:
            fresh.add(k.split(".")[1])
    student.load_state_dict({**own, **take})
    log.info("initialised from %s%s", p, f" (fresh heads: {', '.join(sorted(fresh))})" if fresh else "")
    return sorted(fresh)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``step``: lr * gamma^(it // step_size) (the paper: /10 every 2500); ``poly``: (1 - it/total)^power."""
    o = cfg.optim
    if o.schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: o.gamma ** (it // o.step_size))
    total = cfg.iterations
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1 - it / total) ** o.poly_power)


class Method:
    """Base class: builds the student (with :attr:`heads`), SGD + schedule + AMP scaler, the augmentation
    generator, and (``uses_teacher``) the EMA teacher. Subclasses implement :meth:`step`."""

    name = "base"
    uses_teacher = False

    def heads(self, cfg: TrainConfig) -> tuple[str, ...]:
        return ()

    def __init__(self, ctx: RunContext):
        cfg, dev = ctx.cfg, ctx.device
        self.ctx, self.cfg, self.device = ctx, cfg, dev
        self.num_classes = ctx.cache.num_classes
        self.student = build_model(ctx.meta, self.heads(cfg)).to(dev)
        if cfg.init_from and not ctx.resuming:
            load_init_weights(self.student, cfg.init_from, ctx.meta)
        self.teacher = make_teacher(self.student) if self.uses_teacher else None
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.amp = cfg.amp and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.losses = loss_impl(cfg.impl)

    def stateful(self) -> dict[str, Any]:
        """Every object with state, by name (saved and restored from this one dictionary)."""
        objs: dict[str, Any] = {"student": self.student, "optimizer": self.optimizer, "scheduler": self.scheduler,
                                "scaler": self.scaler, "generator.augment": self.aug_gen}
        if self.teacher is not None:
            objs["teacher"] = self.teacher
        return objs

    def terms(self) -> tuple[str, ...]:
        """The names of the loss terms ``step`` may report (the columns of the training log)."""
        return ("ce", "dice_loss")

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass and losses of one iteration: (total loss, {term: value}). No backward."""
        raise NotImplementedError

    def after_step(self) -> None:
        """After the optimiser step: EMA teacher update (subclasses add bank / queue pushes)."""
        if self.teacher is not None:
            ema_update(self.teacher, self.student, self.cfg.ema_decay)

    def discard_step(self) -> None:
        """The loop skips this step (a non-finite loss or gradient): forget what ``step`` prepared for
        :meth:`after_step` (bank / queue pushes); nothing of this step may reach the run's state."""

    def weak_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both halves under one weak geometric transform per image (rotation, crop, flip): the teacher's
        view. Returns (images ``[bl + bu, 1, H, W]``, labels of the labeled half ``[bl, H, W]``)."""
        from ...augment import random_transform

        a, bl = self.cfg.augment, batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        b, _, h, w = x.shape
        t = random_transform(b, h, w, self.aug_gen, rotate_deg=a.rotate_deg, flip=a.flip, scale=a.crop_scale,
                             device=x.device)
        return t.apply_image(x), t[:bl].apply_label(batch.y_l)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)
