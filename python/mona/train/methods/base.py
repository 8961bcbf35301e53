"""What every training method shares: the student, its optimiser, the EMA teacher, init_from.

A method is built once per run from a :class:`RunContext`, and then the generic loop
(:mod:`mona.train.loop`) calls, per iteration::

    loss, parts = method.step(batch)        # forward + losses (the loop does backward / optimiser step)
    method.after_step()                     # EMA teacher update, bank / queue pushes

``method.stateful()`` names every object whose state a checkpoint must hold; the loop saves and
restores exactly that dictionary (plus the global RNG states), so resume is exact.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ...data.dataset import SliceCache
from ...data.labeled import LabeledSplit
from ...errors import DataError, MissingFileError
from ...models import MonaNet, build_model
from .. import distributed
from ..checkpoint import load_checkpoint, student_state
from ..config import TrainConfig
from ..ema import ema_update, make_teacher
from ..losses import loss_impl
from ..profile import region

log = logging.getLogger("mona.train")


@dataclass
class Batch:
    """One training batch on the device: the labeled half ``x_l [bl, 1, H, W]`` with labels
    ``y_l [bl, H, W]`` and the unlabeled half ``x_u [bu, 1, H, W]`` (``bu`` = 0 for supervised).

    ``y_u_diagnostic [bu, H, W]``: the cache's labels of the unlabeled half, or None. Only the
    pseudo-label quality log reads it (``log_pseudo_quality``); no loss may ever use it."""

    x_l: torch.Tensor
    y_l: torch.Tensor
    x_u: torch.Tensor
    y_u_diagnostic: torch.Tensor | None = None


def sigmoid_rampup(t: int, length: int) -> float:
    """SSL4MIS's ramp-up: ``exp(-5 (1 - t / length)^2)`` for ``0 <= t < length``, 1 after (and for
    ``length`` 0). At t = 0 it is exp(-5) = 0.0067, at t = length / 2 exp(-1.25) = 0.29."""
    if length <= 0 or t >= length:
        return 1.0
    phase = 1.0 - max(t, 0) / length
    return float(math.exp(-5.0 * phase * phase))


def ema_decay_at(t: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the update after optimiser step ``t`` (0-based): ``min(1 - 1 / (t + 1), decay)``
    with ``warmup`` (SSL4MIS: the first updates copy the student, then the decay grows to ``decay``)."""
    return min(1.0 - 1.0 / (t + 1), decay) if warmup else decay


@contextlib.contextmanager
def frozen_bn_statistics(model: torch.nn.Module):
    """BatchNorm layers normalise with the batch's statistics but leave their running statistics (what
    evaluation uses) unchanged: an auxiliary pass on warped, zero-padded images (L_eqv) must not move
    them. (``momentum = 0``: running = running; torch still counts the batch in num_batches_tracked,
    which only the cumulative ``momentum=None`` mode reads.)"""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


