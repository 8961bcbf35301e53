"""The generic training loop; the method (``supervised``, ``glcon``, ``mona``) is an object.

:func:`setup` builds a run (device, seeds, data, the method, the named stateful objects, logging)
and :func:`train_one_iteration` is one step: draw a labeled + unlabeled batch (sampler driven by a
checkpointed generator), ``method.step`` (forward + losses), backward, optimiser + schedule step,
``method.after_step`` (EMA teacher, bank / queue pushes). Every ``val_every`` iterations the student
is validated (volume Dice on the val split of the cache); the best mean foreground Dice is kept as
``best.pt``. ``last.pt`` is written every ``checkpoint_every`` iterations and at the end; ``--resume``
continues from it exactly (bit-identical on CPU): the checkpoint holds the state of every object in
one dictionary (``Run.objects``), which is also what a resume restores.

Outputs in ``out_dir``: ``config.yaml``, ``metrics.jsonl`` (train and val records), ``train_log.csv``,
``val_log.csv``, ``last.pt``, ``best.pt``, ``model.pt`` (inference weights), TensorBoard events
if ``tensorboard`` is installed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import faults
from ..atomicio import atomic_write_text, remove_stale_temps, write_error
from ..data.dataset import SliceCache
from ..data.labeled import LabeledSplit, labeled_split
from ..data.sampler import LabeledUnlabeledSampler
from ..errors import DataError, MissingFileError, TrainingStopped, UsageError
from ..eval.metrics import dice
from ..models import MonaNet, build_model
from . import distributed
from .checkpoint import (
    FORMAT,
    atomic_torch_save,
    export_inference,
    load_checkpoint,
    model_meta,
    restore,
    rng_state,
    set_rng_state,
    states_of,
    unet_state,
)
from .config import TrainConfig, config_from_dict
from .ema import teacher_mode
from .methods import METHOD_CLASSES, Batch, Method, RunContext
from .profile import region

log = logging.getLogger("mona.train")


def select_device(spec: str) -> torch.device:
    """``auto``: CUDA if available, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available")
    return dev


@dataclass
class TrainResult:
    out_dir: Path
    iteration: int
    losses: list[float] = field(default_factory=list)  # per iteration run in this call
    best_dice: float = float("nan")
    best_iteration: int = -1
    seconds: float = 0.0
    has_validation: bool = True  # False: no val patients, best.pt is the final model
    best_model: str = "student"  # the network kept as best.pt / model.pt: "student" or "teacher" (eval_model)


@torch.no_grad()
def validate(
    model: MonaNet, cache: SliceCache, case_indices: list[int], device: torch.device, batch_size: int = 16
) -> dict:
    """Volume Dice per foreground class on cached slices (prepared resolution). Returns
    ``{"mean_dice": float, "class_dice": [..per class 1..C-1..]}`` averaged over volumes."""
    was = model.training
    model.eval()
    per_class = []
    # under torchrun each rank segments its part of the volumes; the gathered list is in volume order
    env = distributed.current()
    for ci in distributed.shard(case_indices, env.rank, env.world_size):
        img, lab = cache.arrays(ci)
        pred = np.empty(lab.shape, np.int64)
        for z0 in range(0, img.shape[0], batch_size):
            x = torch.from_numpy(np.array(img[z0 : z0 + batch_size]))[:, None].to(device)
            pred[z0 : z0 + x.shape[0]] = model(x, with_heads=False).logits.argmax(1).cpu().numpy()
        per_class.append([dice(pred == c, np.asarray(lab) == c) for c in range(1, cache.num_classes)])
    model.train(was)
    arr = np.asarray(distributed.gather_lists(per_class))
    return {"mean_dice": float(arr.mean()), "class_dice": arr.mean(0).tolist()}


def validate_run(run: Run) -> dict:
    """Validate what ``eval_model`` names: the student, the EMA teacher, or both (``auto``, methods with a
    teacher). Returns the val record: ``mean_dice`` / ``class_dice`` of the network chosen this time
    (``model``: the better one under ``auto``), plus ``student_dice`` and ``teacher_dice`` when both ran."""
    m, cfg = run.method, run.cfg
    which = (
        ["student"]
        if m.teacher is None or cfg.eval_model == "student"
        else (["teacher"] if cfg.eval_model == "teacher" else ["student", "teacher"])
    )
    res = {}
    for name in which:
        net = m.student if name == "student" else m.teacher
        res[name] = validate(net, run.cache, run.val_cases, run.device)
        if name == "teacher":
            teacher_mode(m.teacher)  # validate() restored train mode; the teacher keeps dropout off
    # ties go to the student (the network that was trained)
    chosen = max(which, key=lambda n: (res[n]["mean_dice"], n == "student"))
    rec = {**res[chosen], "model": chosen}
    if len(which) > 1:
        rec.update({f"{n}_dice": res[n]["mean_dice"] for n in which})
    return rec