@dataclass
class RunContext:
    """What a method may use: the (validated) config, device, data, and the model metadata."""

    cfg: TrainConfig
    device: torch.device
    cache: SliceCache
    split: LabeledSplit
    meta: dict
    resuming: bool = False
    dist: distributed.DistEnv = field(default_factory=distributed.DistEnv)


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
            raise DataError(
                f"init_from {p}: incompatible checkpoint: {k} has shape {tuple(state[k].shape)}, "
                f"this model {tuple(v.shape)}"
            )
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

    # DDP: a method whose loss may leave some student parameters without a gradient in a step
    # (a head whose term is skipped) must let DDP look for them
    find_unused_parameters = False
    pseudo_labels = False  # trains on pseudo-labels of the unlabeled half: logs their quality (pl_* columns)

    def __init__(self, ctx: RunContext):
        cfg, dev = ctx.cfg, ctx.device
        self.ctx, self.cfg, self.device = ctx, cfg, dev
        self.dist = ctx.dist
        self.num_classes = ctx.cache.num_classes
        self.amp_dtype = amp_dtype(cfg.amp, dev)
        self.amp = self.amp_dtype is not None
        self.student = build_model(ctx.meta, self.heads(cfg)).to(dev)
        if cfg.model.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        if cfg.init_from and not ctx.resuming:
            load_init_weights(self.student, cfg.init_from, ctx.meta)
        if self.dist.enabled and cfg.distributed.sync_batchnorm:
            self.student = distributed.convert_sync_batchnorm(self.student, dev)
        self.teacher = make_teacher(self.student) if self.uses_teacher else None
        self.ddp = None
        if self.dist.enabled:
            # rank 0's weights everywhere (they are equal already: every rank seeds the same way)
            self.ddp = distributed.wrap_ddp(self.student, dev, self.find_unused_parameters)
            if self.teacher is not None:
                distributed.broadcast_module(self.teacher)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, cfg)
        # fp16 needs loss scaling (its exponent range underflows small gradients); bf16 does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.aug_gen = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, 2, self.dist.rank))
        self.losses = loss_impl(cfg.impl)
        # the dtype the fused losses read the big maps in: the autocast dtype (they accumulate in
        # fp32, so the student's representation map reaches them without a converted copy); the
        # plain-PyTorch reference computes in the dtype it is given, so it gets fp32
        self.map_dtype = self.amp_dtype if (self.amp and cfg.impl == "ext") else torch.float32
        # per-term gradient norms (loop: set keep_terms before a logged step, read kept_terms after it)
        self.keep_terms = False
        self.kept_terms: dict[str, torch.Tensor] = {}
        # pseudo-label diagnostics of the last step (``log_pseudo_quality``), merged into the train log
        self.diagnostics: dict[str, float] = {}

    @property
    def iteration(self) -> int:
        """The 0-based iteration of the current step within this stage (the schedule counts every
        iteration, skipped ones too, and is checkpointed: resume continues the ramp-ups exactly)."""
        return int(self.scheduler.last_epoch)

    def ramp(self) -> float:
        """The factor of every unlabeled / relational term this step: :func:`sigmoid_rampup` over
        ``rampup_iterations``."""
        return sigmoid_rampup(self.iteration, self.cfg.rampup)

    def pseudo_ready(self) -> bool:
        """False during the pseudo-label warm-up (``pseudo_warmup_iterations``): no pseudo-label term."""
        return self.iteration >= self.cfg.pseudo_warmup

    def record(self, name: str, weighted: torch.Tensor) -> None:
        """Keep a weighted term's tensor for the per-term gradient-norm log (the loop asks for it by
        setting ``keep_terms`` on the steps it logs; otherwise nothing is kept)."""
        if self.keep_terms and weighted.requires_grad:
            self.kept_terms[name] = weighted

    def stateful(self) -> dict[str, Any]:
        """Every object with state, by name (saved and restored from this one dictionary)."""
        objs: dict[str, Any] = {
            "student": self.student,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "generator.augment": self.aug_gen,
        }
        if self.teacher is not None:
            objs["teacher"] = self.teacher
        return objs

    def terms(self) -> tuple[str, ...]:
        """The names of the loss terms ``step`` may report (the columns of the training log)."""
        return ("ce", "dice_loss")

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass and losses of one iteration: (total loss, {term: value}). No backward."""
        raise NotImplementedError

    def forward_student(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(student, *args)``: every use of the student in a step, as one forward (of the DDP
        wrapper under torchrun, whose gradient averaging hooks need exactly that)."""
        with region("student pass"):
            if self.ddp is None:
                return fn(self.student, *args)
            return self.ddp(fn, *args)

    def after_step(self) -> None:
        """After the optimiser step: EMA teacher update (subclasses add bank / queue pushes)."""
        if self.dist.enabled and not self.cfg.distributed.sync_batchnorm:
            # per-rank BatchNorm statistics: averaged, so that student and teacher stay identical
            distributed.average_buffers(self.student)
        if self.teacher is not None:
            ema_update(
                self.teacher, self.student, ema_decay_at(self.iteration, self.cfg.ema_decay, self.cfg.ema_warmup)
            )
            if self.dist.enabled and not self.cfg.distributed.sync_batchnorm:
                distributed.average_buffers(self.teacher)

    def discard_step(self) -> None:
        """The loop skips this step (a non-finite loss or gradient): forget what ``step`` prepared for
        :meth:`after_step` (bank / queue pushes); nothing of this step may reach the run's state."""

    def weak_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both halves under one weak geometric transform per image (rotation, crop, flip): the teacher's
        view. Returns (images ``[bl + bu, 1, H, W]``, labels of the labeled half ``[bl, H, W]``).
        The unlabeled half's diagnostic labels (if any) get the same transform: ``self.y_u_diagnostic``."""
        with region("weak views"):
            return self._weak_views(batch)

    def _weak_views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        from ...augment import random_transform

        a, bl = self.cfg.augment, batch.x_l.shape[0]
        x = torch.cat([batch.x_l, batch.x_u])
        b, _, h, w = x.shape
        t = random_transform(
            b, h, w, self.aug_gen, rotate_deg=a.rotate_deg, flip=a.flip, scale=a.crop_scale, device=x.device
        )
        self.y_u_diagnostic = None
        if batch.y_u_diagnostic is not None and self.keep_terms and self.cfg.log_pseudo_quality:
            self.y_u_diagnostic = t[bl:].apply_label(batch.y_u_diagnostic)
        return t.apply_image(x), t[:bl].apply_label(batch.y_l)

    @torch.no_grad()
    def log_pseudo_quality(
        self,
        pseudo: torch.Tensor,
        conf: torch.Tensor,
        threshold: float | torch.Tensor,
        weak_threshold: float | torch.Tensor | None = None,
    ) -> None:
        """Diagnostics of the teacher's pseudo-labels ``pseudo [bu, H, W]`` (confidence ``conf``) against
        the cache's labels of the unlabeled half (:meth:`weak_views`): per foreground class Dice
        (``pl_dice_<class>``), the fraction of pixels at confidence >= ``threshold`` (``pl_confident``),
        their accuracy (``pl_precision``) and that of the confident foreground pixels (``pl_fg_precision``);
        per foreground class, of its true pixels the fraction confidently labelled as it (``pl_recall_<class>``:
        what a confidence-masked pseudo-label loss reinforces) and confidently labelled as another class
        (``pl_against_<class>``: where such a loss trains against it; the rest is below the threshold).
        ``threshold``: a float, or a per-pixel map (class-wise thresholds). ``weak_threshold`` (MONA: the
        contrastive term's validity threshold) adds the same two fractions at it: ``pl_wrecall_<class>``,
        ``pl_wagainst_<class>`` (where the contrastive term pulls the class's pixels to another class)."""
        truth = getattr(self, "y_u_diagnostic", None)
        if truth is None or truth.shape != pseudo.shape:
            return
        names = self.ctx.cache.class_names
        out: dict[str, float] = {}
        for c in range(1, self.num_classes):
            p, g = pseudo == c, truth == c
            denom = int(p.sum() + g.sum())
            out[f"pl_dice_{names[c]}"] = float(2 * (p & g).sum() / denom) if denom else float("nan")
        mask = conf >= threshold
        correct = pseudo == truth
        for prefix, thr in (("", threshold), ("w", weak_threshold)):
            if thr is None:
                continue
            m = conf >= thr
            for c in range(1, self.num_classes):
                g = truth == c
                n = int(g.sum())
                out[f"pl_{prefix}recall_{names[c]}"] = float((g & m & correct).sum() / n) if n else float("nan")
                out[f"pl_{prefix}against_{names[c]}"] = float((g & m & ~correct).sum() / n) if n else float("nan")
        out["pl_confident"] = float(mask.float().mean())
        out["pl_precision"] = float(correct[mask].float().mean()) if bool(mask.any()) else float("nan")
        fg = mask & (pseudo > 0)
        out["pl_fg_precision"] = float(correct[fg].float().mean()) if bool(fg.any()) else float("nan")
        self.diagnostics.update(out)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of config ``amp`` on ``device`` (None: full precision).

    ``auto``: fp16 on CUDA, none on the CPU (the default of every config); ``bf16`` on either device
    (CPU autocast supports it); ``fp16`` on CUDA only (GradScaler's loss scaling is CUDA's)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp in ("auto", "fp16"):
        if device.type != "cuda":
            raise ValueError(f"config: amp 'fp16' needs a CUDA device (this run is on {device}); use amp: bf16 or off")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    raise ValueError(f"config: amp must be auto, off, fp16 or bf16, got {amp!r}")