def _jsonl_iteration(line: str) -> int | None:
    try:
        rec = json.loads(line)
        return int(rec["iteration"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a kill or a full disk


def _truncate_logs(out: Path, iteration: int) -> None:
    """On resume: keep exactly the log records up to the checkpoint's iteration (the later ones are
    redone) and drop any line a kill or a full disk cut short; each log is rewritten atomically."""
    jl = out / "metrics.jsonl"
    if jl.exists():
        keep = [
            l
            for l in jl.read_text(errors="replace").splitlines()
            if (i := _jsonl_iteration(l)) is not None and i <= iteration
        ]
        atomic_write_text(jl, "".join(l + "\n" for l in keep), tag="log")
    for name in ("train_log.csv", "val_log.csv"):
        p = out / name
        if not p.exists():
            continue
        rows = list(csv.reader(io.StringIO(p.read_text(errors="replace"))))
        if not rows or not rows[0] or rows[0][0] != "iteration":
            p.unlink()  # not even a complete header: the next record starts the file again
            continue
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= iteration]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(p, buf.getvalue(), tag="log")


class _Logger:
    def __init__(self, out: Path):
        self.out = out
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed: metrics go to metrics.jsonl and CSV only")

    def write(self, kind: str, record: dict) -> None:
        # appended (a kill can cut the last line short: a resume drops it, see _truncate_logs); a
        # failing write (disk full) names the log file
        jl, path = self.out / "metrics.jsonl", self.out / f"{kind}_log.csv"
        flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in record.items()}
        try:
            faults.point("log.append", jl)
            with jl.open("a") as fh:
                fh.write(json.dumps({"kind": kind, **record}) + "\n")
        except OSError as err:
            raise write_error(err, jl) from err
        try:
            new = not path.exists()
            with path.open("a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(list(flat))
                w.writerow(list(flat.values()))
        except OSError as err:
            raise write_error(err, path) from err
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self.tb.add_scalar(f"{kind}/{k}", v, record["iteration"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _NoLogger:
    """The logger of ranks other than 0 under torchrun: only rank 0 writes."""

    def write(self, kind: str, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


# keys a resumed run may change: the length of the run and bookkeeping, never what it computes
# (init_from only initialises a fresh run; a resumed one loads every weight from its checkpoint)
RESUMABLE_KEYS = (
    "iterations",
    "val_every",
    "log_every",
    "checkpoint_every",
    "out_dir",
    "device",
    "threads",
    "max_nonfinite_steps",
    "init_from",
    "distributed.backend",
    "distributed.timeout_s",
)
# keys no --resume-override can change: the checkpoint's state would not fit the model
FIXED_KEYS = ("method", "model.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(saved: TrainConfig, new: TrainConfig) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every dotted key that differs, except :data:`RESUMABLE_KEYS`."""
    a, b = _flatten(saved.to_dict()), _flatten(new.to_dict())
    return [
        (k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)
    ]


def resume_config(ck: dict, cfg: TrainConfig, source: str | Path, override: tuple[str, ...] = ()) -> TrainConfig:
    """The config a resumed run trains with: ``cfg`` if it equals the checkpoint's except for
    :data:`RESUMABLE_KEYS` and the keys listed in ``override`` (``--resume-override``); otherwise a
    :class:`UsageError` listing every changed key with both values."""
    try:
        saved = config_from_dict(ck["config"])
    except (UsageError, KeyError, TypeError) as err:
        raise DataError(f"checkpoint {source}: its config does not fit this mona version ({err})") from err
    diff = config_diff(saved, cfg)
    keys = set(_flatten(cfg.to_dict()))
    unknown = [k for k in override if k not in keys]
    if unknown:
        raise UsageError(f"--resume-override: unknown config key(s) {unknown}")
    fixed = [k for k, _, _ in diff if k in override and k.startswith(FIXED_KEYS)]
    if fixed:
        raise UsageError(
            f"--resume-override {','.join(fixed)}: the method and model.* cannot change on resume (the "
            f"checkpoint's weights would not fit); start a new run with init_from={source}"
        )
    refused = [(k, a, b) for k, a, b in diff if k not in override]
    if refused:
        changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused)
        raise UsageError(
            f"--resume {source}: the config differs from the checkpoint's: {changes}; resume with the "
            f"checkpoint's values, or accept the change with --resume-override "
            f"{','.join(k for k, _, _ in refused)}"
        )
    for k, a, b in diff:
        log.warning("resume: %s changed from %r to %r (--resume-override)", k, a, b)
    return cfg


@dataclass
class Run:
    """Everything one training run holds. ``objects``: every stateful object by name, the single
    source of what a checkpoint saves and what a resume restores."""

    cfg: TrainConfig
    device: torch.device
    out: Path
    cache: SliceCache
    split: LabeledSplit
    method: Method
    sampler: LabeledUnlabeledSampler
    meta: dict
    val_cases: list[int]
    logger: "_Logger"
    objects: dict
    start: int = 0
    best: float = -1.0
    best_iteration: int = -1
    best_model: str = "student"
    t0: float = field(default_factory=time.time)
    nonfinite: "NonFinite" = field(default_factory=lambda: NonFinite())
    last_saved: int | None = None  # iteration of the newest last.pt (None: none yet)
    step_nonfinite: list[str] = field(default_factory=list)  # what was non-finite in the last step
    step_extra: dict = field(default_factory=dict)  # gradient norms / pseudo-label diagnostics of the last step
    step_ramp: float | None = None  # the ramp-up factor of the last step (methods with a teacher)
    dist: distributed.DistEnv = field(default_factory=distributed.DistEnv)

    def checkpoint(self, it: int) -> dict:
        """The checkpoint of iteration ``it``. Under torchrun a collective (every rank's RNG and generator
        states are gathered into ``ranks``): call it on every rank, write it on rank 0."""
        ck = {
            "format": FORMAT,
            "iteration": it,
            "method": self.cfg.method,
            "config": self.cfg.to_dict(),
            "meta": self.meta,
            "objects": states_of(self.objects),
            "rng": rng_state(),
            "best_dice": self.best,
            "best_iteration": self.best_iteration,
            "best_model": self.best_model,
            "labeled_patients": self.split.labeled_patients,
            "nonfinite": self.nonfinite.state_dict(),
        }
        if self.dist.enabled:
            ck.update(distributed.rank_states(self.objects, rng_state()))
        return ck


@dataclass
class NonFinite:
    """Bookkeeping of skipped steps: ``skipped`` in total, ``consecutive`` in the current streak (which
    began at iteration ``first``), ``what``: the non-finite terms / gradients of the streak."""

    skipped: int = 0
    consecutive: int = 0
    first: int = 0
    what: list[str] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "first": self.first, "what": list(self.what)}

    def load_state_dict(self, d: dict) -> None:
        self.skipped, self.consecutive, self.first, self.what = (
            d["skipped"],
            d["consecutive"],
            d["first"],
            list(d["what"]),
        )

    def update(self, it: int, bad: list[str] | None) -> None:
        if not bad:
            self.consecutive, self.what = 0, []
            return
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive == 1:
            self.first = it
        self.what += [b for b in bad if b not in self.what]


def _seed_everything(seed: int) -> None:
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def open_inputs(cfg: TrainConfig, *, check_init_from: bool = False) -> tuple[torch.device, SliceCache, LabeledSplit]:
    """Check and open what a run reads, writing nothing: the device, the cache, the labeled split (and
    that a semi-supervised method has unlabeled slices); ``check_init_from``: that ``init_from`` exists."""
    device = select_device(cfg.device)
    cache = SliceCache(cfg.data.cache)
    split = labeled_split(
        cache,
        labeled_patients=cfg.data.labeled_patients,
        labeled_ratio=cfg.data.labeled_ratio,
        labeled_list=cfg.data.labeled_list,
    )
    if cfg.method != "supervised" and not split.unlabeled:
        raise DataError(
            f"method {cfg.method!r} needs unlabeled slices, but every train slice of {cache.root} is "
            f"labeled ({split.description}); label fewer patients or use method: supervised"
        )
    if check_init_from and cfg.init_from and not Path(cfg.init_from).exists():
        raise MissingFileError(f"init_from: checkpoint {cfg.init_from} does not exist")
    return device, cache, split


def setup(cfg: TrainConfig, *, resume: str | Path | None = None, resume_override: tuple[str, ...] = ()) -> Run:
    """Build the run: config (checked against the checkpoint's on resume), device, data, method,
    objects, logs. ``resume_override``: config keys that may differ from the checkpoint's."""
    cfg.validate()
    ck = None
    if resume is not None:
        ck = load_checkpoint(resume)
        if ck["format"] != FORMAT:
            raise DataError(
                f"--resume {resume}: {ck['format']} is not a resumable training checkpoint "
                f"({FORMAT}); use the run's last.pt"
            )
        cfg = resume_config(ck, cfg, resume, tuple(resume_override))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist_env, device = distributed.init(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    if ck is not None:
        distributed.check_resume(ck, dist_env, resume)
    _, cache, split = open_inputs(cfg)
    val_cases = cache.cases_of_patients(cache.splits["val"]) if cache.splits["val"] else []

    _seed_everything(cfg.seed)
    meta = model_meta(
        cache.num_classes,
        cache.class_names,
        cache.size,
        cache.manifest["normalisation"],
        cfg.model.channels,
        cfg.model.dropout,
        cfg.model.embed_dim,
        cfg.model.rep_stride,
        cache.manifest.get("label_values"),
        cfg.model.head_norm,
    )
    method = METHOD_CLASSES[cfg.method](
        RunContext(cfg, device, cache, split, meta, resuming=ck is not None, dist=dist_env)
    )
    if dist_env.rank > 0:
        _seed_everything(distributed.rank_seed(cfg.seed, 0, dist_env.rank))  # dropout differs per rank
    out = Path(cfg.out_dir)
    main = dist_env.is_main  # under torchrun only rank 0 writes
    if main:
        out.mkdir(parents=True, exist_ok=True)  # only now: every input (cache, split, init_from) has been read
        for tmp in remove_stale_temps(out):  # we hold out's lock: these are an interrupted run's
            log.info("removed %s (a file an interrupted run was writing)", tmp)
    # every rank draws the same global batch and keeps its part (mona.train.distributed)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
    labeled_bs = cfg.labeled_bs
    sampler = LabeledUnlabeledSampler(
        list(range(len(split.labeled))),
        list(range(len(split.unlabeled))),
        cfg.data.batch_size,
        labeled_bs,
        sample_gen,
        rank=dist_env.rank,
        world_size=dist_env.world_size,
    )
    objects = {**method.stateful(), "sampler": sampler, "generator.sample": sample_gen}

    run = Run(
        cfg,
        device,
        out,
        cache,
        split,
        method,
        sampler,
        meta,
        val_cases,
        None,
        objects,  # type: ignore[arg-type]
        dist=dist_env,
    )
    if ck is not None:
        restore(objects, ck["objects"], resume)
        set_rng_state(ck["rng"])
        if dist_env.enabled:
            set_rng_state(distributed.restore_rank_state(objects, ck, dist_env))
        run.start, run.best, run.best_iteration = ck["iteration"], ck["best_dice"], ck["best_iteration"]
        run.best_model = ck.get("best_model", "student")  # absent in checkpoints of mona <= 0.3
        run.last_saved = run.start
        if "nonfinite" in ck:  # absent in checkpoints of mona <= 0.2
            run.nonfinite.load_state_dict(ck["nonfinite"])
        if main:
            _truncate_logs(out, run.start)
        log.info("resumed %s from %s at iteration %d", cfg.method, resume, run.start)
    elif main:
        for name in ("metrics.jsonl", "train_log.csv", "val_log.csv"):
            (out / name).unlink(missing_ok=True)
    if main:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False), tag="config")
    run.logger = _Logger(out) if main else _NoLogger()  # type: ignore[assignment]
    log.info(
        "%s: %s; batch %d (%d labeled + %d unlabeled)%s; device %s; impl %s; amp %s",
        cfg.method,
        split.description,
        cfg.data.batch_size,
        labeled_bs,
        cfg.data.batch_size - labeled_bs if cfg.method != "supervised" else 0,
        f" per process, {dist_env.world_size} processes" if dist_env.enabled else "",
        device,
        cfg.impl,
        method.amp_dtype or "off",
    )
    return run


def next_batch(run: Run) -> Batch:
    lab_ids, unl_ids = run.sampler.next_batch()
    x_l, y_l = run.cache.load_batch([run.split.labeled[i] for i in lab_ids])
    y_u = None
    if unl_ids:
        x_u, y_u = run.cache.load_batch([run.split.unlabeled[i] for i in unl_ids])
    else:
        x_u = x_l.new_empty((0, *x_l.shape[1:]))
    dev = run.device
    # the unlabeled half's labels travel for the pseudo-label quality log only (Batch.y_u_diagnostic)
    y_u = y_u.to(dev, non_blocking=True) if (y_u is not None and run.cfg.log_pseudo_quality) else None
    return Batch(x_l.to(dev, non_blocking=True), y_l.to(dev, non_blocking=True), x_u.to(dev, non_blocking=True), y_u)


def encoder_parameters(m: Method) -> list[torch.nn.Parameter]:
    """The student's shared encoder (the UNet's input block and down path): where every term meets."""
    unet = m.student.unet
    return [p for mod in (unet.inc, unet.downs) for p in mod.parameters() if p.requires_grad]


def term_gradient_norms(m: Method) -> dict[str, float]:
    """``gn_<term>``: the L2 norm of each kept weighted term's gradient on the shared encoder (one
    extra backward per term through the retained graph, on logged steps only)."""
    params = encoder_parameters(m)
    out = {}
    for name, term in m.kept_terms.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        sq = [g.float().pow(2).sum() for g in grads if g is not None]
        out[f"gn_{name}"] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    return out


def log_columns(m: Method, cfg: TrainConfig, class_names: list[str]) -> list[str]:
    """The extra train-log columns of a method: per-term gradient norms and pseudo-label diagnostics
    (fixed per run, so that the CSV columns never shift; an absent value is written empty)."""
    cols = []
    if cfg.log_grad_norms:
        cols += [f"gn_{t}" for t in m.terms() if t not in ("ce", "dice_loss")]
    if cfg.log_pseudo_quality and m.pseudo_labels:
        cols += [f"pl_dice_{c}" for c in class_names[1:]] + ["pl_confident", "pl_precision", "pl_fg_precision"]
        cols += [f"pl_{k}_{c}" for k in ("recall", "against") for c in class_names[1:]]
        if m.name == "mona" and cfg.mona.contrast_weight > 0:  # at the contrastive validity threshold
            cols += [f"pl_{k}_{c}" for k in ("wrecall", "wagainst") for c in class_names[1:]]
    if m.name == "mona" and cfg.mona.class_thresholds == "adaptive":
        cols += [f"thr_{c}" for c in class_names[1:]]  # L_unsup's threshold per class
    if m.name == "mona" and cfg.mona.distribution_alignment:
        cols += [f"da_ratio_{c}" for c in class_names]  # the alignment's labeled / predicted share per class
    return cols


def _inject_nonfinite(m: Method, loss: torch.Tensor, parts: dict[str, float]) -> torch.Tensor:
    """Fault injection (``MONA_FAULT=loss.TERM@N:nan``): the term and the loss become non-finite, and so
    do the gradients (the loss is multiplied, not shifted)."""
    for term in m.terms():
        bad = faults.poison(f"loss.{term}")
        if bad is not None:
            parts[term] = bad
            loss = loss * bad
    return loss


def _nonfinite_grads(m: Method) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or inf (empty: all finite). One fused norm
    over every gradient; the per-parameter search runs only when that is not finite."""
    named = [(n, p.grad) for n, p in m.student.named_parameters() if p.grad is not None]
    if not named:
        return []
    total = torch.stack(torch._foreach_norm([g for _, g in named])).sum()
    if bool(torch.isfinite(total)):
        return []
    bad = [n for n, g in named if not bool(torch.isfinite(g).all())]
    return [f"gradient of {', '.join(bad[:3])}{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''}"]


def train_one_iteration(run: Run) -> tuple[float, dict[str, float], float]:
    """One optimiser step. Returns (loss, parts, lr used); ``run.step_nonfinite`` lists what was
    non-finite in it (empty: the step was applied).

    A non-finite loss (any term, or the total) or gradient skips the step: no optimiser step, no EMA
    update, no bank / queue push; the schedule, the data sampler and the generators advance as in any
    step (the run stays a function of the iteration). Under CUDA AMP the GradScaler handles gradient
    overflow itself (it skips the optimiser step and lowers its scale), so only the loss is checked."""
    m = run.method
    # the forward pass updates BatchNorm running statistics; a skipped step must not keep them (a
    # non-finite activation would poison them): keep a copy (per-channel vectors, a few KiB)
    modules = [m.student] + ([m.teacher] if m.teacher is not None else [])
    buffers = [[b.detach().clone() for b in mod.buffers()] for mod in modules]
    cfg = run.cfg
    logged = (m.iteration + 1) % cfg.log_every == 0 or m.iteration + 1 == cfg.iterations
    # per-term gradient norms and pseudo-label diagnostics on the logged steps (not under torchrun:
    # an extra autograd.grad through the DDP-wrapped graph is not what its reducer expects)
    m.keep_terms = logged and not run.dist.enabled and (cfg.log_grad_norms or cfg.log_pseudo_quality)
    m.kept_terms, m.diagnostics = {}, {}
    run.step_ramp = m.ramp() if m.uses_teacher else None  # the ramp-up factor this step's terms carry
    with region("data"):
        batch = next_batch(run)
    with region("method step"):
        loss, parts = m.step(batch)
    if m.keep_terms:
        extra = dict(m.diagnostics)
        if cfg.log_grad_norms and m.kept_terms and loss.requires_grad:
            with region("term gradient norms (logged steps)"):
                extra.update(term_gradient_norms(m))
        run.step_extra = extra
        m.kept_terms = {}
    else:
        run.step_extra = {}
    if faults.active():
        loss = _inject_nonfinite(m, loss, parts)
    lv = float(loss.detach())
    bad = [k for k, v in parts.items() if not math.isfinite(v)]
    if not bad and not math.isfinite(lv):
        bad = ["loss (total)"]
    if run.dist.enabled and distributed.any_rank(bool(bad)) and not bad:
        bad = ["loss on another process"]  # every rank skips the same steps
    m.optimizer.zero_grad(set_to_none=True)
    if not bad or run.dist.enabled:
        # under DDP every forward needs its backward (its gradient reducer waits for it), a skipped
        # step's too: the gradients (all-reduced, so the same on every rank) are then discarded
        with region("backward"):
            m.scaler.scale(loss).backward()
        if faults.active() and (v := faults.poison("grad")) is not None:
            next(p for p in m.student.parameters() if p.grad is not None).grad.view(-1)[0] = v
        if not bad and not m.scaler.is_enabled():
            with region("gradient check"):
                bad = _nonfinite_grads(m)
    lr = m.optimizer.param_groups[0]["lr"]
    if bad:
        m.optimizer.zero_grad(set_to_none=True)
        m.discard_step()
        with torch.no_grad():
            for mod, saved in zip(modules, buffers):
                for b, old in zip(mod.buffers(), saved):
                    b.copy_(old)
    else:
        with region("optimizer step"):
            m.scaler.step(m.optimizer)
            m.scaler.update()
        with region("after step (EMA, bank and queue pushes)"):
            m.after_step()
    m.scheduler.step()
    run.step_nonfinite = bad
    if run.dist.enabled:  # the figures of the global batch: means over the ranks
        reduced = distributed.mean_over_ranks({"loss": lv, **{k: parts.get(k) for k in m.terms()}})
        lv = reduced.pop("loss")
        parts = {k: v for k, v in reduced.items() if v is not None}
    return lv, parts, lr


def _save(run: Run, ck: dict, name: str) -> None:
    if run.dist.is_main:
        atomic_torch_save(ck, run.out / name)


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    resume_override: tuple[str, ...] = (),
) -> TrainResult:
    """Run (or resume) training with ``cfg.method``. ``stop_after``: stop once this iteration is reached,
    writing ``last.pt`` as an interruption would (for tests and time-boxed runs). The run holds the lock
    of ``out_dir`` (a second run into it fails at once)."""
    with distributed.locked_on_rank0(cfg.out_dir, "mona train"):
        return _train(cfg, resume=resume, progress=progress, stop_after=stop_after, resume_override=resume_override)


def _stop_message(run: Run, it: int) -> str:
    nf, cfg = run.nonfinite, run.cfg
    last = (
        f"{run.out / 'last.pt'} (iteration {run.last_saved}) is intact"
        if run.last_saved is not None
        else "no checkpoint was written yet"
    )
    return (
        f"training stopped at iteration {it}: {nf.consecutive} consecutive steps (iterations {nf.first}-{it}) had "
        f"a non-finite {'; '.join(nf.what)} (max_nonfinite_steps={cfg.max_nonfinite_steps}); the last good "
        f"checkpoint {last}; lower optim.lr or check the data, then resume (--resume-override optim.lr)"
    )


def _train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None,
    progress: bool,
    stop_after: int | None,
    resume_override: tuple[str, ...],
) -> TrainResult:
    from tqdm import tqdm

    run = setup(cfg, resume=resume, resume_override=resume_override)
    cfg = run.cfg
    result = TrainResult(run.out, run.start)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    run.method.student.train()
    main = run.dist.is_main
    bar = tqdm(
        total=cfg.iterations, initial=run.start, desc=f"train {cfg.method}", disable=not (progress and main), unit="it"
    )
    it = run.start
    extra_cols = log_columns(run.method, cfg, run.cache.class_names)
    try:
        while it < end:
            lv, parts, lr = train_one_iteration(run)
            bad = run.step_nonfinite
            it += 1
            faults.point("train.after_step")
            run.nonfinite.update(it, bad)
            result.losses.append(lv)
            bar.update(1)
            stop = run.nonfinite.consecutive >= cfg.max_nonfinite_steps
            if bad and main:
                log.warning(
                    "iteration %d: non-finite %s: step skipped (%d in a row, %d in this run)",
                    it,
                    ", ".join(bad),
                    run.nonfinite.consecutive,
                    run.nonfinite.skipped,
                )
            if it % cfg.log_every == 0 or it == end or stop:
                # a fixed set of columns: a term not computed this step (e.g. L_nn before its queue
                # holds k entries) is logged as empty / null, never shifting the CSV columns
                terms = {k: parts.get(k) for k in run.method.terms()}
                extra = {k: run.step_extra.get(k) for k in extra_cols}
                run.logger.write(
                    "train",
                    {
                        "iteration": it,
                        "loss": lv,
                        **terms,
                        **extra,
                        "ramp": run.step_ramp,
                        "lr": lr,
                        "skipped_steps": run.nonfinite.skipped,
                        "elapsed_s": round(time.time() - run.t0, 2),
                    },
                )
                bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:.2e}")
            if stop:
                raise TrainingStopped(_stop_message(run, it))
            if run.val_cases and (it % cfg.val_every == 0 or it == cfg.iterations):
                v = validate_run(run)
                run.logger.write("val", {"iteration": it, **v})
                if v["mean_dice"] > run.best:  # the same decision on every rank (gathered Dice)
                    run.best, run.best_iteration, run.best_model = v["mean_dice"], it, v["model"]
                    _save(run, run.checkpoint(it), "best.pt")
                bar.set_postfix(loss=f"{lv:.4f}", val_dice=f"{v['mean_dice']:.3f}", best=f"{run.best:.3f}")
            if it % cfg.checkpoint_every == 0 or it == end:
                _save(run, run.checkpoint(it), "last.pt")
                run.last_saved = it
    finally:
        bar.close()
        run.logger.close()
    if it >= cfg.iterations:
        # (best_iteration < 0: no best.pt yet; a test every rank answers alike, unlike a file's existence)
        if run.val_cases and run.best_iteration < 0:
            # resumed with `iterations` at or below the checkpoint's before any validation: validate now
            v = validate_run(run)
            run.logger.write("val", {"iteration": it, **v})
            run.best, run.best_iteration, run.best_model = v["mean_dice"], it, v["model"]
            _save(run, run.checkpoint(it), "best.pt")
        if not run.val_cases:
            if main:
                log.warning("no validation patients in %s: best.pt is the final model", run.cache.root)
            run.best_iteration = it
            # no validation to choose by: the teacher if eval_model asks for it, else the student
            run.best_model = "teacher" if cfg.eval_model == "teacher" else "student"
            _save(run, run.checkpoint(it), "best.pt")
        if main:
            best_model = build_model(run.meta)
            best_model.unet.load_state_dict(unet_state(load_checkpoint(run.out / "best.pt"), run.best_model))
            export_inference(best_model, run.meta, run.out / "model.pt")
            log.info(
                "model.pt: the %s of iteration %d (val mean Dice %.4f)", run.best_model, run.best_iteration, run.best
            )
    distributed.barrier()  # the other ranks go on (e.g. to stage 2, reading last.pt) once rank 0 has written
    result.iteration, result.best_dice, result.best_iteration = it, run.best, run.best_iteration
    result.has_validation = bool(run.val_cases)
    result.best_model = run.best_model
    result.seconds = time.time() - run.t0
    return result
